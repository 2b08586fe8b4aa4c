"""The state bookkeeping every Adam-type optimizer here shares: gather a group's tensors and count the step."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


def refuse_sparse(optimizer: Optimizer, tensors: Iterable[Tensor]) -> None:
    """Refuse sparse ``tensors`` (gradients, or what is made of them) with a ``RuntimeError`` naming ``optimizer``."""
    if any(tensor.is_sparse for tensor in tensors):
        raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")


def adam_group(
    optimizer: Optimizer, group: dict[str, Any], second: str = "exp_avg_sq"
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[dict[str, Any]]]:
    r"""The parameters of ``group`` that have a gradient, with their first- and second-moment buffers.

    On a parameter's first step its state gets ``step = 0`` and zero buffers ``exp_avg`` (:math:`m`) and ``second``
    (:math:`v`, or AdaBelief's :math:`s`); ``step`` is then incremented, so it holds the :math:`t` of the step
    being taken.

    Returns:
        ``(params, grads, exp_avgs, seconds, states)`` in the group's parameter order.

    Raises:
        RuntimeError: a gradient is sparse (no optimizer here supports sparse gradients).
    """
    params, grads, exp_avgs, seconds, states = [], [], [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        refuse_sparse(optimizer, [p.grad])
        state = optimizer.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state[second] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        params.append(p)
        grads.append(p.grad)
        exp_avgs.append(state["exp_avg"])
        seconds.append(state[second])
        states.append(state)
    return params, grads, exp_avgs, seconds, states


class Kept:
    """A saved state value that torch's loader passes through as it is (neither a tensor nor iterable)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def keep_as_saved(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Load pre-hook: the saved state values that ``optimizer.keeps`` names, wrapped in :class:`Kept`.

    Returns a new state dict; the given one is left as it is. A state dict not shaped as torch's (``state`` mapping
    each parameter's index to a dict, and ``param_groups``) is refused with a ``ValueError`` naming what is wrong.
    """
    saved = state_dict.get("state") if isinstance(state_dict, Mapping) else None
    if not isinstance(saved, Mapping) or "param_groups" not in state_dict:
        raise ValueError(
            f"{type(optimizer).__name__}.load_state_dict: expected a dict with 'state' (a dict) and 'param_groups', "
            f"got {type(state_dict).__name__} with {type(saved).__name__} state"
        )
    wrong = next(((index, values) for index, values in saved.items() if not isinstance(values, Mapping)), None)
    if wrong is not None:
        raise ValueError(
            f"{type(optimizer).__name__}.load_state_dict: the state of parameter {wrong[0]!r} must be a dict, "
            f"got {type(wrong[1]).__name__}"
        )
    state = {
        index: {name: Kept(value) if optimizer.keeps(name, value) else value for name, value in values.items()}
        for index, values in saved.items()
    }
    return {**state_dict, "state": state}


def restore_kept(optimizer: Any) -> None:
    """Load post-hook: each :class:`Kept` value as ``optimizer.restored`` gives it back, in its parameter's state."""
    for param, values in optimizer.state.items():
        for name, value in values.items():
            if isinstance(value, Kept):
                values[name] = optimizer.restored(param, name, value.value)
