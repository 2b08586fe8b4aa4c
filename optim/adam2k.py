"""Adam-2k, the control of the RAdam paper: Adam that only accumulates v during its first k steps."""

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
    check_count,
    check_nonnegative,
    check_optional_bool,
    check_positive,
    evaluate,
)
from optim._foreach import buckets, fused_adam, pick
from optim._state import adam_group

__all__ = ["Adam2k", "adam2k", "adam2k_foreach"]


def adam2k(
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
    freeze_steps: int,
) -> None:
    """Apply one Adam-2k update in place (``steps`` already incremented)."""
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if step <= freeze_steps:
            continue
        exp_avg.lerp_(grad, 1 - beta1)
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        param.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps), value=-step_size)


def adam2k_foreach(
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
    freeze_steps: int,
) -> None:
    """:func:`adam2k` on lists of tensors: one bucket per device, dtype and step count.

    After the warm-up the step is Adam's with ε/√(1-β₂ᵗ) for ε: torch's fused Adam kernel where it runs.
    """
    for step, (params_, grads_, exp_avgs_, exp_avg_sqs_) in buckets([params, grads, exp_avgs, exp_avg_sqs], steps):
        fused_eps = eps / math.sqrt(1 - beta2**step)
        if step > freeze_steps and fused_adam(
            params_, grads_, exp_avgs_, exp_avg_sqs_, step, lr=lr, beta1=beta1, beta2=beta2, eps=fused_eps
        ):
            continue
        torch._foreach_mul_(exp_avg_sqs_, beta2)
        torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_, value=1 - beta2)
        if step <= freeze_steps:
            continue
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        denoms = torch._foreach_sqrt(exp_avg_sqs_)
        torch._foreach_add_(denoms, eps)
        torch._foreach_addcdiv_(params_, exp_avgs_, denoms, value=-step_size)


class Adam2k(Checked):
    r"""Adam-2k: v is warmed up for k steps before m and θ move.

    γ, β₁, β₂, ε, k are ``lr``, ``betas``, ``eps``, ``freeze_steps``; t counts every step from 1.

    .. math::
        v_t = β_2 v_{t-1} + (1-β_2) g_t^2;\quad \text{for } t > k:\
        m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad
        θ_t = θ_{t-1} - γ\frac{\sqrt{1-β_2^t}}{1-β_1^t}\,\frac{m_t}{\sqrt{v_t}+ε}.

    As the RAdam authors coded the control: during the first k steps only v changes (no m, no θ update);
    the counter t keeps counting through them, so the bias corrections use the total step count and ε sits on
    the raw :math:`\sqrt{v_t}`. There is no weight decay.

    Args:
        params: Iterable of parameters or param groups.
        lr: γ. Default 1e-3.
        betas: (β₁, β₂). Default (0.9, 0.999).
        eps: ε. Default 1e-8.
        freeze_steps: k. Default 2000 (Liu et al. 2020, Sec. 3).
        foreach: the multi-tensor path (:func:`adam2k_foreach`); ``None`` (default) takes it when every parameter
            is on a device with multi-tensor kernels (CUDA), as torch does.

    State per parameter: ``step``, ``exp_avg`` m, ``exp_avg_sq`` v and ``frozen`` (the last step only
    updated v).

    Example:
        >>> p = torch.nn.Parameter(torch.ones(1))
        >>> opt = Adam2k([p], lr=0.1, freeze_steps=1)
        >>> p.sum().backward(); opt.step(); p.item(), opt.state[p]["frozen"]
        (1.0, True)

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020, Sec. 3.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {
        "lr": check_nonnegative,
        "betas": check_betas,
        "eps": check_positive,
        "freeze_steps": check_count,
        "foreach": check_optional_bool,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        freeze_steps: int = 2000,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params, dict(lr=lr, betas=check_betas("betas", betas), eps=eps, freeze_steps=freeze_steps, foreach=foreach)
        )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, states = adam_group(self, group)
            beta1, beta2 = group["betas"]
            pick(adam2k, adam2k_foreach, group, params)(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [state["step"] for state in states],
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                freeze_steps=group["freeze_steps"],
            )
            for state in states:
                state["frozen"] = state["step"] <= group["freeze_steps"]  # the last step only updated v
        return loss
