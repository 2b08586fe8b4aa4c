"""AdaM3 (Wang et al.): Adam whose second moment is built from the momentum instead of the gradient."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from optim._checks import (
    Check,
    Checked,
    check_betas,
    check_bool,
    check_nonnegative,
    check_optional_bool,
    check_positive,
    evaluate,
)
from optim._compiled import Rule, at, lerp, low_weight, split
from optim._foreach import buckets, fusable, fused_adam, pick
from optim._state import adam_group

__all__ = ["AdaM3", "adam3", "adam3_compiled", "adam3_foreach"]


def adam3(
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
    decoupled: bool,
) -> None:
    """Apply one AdaM3 update in place (``steps`` already incremented)."""
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        if weight_decay != 0:
            if decoupled:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(exp_avg, exp_avg, value=1 - beta2).add_(eps)
        denom = exp_avg_sq.sqrt().div_(math.sqrt(bias_correction2))
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def adam3_foreach(
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
    decoupled: bool,
) -> None:
    r""":func:`adam3` on lists of tensors: one bucket per device, dtype and step count.

    With float32/float64 tensors (and ε a normal number in their dtype) the v update and the step run as torch's
    fused Adam kernel on (θ, m_t, v) with g := m_t, β₁ = 0, γ/(1-β₁ᵗ) and ε = 0, after :math:`v ← v + ε/β_2`;
    otherwise it evaluates
    :math:`m/(\sqrt{v}/c)` as :math:`c\,m/\sqrt{v}`, :math:`c = \sqrt{1-β_2^t}`. Both equal :func:`adam3` to rounding.
    """
    for step, (params_, grads_, exp_avgs_, exp_avg_sqs_) in buckets([params, grads, exp_avgs, exp_avg_sqs], steps):
        if weight_decay != 0:
            if decoupled:
                torch._foreach_mul_(params_, 1 - lr * weight_decay)
            else:
                grads_ = torch._foreach_add(grads_, params_, alpha=weight_decay)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)
        if beta2 > 0 and fusable(params_, exp_avgs_, exp_avg_sqs_) and eps >= torch.finfo(params_[0].dtype).tiny:
            # β₂(v + ε/β₂) + (1-β₂)m² = v_t; fused Adam with g := m_t and β₁ = 0 leaves m_t and takes the step (a
            # subnormal ε would not survive the round trip: ε = 1e-45 in float32 came back as 0, and 0/√0 as NaN)
            torch._foreach_add_(exp_avg_sqs_, eps / beta2)
            fused_adam(
                params_,
                exp_avgs_,
                exp_avgs_,
                exp_avg_sqs_,
                step,
                lr=lr / bias_correction1,
                beta1=0.0,
                beta2=beta2,
                eps=0.0,
            )
            continue
        torch._foreach_mul_(exp_avg_sqs_, beta2)
        torch._foreach_addcmul_(exp_avg_sqs_, exp_avgs_, exp_avgs_, value=1 - beta2)
        torch._foreach_add_(exp_avg_sqs_, eps)
        denoms = torch._foreach_sqrt(exp_avg_sqs_)  # √(1-β₂ᵗ) moves into the step size: one pass less
        torch._foreach_addcdiv_(params_, exp_avgs_, denoms, value=-lr * math.sqrt(bias_correction2) / bias_correction1)


def _update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    decay: float,
    weight_decay: float,
    coupled: bool,
    beta1: float,
    beta2: float,
    eps: float,
    root: float,
    step_size: float,
    low: bool,
) -> None:
    r"""One tensor's step of :func:`adam3` for the compiled path (:func:`adam3_compiled`), one pass over memory.

    With d = ``decay`` (1 − γλ, or 1 without decoupled decay), r = ``root`` (:math:`\sqrt{1-β_2^t}`) and
    η = ``step_size`` (:math:`γ/(1-β_1^t)`): :math:`θ ← dθ` (coupled: :math:`g ← g + λθ`), then
    :math:`m_t = m + (1-β_1)(g - m)`, :math:`v_t = β_2 v + (1-β_2) m_t^2 + ε`, :math:`θ ← θ - η\,m_t/(\sqrt{v_t}/r)`.
    """
    param.mul_(decay)
    if coupled:
        grad = grad + weight_decay * param
    exp_avg.copy_(lerp(exp_avg, grad, 1 - beta1, low=low))
    exp_avg_sq.copy_(beta2 * exp_avg_sq + (1 - beta2) * exp_avg * exp_avg + eps)
    param.sub_(step_size * exp_avg / (exp_avg_sq.sqrt() / root))


_RULE = Rule(_update, writes=(0, 2, 3))


def adam3_compiled(
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
    decoupled: bool,
) -> None:
    """:func:`adam3` with its float32/float64 tensors' steps as compiled kernels (:mod:`optim._compiled`).

    One pass over θ, g, m and v per tensor, where :func:`adam3_foreach` makes three (m, then v's ε, then torch's
    fused Adam). Other tensors (bfloat16, float16, large ones that are not contiguous) take
    :func:`adam3_foreach`.
    """
    columns = [params, grads, exp_avgs, exp_avg_sqs, steps]
    chosen, others = split(columns)
    shared = {
        step: dict(
            decay=1 - lr * weight_decay if decoupled else 1.0,
            weight_decay=weight_decay,
            coupled=weight_decay != 0 and not decoupled,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            root=math.sqrt(1 - beta2**step),
            step_size=lr / (1 - beta1**step),
            low=low_weight(1 - beta1),
        )
        for step in {steps[index] for index in chosen}
    }
    _RULE.run("AdaM3", at(columns[:4], chosen), [shared[steps[index]] for index in chosen])  # first: see Rule.run
    if others:
        hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        adam3_foreach(*at(columns, others), **hyper)


class AdaM3(Checked):
    r"""AdaM3: "momentum the second moment"; early steps are close to :math:`γ/(1-β_1)` per coordinate.

    γ, β₁, β₂, ε, λ are ``lr``, ``betas``, ``eps``, ``weight_decay``; t counts steps from 1.

    .. math::
        m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad v_t = β_2 v_{t-1} + (1-β_2) m_t^2 + ε,\\
        θ_t = θ_{t-1} - \frac{γ}{1-β_1^t}\,\frac{m_t}{\sqrt{v_t}/\sqrt{1-β_2^t}}.

    As in the authors' code ``wyzjack/AdaM3``: ε accumulates inside v and there is no outer ε.
    Decay is decoupled, :math:`θ ← θ(1-γλ)`, or coupled :math:`g ← g + λθ`.

    Args:
        params: Iterable of parameters or param groups.
        lr: γ. Default 1e-3.
        betas: (β₁, β₂). Default (0.9, 0.999) (authors' code).
        eps: ε. Default 1e-16 (authors' code).
        weight_decay: λ. Default 0.
        decoupled: decoupled decay. Default True (authors' code).
        foreach: the multi-tensor path (:func:`adam3_foreach`); ``None`` (default) takes it when every parameter
            is on a device with multi-tensor kernels (CUDA), as torch does.
        compiled: each tensor's step as one ``torch.compile``'d kernel (:func:`adam3_compiled`; the first step
            compiles, see :mod:`optim._compiled`); it takes precedence over ``foreach``. Default False.

    State per parameter: ``step``, ``exp_avg`` m, ``exp_avg_sq`` v.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
        >>> opt = AdaM3([p], lr=0.01)
        >>> p.sum().backward(); opt.step(); round(p.item(), 6)
        0.9

    Reference: Wang et al., "Momentum Centering and Asynchronous Update for Adaptive Gradient Methods"
    (AdaM3, arXiv:2110.05454), Algorithm 1.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {
        "lr": check_nonnegative,
        "betas": check_betas,
        "eps": check_positive,
        "weight_decay": check_nonnegative,
        "decoupled": check_bool,
        "foreach": check_optional_bool,
        "compiled": check_bool,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0,
        decoupled: bool = True,
        foreach: bool | None = None,
        compiled: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=check_betas("betas", betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled,
            foreach=foreach,
            compiled=compiled,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, states = adam_group(self, group)
            beta1, beta2 = group["betas"]
            pick(adam3, adam3_foreach, group, params, adam3_compiled)(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [state["step"] for state in states],
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled=group["decoupled"],
            )
        return loss
