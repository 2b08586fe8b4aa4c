"""RAdam (Liu et al. 2020) with the rectification threshold and the degenerate branch as switches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from optim._checks import (
    Check,
    Checked,
    check_at_least,
    check_betas,
    check_bool,
    check_choice,
    check_nonnegative,
    check_optional_bool,
    check_positive,
    evaluate,
)
from optim._foreach import buckets, fused_adam, pick
from optim._state import adam_group

__all__ = ["RAdam", "radam", "radam_foreach", "rectification"]


def rectification(step: int, beta2: float) -> tuple[float, float]:
    r"""Return :math:`(\rho_t, r_t)` of RAdam at step ``step``; :math:`r_t` is NaN where :math:`\rho_t \le 4`.

    Example:
        >>> rho_t, r_t = rectification(5, 0.999)
        >>> round(rho_t, 3), math.isnan(rectification(1, 0.999)[1])
        (4.996, True)
    """
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    bias_correction2 = 1.0 - beta2**step
    rho_t = rho_inf - 2.0 * step * beta2**step / bias_correction2
    if rho_t <= 4.0:
        return rho_t, math.nan
    r_t = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
    return rho_t, r_t


def radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    threshold: float,
    degenerate: str,
) -> list[bool]:
    """Apply one RAdam update in place (``steps`` already incremented); return per tensor whether it was rectified.

    With the defaults this is ``torch.optim.RAdam``'s update; the scalar factors are merged into one
    ``addcdiv_`` (torch multiplies four tensors), so the two agree to rounding (~1e-16), not bitwise.
    """
    rectified = []
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        rho_t, r_t = rectification(step, beta2)
        is_rectified = rho_t > threshold
        rectified.append(is_rectified)
        skip = degenerate == "skip" and not is_rectified
        if weight_decay != 0:
            if decoupled_weight_decay:
                if not skip:
                    param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if skip:
            continue
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        if is_rectified:
            step_size = lr * r_t * bias_correction2**0.5 / bias_correction1
            param.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps), value=-step_size)
        else:
            param.add_(exp_avg, alpha=-lr / bias_correction1)
    return rectified


def radam_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    threshold: float,
    degenerate: str,
) -> list[bool]:
    """:func:`radam` on lists of tensors: one bucket per device, dtype and step count (which fixes the branch).

    The rectified step is Adam's with γ r_t for γ and ε/√(1-β₂ᵗ) for ε, so it runs as torch's fused Adam kernel
    (:func:`optim._foreach.fused_adam`, one pass over memory) where that kernel runs.
    """
    for step, (params_, grads_, exp_avgs_, exp_avg_sqs_) in buckets([params, grads, exp_avgs, exp_avg_sqs], steps):
        rho_t, r_t = rectification(step, beta2)
        is_rectified = rho_t > threshold
        skip = degenerate == "skip" and not is_rectified
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        if weight_decay != 0 and decoupled_weight_decay and not skip:
            torch._foreach_mul_(params_, 1 - lr * weight_decay)
        coupled = 0.0 if decoupled_weight_decay else weight_decay
        if is_rectified and fused_adam(
            params_,
            grads_,
            exp_avgs_,
            exp_avg_sqs_,
            step,
            lr=lr * r_t,
            beta1=beta1,
            beta2=beta2,
            eps=eps / bias_correction2**0.5,
            weight_decay=coupled,
        ):
            continue
        if coupled != 0:
            grads_ = torch._foreach_add(grads_, params_, alpha=coupled)
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs_, beta2)
        torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_, value=1 - beta2)
        if skip:
            continue
        if is_rectified:
            step_size = lr * r_t * bias_correction2**0.5 / bias_correction1
            denoms = torch._foreach_sqrt(exp_avg_sqs_)
            torch._foreach_add_(denoms, eps)
            torch._foreach_addcdiv_(params_, exp_avgs_, denoms, value=-step_size)
        else:
            torch._foreach_add_(params_, exp_avgs_, alpha=-lr / bias_correction1)
    return [rectification(step, beta2)[0] > threshold for step in steps]


class RAdam(Checked):
    r"""Rectified Adam; with the defaults it computes exactly what ``torch.optim.RAdam`` computes.

    γ, β₁, β₂, ε, λ are ``lr``, ``betas``, ``eps``, ``weight_decay``; τ is ``threshold``; t counts steps from 1.

    .. math::
        m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\\
        ρ_∞ = \frac{2}{1-β_2} - 1,\quad ρ_t = ρ_∞ - \frac{2tβ_2^t}{1-β_2^t},\quad
        r_t = \sqrt{\frac{(ρ_t-4)(ρ_t-2)ρ_∞}{(ρ_∞-4)(ρ_∞-2)ρ_t}},\\
        θ_t = θ_{t-1} - γ\, r_t \frac{\sqrt{1-β_2^t}}{1-β_1^t}\,\frac{m_t}{\sqrt{v_t}+ε}
        \ \text{if } ρ_t > τ,\ \text{else}\ θ_t = θ_{t-1} - γ\frac{m_t}{1-β_1^t}\ (\text{'sgd'})
        \ \text{or}\ θ_t = θ_{t-1}\ (\text{'skip'}).

    ε is added to the raw :math:`\sqrt{v_t}` as in torch and the authors' code. Weight decay is coupled
    (:math:`g ← g + λθ`) or, with ``decoupled_weight_decay``, :math:`θ ← θ(1-γλ)`; ``'skip'`` also skips it.

    Args:
        params: Iterable of parameters or param groups.
        lr: Learning rate γ. Default 1e-3 (torch).
        betas: (β₁, β₂). Default (0.9, 0.999) (Liu et al. 2020).
        eps: ε. Default 1e-8.
        weight_decay: λ. Default 0.
        decoupled_weight_decay: Decoupled (AdamW-style) decay. Default False (torch).
        threshold: τ, rectify when ρ_t > τ. Default 5.0 (torch); 4.0 is the paper's Algorithm 2. Must be ≥ 4,
            where r_t is defined. The authors' code uses ρ_t ≥ 5, which differs from > 5 only at ρ_t = 5 exactly.
        degenerate: ``'sgd'`` (torch, paper: momentum SGD while not rectified) or ``'skip'`` (authors' current
            code: no update at all).
        foreach: the multi-tensor path (:func:`radam_foreach`); ``None`` (default) takes it when every parameter
            is on a device with multi-tensor kernels (CUDA), as torch does.

    State per parameter: ``step`` (int), ``exp_avg`` m, ``exp_avg_sq`` v, and of the last step ``rho_t``,
    ``r_t`` (NaN when not rectified) and ``rectified`` (bool).

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = RAdam([p], lr=0.1)
        >>> p.sum().backward(); opt.step()
        >>> opt.state[p]["rectified"], round(p[0].item(), 6)
        (False, 0.9)

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020, Algorithm 2.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {
        "lr": check_nonnegative,
        "betas": check_betas,
        "eps": check_positive,
        "weight_decay": check_nonnegative,
        "decoupled_weight_decay": check_bool,
        "threshold": check_at_least(4.0, "where r_t is defined"),
        "degenerate": check_choice(("sgd", "skip")),
        "foreach": check_optional_bool,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        decoupled_weight_decay: bool = False,
        threshold: float = 5.0,
        degenerate: str = "sgd",
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=check_betas("betas", betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            threshold=threshold,
            degenerate=degenerate,
            foreach=foreach,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, states = adam_group(self, group)
            beta1, beta2 = group["betas"]
            steps = [state["step"] for state in states]
            kernel = pick(radam, radam_foreach, group, params)
            rectified = kernel(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                threshold=group["threshold"],
                degenerate=group["degenerate"],
            )
            for state, is_rectified in zip(states, rectified, strict=True):
                rho_t, r_t = rectification(state["step"], beta2)
                state["rho_t"] = rho_t  # ρ_t of the last step
                state["r_t"] = r_t if is_rectified else math.nan  # r_t applied in the last step, NaN if none
                state["rectified"] = is_rectified  # branch taken in the last step
        return loss
