"""Eager hyperparameter checks shared by valley's optimizers; each raises a ValueError naming the value."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def check_nonnegative(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number ``>= 0``."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0.0):
        raise ValueError(f"Invalid {name}: {value} (must be a finite number >= 0)")


def check_positive(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number ``> 0``."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0.0):
        raise ValueError(f"Invalid {name}: {value} (must be a finite number > 0)")


def check_unit_interval(name: str, value: float, *, closed: bool = False) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1`` (``<= 1`` when ``closed``)."""
    upper_ok = value <= 1.0 if closed else value < 1.0
    if not (isinstance(value, (int, float)) and 0.0 <= value and upper_ok):
        bound = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"Invalid {name}: {value} (must lie in {bound})")


def check_betas(betas: tuple[float, float]) -> None:
    """Raise ``ValueError`` unless both entries of ``betas`` lie in ``[0, 1)``."""
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas} (need two values)")
    for index, beta in enumerate(betas):
        if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
            raise ValueError(f"Invalid betas parameter at index {index}: {beta} (must lie in [0, 1))")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"Invalid {name}: {value!r} (must be one of {choices})")


def check_bool(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (must be True or False)")


def as_params(params_or_model: Any) -> Any:
    """Return ``model.parameters()`` for a module, else the iterable of tensors or param groups unchanged."""
    if isinstance(params_or_model, nn.Module):
        return params_or_model.parameters()
    return params_or_model


def evaluate(closure: Callable[[], Any] | None) -> Any:
    """Call ``closure`` with gradients enabled (optimizer steps run under ``no_grad``); ``None`` gives ``None``."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
