"""The state bookkeeping every Adam-type optimizer here shares: gather a group's tensors and count the step."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


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
        if p.grad.is_sparse:
            raise RuntimeError(f"{type(optimizer).__name__} does not support sparse gradients")
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


def keep_text_state(optimizer: Optimizer, state_dict: dict[str, Any]) -> None:
    """Before ``load_state_dict``: keep the saved state's strings (AdamP's and SGDP's ``projection``).

    torch's loader casts every iterable state value element by element and rebuilds it with its type, which turns
    a string into the text of a generator object (torch 2.13); :func:`restore_text_state` puts them back.
    """
    saved = state_dict["state"]
    optimizer.__dict__["_saved_text"] = [
        [{k: v for k, v in saved.get(index, {}).items() if isinstance(v, str)} for index in group["params"]]
        for group in state_dict["param_groups"]
    ]


def restore_text_state(optimizer: Optimizer) -> None:
    """After ``load_state_dict``: the strings :func:`keep_text_state` kept, each in its parameter's state."""
    for group, texts in zip(optimizer.param_groups, optimizer.__dict__.pop("_saved_text"), strict=True):
        for param, text in zip(group["params"], texts, strict=True):
            if text:
                optimizer.state[param].update(text)
