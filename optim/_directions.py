"""The update direction an optimizer's stored state implies, for XGrad's prediction and ``optim.inspect``.

For a parameter p of a group with learning rate γ, :func:`direction` returns (Δ, η): the optimizer's last step
moved p by −γΔ (weight decay and AdamP/SGDP projections aside), which is also the Δ_{t+1} weight prediction
uses, and η, the effective per-coordinate step size (the factor multiplying the bias-corrected momentum or the
gradient), or ``None`` where the state does not determine them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop
from torch.optim.optimizer import _default_to_fused_or_foreach

from optim.adabelief import AdaBelief
from optim.adam2k import Adam2k
from optim.adam3 import AdaM3
from optim.adamp import AdamP
from optim.expectigrad import Expectigrad
from optim.radam import RAdam
from optim.sgdp import SGDP

Direction = tuple[Tensor, Tensor]


def _step(state: dict[str, Any]) -> float:
    return float(state["step"])


def _full(p: Tensor, value: float) -> Tensor:
    return torch.full_like(p, value)


def _sgd(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    buf = state.get("momentum_buffer")
    if buf is None:
        return None if grad is None else (grad.clone(), _full(p, group["lr"]))
    if group.get("nesterov", False):
        if grad is None:
            return None
        return grad.add(buf, alpha=group["momentum"]), _full(p, group["lr"])
    return buf.clone(), _full(p, group["lr"])


def _nesterov_overwrites_grad(group: dict[str, Any], p: Tensor) -> bool:
    """Whether torch's SGD leaves g + μb in ``.grad``.

    Its multi-tensor path with Nesterov momentum, no weight decay and no ``maximize`` adds μb to the gradients in
    place (torch 2.13).
    """
    if not group.get("nesterov") or group.get("fused") or group.get("maximize") or group.get("weight_decay", 0):
        return False
    foreach = group.get("foreach")
    if foreach is None:  # torch's own default: multi-tensor for tensors on CUDA and similar devices
        foreach = _default_to_fused_or_foreach([p], differentiable=False, use_fused=False)[1]
    return bool(foreach)


def _adam(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    beta1, beta2 = group["betas"]
    step = _step(state)
    v = state["max_exp_avg_sq"] if group.get("amsgrad", False) else state["exp_avg_sq"]
    denom = v.sqrt().div_(math.sqrt(1 - beta2**step)).add_(group["eps"])
    rate = torch.reciprocal(denom).mul_(group["lr"])
    return state["exp_avg"] / (1 - beta1**step) / denom, rate


def _rmsprop(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    v = state["square_avg"]
    if group.get("centered", False):
        v = v.addcmul(state["grad_avg"], state["grad_avg"], value=-1)
    denom = v.sqrt().add_(group["eps"])
    rate = torch.reciprocal(denom).mul_(group["lr"])
    if group.get("momentum", 0) > 0:
        return state["momentum_buffer"].clone(), rate
    if grad is None:
        return None
    return grad / denom, rate


def _adagrad(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    if grad is None:
        return None
    clr = group["lr"] / (1 + (_step(state) - 1) * group["lr_decay"])
    denom = state["sum"].sqrt().add_(group["eps"])
    return grad / denom * (clr / group["lr"]), torch.reciprocal(denom).mul_(clr)


def _radam(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    beta1, beta2 = group["betas"]
    step = _step(state)
    m_hat = state["exp_avg"] / (1 - beta1**step)
    if state["rectified"]:
        rate = torch.reciprocal(state["exp_avg_sq"].sqrt().add_(group["eps"]))
        rate.mul_(group["lr"] * state["r_t"] * math.sqrt(1 - beta2**step))
        return m_hat.mul_(rate).div_(group["lr"]), rate
    if group["degenerate"] == "skip":
        return torch.zeros_like(p), torch.zeros_like(p)
    return m_hat, _full(p, group["lr"])


def _adabelief(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    beta1, beta2 = group["betas"]
    step = _step(state)
    m_hat = state["exp_avg"] / (1 - beta1**step)
    s = state["exp_avg_var"]
    if group["rectify"]:
        if not state["rectified"]:
            return m_hat, _full(p, group["lr"])
        rate = torch.reciprocal(s.sqrt().add_(group["eps"]))
        rate.mul_(group["lr"] * state["r_t"] * math.sqrt(1 - beta2**step))
    else:
        rate = torch.reciprocal(s.sqrt().div_(math.sqrt(1 - beta2**step)).add_(group["eps"])).mul_(group["lr"])
    return m_hat.mul_(rate).div_(group["lr"]), rate


def _adam3(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    beta1, beta2 = group["betas"]
    step = _step(state)
    denom = state["exp_avg_sq"].sqrt().div_(math.sqrt(1 - beta2**step))
    return state["exp_avg"] / (1 - beta1**step) / denom, torch.reciprocal(denom).mul_(group["lr"])


def _adam2k(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    if state["frozen"]:
        return torch.zeros_like(p), torch.zeros_like(p)
    beta1, beta2 = group["betas"]
    step = _step(state)
    rate = torch.reciprocal(state["exp_avg_sq"].sqrt().add_(group["eps"]))
    rate.mul_(group["lr"] * math.sqrt(1 - beta2**step))
    return state["exp_avg"] / (1 - beta1**step) * rate / group["lr"], rate


def _expectigrad(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    count = state["counter"] if "counter" in state else _step(state)  # the counter is never 0 (see Expectigrad)
    rate = torch.reciprocal((state["sum_sq"] / count).sqrt_().add_(group["eps"])).mul_(group["lr"])
    if "exp_avg" in state:
        return state["exp_avg"] / (1 - group["beta"] ** _step(state)), rate
    if grad is None:
        return None
    return grad * rate / group["lr"], rate


def _adamp(group: dict[str, Any], p: Tensor, state: dict[str, Any], grad: Tensor | None) -> Direction | None:
    beta1, beta2 = group["betas"]
    step = _step(state)
    denom = state["exp_avg_sq"].sqrt().div_(math.sqrt(1 - beta2**step)).add_(group["eps"])
    if group["nesterov"]:
        if grad is None:
            return None
        m = (state["exp_avg"] * beta1).add_(grad, alpha=1 - beta1)
    else:
        m = state["exp_avg"]
    return m / (1 - beta1**step) / denom, torch.reciprocal(denom).mul_(group["lr"])


_RULES = {
    SGD: _sgd,
    SGDP: _sgd,
    Adam: _adam,
    AdamW: _adam,
    RMSprop: _rmsprop,
    Adagrad: _adagrad,
    RAdam: _radam,
    AdaBelief: _adabelief,
    AdaM3: _adam3,
    Adam2k: _adam2k,
    Expectigrad: _expectigrad,
    AdamP: _adamp,
}


def has_rule(optimizer: Optimizer) -> bool:
    """Whether :func:`direction` knows ``optimizer``'s class."""
    return type(optimizer) in _RULES


@torch.no_grad()
def direction(
    optimizer: Optimizer, group: dict[str, Any], p: Tensor, grad: Tensor | None = None, *, read_after_step: bool = False
) -> Direction | None:
    """Return (Δ, η) for ``p`` from ``optimizer.state[p]`` (``None`` before the first step or when unknown).

    ``grad`` is the last gradient, needed only where the state does not hold the direction (SGD without
    momentum, RMSprop without momentum, Adagrad, Nesterov variants, Expectigrad with β = 0). With
    ``read_after_step`` it is ``p.grad`` as the step left it: torch's multi-tensor Nesterov SGD adds μb to it in
    place, so there it already holds Δ = g + μb.
    """
    if read_after_step and grad is not None and type(optimizer) is SGD and _nesterov_overwrites_grad(group, p):
        return grad.clone(), _full(p, group["lr"])
    rule = _RULES.get(type(optimizer))
    state = optimizer.state.get(p, {})
    if rule is None or (not state and rule is not _sgd):  # torch's SGD keeps no state without momentum
        return None
    return rule(group, p, state, grad)
