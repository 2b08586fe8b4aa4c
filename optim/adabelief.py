"""AdaBelief (Zhuang et al. 2020): Adam whose second moment tracks the belief (g − m)²."""

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
from optim._foreach import Workspace, buckets, fusable, fused_adam, pick, workspace, written
from optim._state import adam_group
from optim.radam import rectification

__all__ = ["AdaBelief", "adabelief", "adabelief_compiled", "adabelief_foreach"]


def adabelief(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_vars: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    rectify: bool,
    work: Workspace | None = None,
) -> list[bool]:
    """Apply one AdaBelief update in place (``steps`` already incremented); return per tensor if rectified.

    ``work`` keeps the temporary (g − m, then √s) of each tensor between steps.
    """
    rectified = []
    buffers = (work or Workspace()).like(params) or [None] * len(params)
    for param, grad, exp_avg, exp_avg_var, step, buffer in zip(
        params, grads, exp_avgs, exp_avg_vars, steps, buffers, strict=True
    ):
        if weight_decay != 0:
            if decoupled:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        exp_avg.lerp_(grad, 1 - beta1)
        residual = torch.sub(grad, exp_avg, out=buffer)
        exp_avg_var.mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(eps)
        if not rectify:
            rectified.append(False)
            denom = torch.sqrt(exp_avg_var, out=buffer).div_(math.sqrt(bias_correction2)).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
            continue
        rho_t, r_t = rectification(step, beta2)
        rectified.append(rho_t >= 5)
        if rho_t >= 5:
            step_size = lr * r_t * math.sqrt(bias_correction2) / bias_correction1
            param.addcdiv_(exp_avg, torch.sqrt(exp_avg_var, out=buffer).add_(eps), value=-step_size)
        else:
            param.add_(exp_avg, alpha=-lr / bias_correction1)
    return rectified


#: Smallest β₁ for which the multi-tensor step runs in the fused kernel: it scales by β₁ and 1/β₁, so its rounding
#: grows as 1/β₁ (float64, relative to the per-tensor path: 4e-14 at β₁ = 0.01, 1.6e-12 at 1e-4, 1.4e-10 at 1e-6).
FUSED_MIN_BETA1 = 0.01


def adabelief_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_vars: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    rectify: bool,
    work: Workspace | None = None,
) -> list[bool]:
    r""":func:`adabelief` on lists of tensors: one bucket per device, dtype and step count (which fixes the branch).

    Where a step divides by :math:`\sqrt{s_t}` (β₁ ≥ :data:`FUSED_MIN_BETA1`, β₂ > 0, float32/float64) it runs as
    torch's fused Adam kernel, whose update is :math:`M ← β_1' M + (1-β_1') G,\ V ← β_2 V + (1-β_2) G^2`, on
    (θ, G, M, V) = (θ, β₁m − β₁g, β₁m, s + ε/β₂) with :math:`β_1' = 1/β_1`: then :math:`M = m_t` and, as
    :math:`g - m_t = β_1(g - m_{t-1})`, :math:`V = s_t`. Its bias corrections, taken at step 1, are undone through
    its step size and ε. That is 14 passes over memory instead of 23, equal to rounding; ``work`` keeps G.
    """
    work = work or Workspace()
    for step, (params_, grads_, exp_avgs_, exp_avg_vars_) in buckets([params, grads, exp_avgs, exp_avg_vars], steps):
        if weight_decay != 0 and not decoupled:
            grads_ = torch._foreach_add(grads_, params_, alpha=weight_decay)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        rho_t, r_t = rectification(step, beta2)
        buffers = work.like(params_)
        fused = beta1 >= FUSED_MIN_BETA1 and beta2 > 0 and fusable(params_, grads_, exp_avgs_, exp_avg_vars_)
        if fused and not (rectify and rho_t < 5):
            torch._foreach_mul_(exp_avgs_, beta1)
            moves = written(buffers, torch._foreach_sub, torch.sub, exp_avgs_, grads_, alpha=beta1)
            torch._foreach_add_(exp_avg_vars_, eps / beta2)
            # The kernel's denominator √s/√(1-β₂) + ε' at step 1, its step size γ'/(1-1/β₁)
            corrected = 1.0 if rectify else bias_correction2
            ratio = math.sqrt(corrected / (1 - beta2))
            step_size = lr * (r_t * math.sqrt(bias_correction2) if rectify else 1.0) * ratio / bias_correction1
            fused_lr = step_size * (1 - 1 / beta1)
            decay = lr * weight_decay if decoupled else 0.0  # the kernel's θ(1 - γ'λ')
            ran = fused_adam(
                params_,
                moves,
                exp_avgs_,
                exp_avg_vars_,
                1,
                lr=fused_lr,
                beta1=1 / beta1,
                beta2=beta2,
                eps=eps * ratio,
                weight_decay=decay / fused_lr if decay else 0.0,
                decoupled=True,
            )
            if not ran:  # its inputs are already transformed: stopping beats a silently wrong step
                raise RuntimeError("AdaBelief: the fused kernel refused a bucket that passed its checks")
            continue
        if weight_decay != 0 and decoupled:
            torch._foreach_mul_(params_, 1 - lr * weight_decay)
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)
        residuals = written(buffers, torch._foreach_sub, torch.sub, grads_, exp_avgs_)
        torch._foreach_mul_(exp_avg_vars_, beta2)
        torch._foreach_addcmul_(exp_avg_vars_, residuals, residuals, value=1 - beta2)
        torch._foreach_add_(exp_avg_vars_, eps)
        if rectify and rho_t < 5:
            torch._foreach_add_(params_, exp_avgs_, alpha=-lr / bias_correction1)
            continue
        denoms = written(buffers, torch._foreach_sqrt, torch.sqrt, exp_avg_vars_)
        if rectify:
            torch._foreach_add_(denoms, eps)
            step_size = lr * r_t * math.sqrt(bias_correction2) / bias_correction1
        else:  # m/(√s/c + ε) evaluated as c m/(√s + εc), c = √(1-β₂ᵗ): one pass less, equal to rounding
            torch._foreach_add_(denoms, eps * math.sqrt(bias_correction2))
            step_size = lr * math.sqrt(bias_correction2) / bias_correction1
        torch._foreach_addcdiv_(params_, exp_avgs_, denoms, value=-step_size)
    return [rectify and rectification(step, beta2)[0] >= 5 for step in steps]


def _update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_var: Tensor,
    *,
    decay: float,
    weight_decay: float,
    coupled: bool,
    plain: bool,
    beta1: float,
    beta2: float,
    eps: float,
    root: float,
    step_size: float,
    low: bool,
) -> None:
    r"""One tensor's step of :func:`adabelief` for the compiled path (:func:`adabelief_compiled`).

    With d = ``decay`` (1 − γλ, or 1 without decoupled decay), r = ``root`` (:math:`\sqrt{1-β_2^t}`, or 1 when
    rectified) and η = ``step_size``:
    :math:`θ ← dθ`, then :math:`θ ← θ - η\,m_t/(\sqrt{s_t}/r + ε)`, or :math:`θ ← θ - η\,m_t` when ``plain``.
    """
    param.mul_(decay)
    if coupled:
        grad = grad + weight_decay * param
    exp_avg.copy_(lerp(exp_avg, grad, 1 - beta1, low=low))
    residual = grad - exp_avg
    exp_avg_var.copy_(beta2 * exp_avg_var + (1 - beta2) * residual * residual + eps)
    if plain:
        param.sub_(step_size * exp_avg)
    else:
        param.sub_(step_size * exp_avg / (exp_avg_var.sqrt() / root + eps))


_RULE = Rule(_update, writes=(0, 2, 3))


def adabelief_compiled(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_vars: list[Tensor],
    steps: list[int],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    rectify: bool,
    work: Workspace | None = None,
) -> list[bool]:
    """:func:`adabelief` with its float32/float64 tensors' steps as compiled kernels (:mod:`optim._compiled`).

    Other tensors (bfloat16, float16, large ones that are not contiguous) take :func:`adabelief_foreach`.
    """
    columns = [params, grads, exp_avgs, exp_avg_vars, steps]
    chosen, others = split(columns)
    scalars, shared = [], {}
    for index in chosen:
        step = steps[index]
        if step in shared:
            scalars.append(shared[step])
            continue
        rho_t, r_t = rectification(step, beta2)
        bias_correction1, root = 1 - beta1**step, math.sqrt(1 - beta2**step)
        plain = rectify and rho_t < 5
        scalars.append(
            dict(
                decay=1 - lr * weight_decay if decoupled else 1.0,
                weight_decay=weight_decay,
                coupled=weight_decay != 0 and not decoupled,
                plain=plain,
                beta1=beta1,
                beta2=beta2,
                eps=eps,
                root=1.0 if rectify else root,
                step_size=lr * (r_t * root if rectify and not plain else 1.0) / bias_correction1,
                low=low_weight(1 - beta1),
            )
        )
        shared[step] = scalars[-1]
    _RULE.run("AdaBelief", at(columns[:4], chosen), scalars)  # first: if it cannot compile, nothing has changed
    if others:
        hyper = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        adabelief_foreach(*at(columns, others), **hyper, rectify=rectify, work=work)
    return [rectify and rectification(step, beta2)[0] >= 5 for step in steps]


class AdaBelief(Checked):
    r"""AdaBelief: the step is large where the gradient agrees with its prediction m, small where it does not.

    γ, β₁, β₂, ε, λ are ``lr``, ``betas``, ``eps``, ``weight_decay``; t counts steps from 1.

    .. math::
        m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad s_t = β_2 s_{t-1} + (1-β_2)(g_t - m_t)^2 + ε,\\
        θ_t = θ_{t-1} - \frac{γ}{1-β_1^t}\,\frac{m_t}{\sqrt{s_t}/\sqrt{1-β_2^t} + ε}.

    ε accumulates inside s as in the authors' package (adabelief-pytorch 0.2.1). Decay is decoupled,
    :math:`θ ← θ(1-γλ)`, or coupled :math:`g ← g + λθ`. With ``rectify`` the RAdam rectification of the
    authors' package applies: for :math:`ρ_t ≥ 5`,
    :math:`θ_t = θ_{t-1} - γ r_t \sqrt{1-β_2^t}/(1-β_1^t) · m_t/(\sqrt{s_t}+ε)`, otherwise
    :math:`θ_t = θ_{t-1} - γ m_t/(1-β_1^t)`.

    Args:
        params: Iterable of parameters or param groups.
        lr: γ. Default 1e-3 (Zhuang et al. 2020).
        betas: (β₁, β₂). Default (0.9, 0.999).
        eps: ε. Default 1e-16 (authors' package 0.2.1).
        weight_decay: λ. Default 0.
        decoupled: decoupled (AdamW-style) decay. Default True (authors' package).
        rectify: RAdam-style rectification. Default False, the paper's Algorithm 2 (the package defaults to True).
        foreach: the multi-tensor path (:func:`adabelief_foreach`); ``None`` (default) takes it when every
            parameter is on a device with multi-tensor kernels (CUDA), as torch does.
        compiled: each tensor's step as one ``torch.compile``'d kernel (:func:`adabelief_compiled`; the first step
            compiles, see :mod:`optim._compiled`); it takes precedence over ``foreach``. Default False.

    State per parameter: ``step``, ``exp_avg`` m, ``exp_avg_var`` s; with ``rectify`` also ``rho_t``, ``r_t``
    (NaN when not rectified) and ``rectified`` of the last step.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(1))
        >>> opt = AdaBelief([p], lr=0.1)
        >>> p.sum().backward(); opt.step(); round(p.item(), 4)
        0.8889

    Reference: Zhuang et al., "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
    NeurIPS 2020, Algorithm 2.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {
        "lr": check_nonnegative,
        "betas": check_betas,
        "eps": check_positive,
        "weight_decay": check_nonnegative,
        "decoupled": check_bool,
        "rectify": check_bool,
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
        rectify: bool = False,
        foreach: bool | None = None,
        compiled: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=check_betas("betas", betas),
            eps=eps,
            weight_decay=weight_decay,
            decoupled=decoupled,
            rectify=rectify,
            foreach=foreach,
            compiled=compiled,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_vars, states = adam_group(self, group, "exp_avg_var")
            beta1, beta2 = group["betas"]
            kernel = pick(adabelief, adabelief_foreach, group, params, adabelief_compiled)
            rectified = kernel(
                params,
                grads,
                exp_avgs,
                exp_avg_vars,
                [state["step"] for state in states],
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled=group["decoupled"],
                rectify=group["rectify"],
                work=workspace(self),
            )
            if group["rectify"]:
                for state, is_rectified in zip(states, rectified, strict=True):
                    rho_t, r_t = rectification(state["step"], beta2)
                    state["rho_t"] = rho_t  # ρ_t of the last step
                    state["r_t"] = r_t if is_rectified else math.nan  # r_t applied, NaN if not rectified
                    state["rectified"] = is_rectified  # branch taken in the last step
        return loss
