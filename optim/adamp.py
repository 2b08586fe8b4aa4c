"""AdamP (Heo et al. 2021): Adam that removes the radial part of the update of scale-invariant weights."""

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
from optim._compiled import Rule, at, lerp, low_weight
from optim._foreach import buckets, fused_adam, pick
from optim._projection import (
    Projection,
    compiled_radial_views,
    compiled_rows,
    projected_step,
    radial_sums,
    radial_view,
    radial_views,
    scale_columns,
    with_radial_norms,
)
from optim._state import adam_group

__all__ = ["AdamP", "adamp", "adamp_compiled", "adamp_foreach"]


def adamp(
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
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> list[Projection]:
    r"""Apply one AdamP update in place (``steps`` already incremented); return the projection of each tensor.

    Uses :math:`u = m/(\sqrt{v}/c + ε) = c\,m/(\sqrt{v} + εc)` with :math:`c = \sqrt{1-β_2^t}`, which saves a
    pass; u is only materialised where it is projected (or for Nesterov).
    """
    projections = []
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps, strict=True):
        bias_correction1 = 1 - beta1**step
        sqrt_bias_correction2 = math.sqrt(1 - beta2**step)
        step_size = lr * sqrt_bias_correction2 / bias_correction1
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().add_(eps * sqrt_bias_correction2)
        projection = radial_view(param, grad, delta=delta, wd_ratio=wd_ratio, eps=eps)
        if projection.view == "none" and not nesterov:
            update = None
        elif nesterov:
            update = (exp_avg * beta1).add_(grad, alpha=1 - beta1).div_(denom)
        else:
            update = torch.div(exp_avg, denom, out=denom)
        decay = 1 - lr * weight_decay * projection.wd_ratio if weight_decay > 0 else 1.0
        if projection.view != "none":  # the removal of u's radial part folded into the scale of θ
            norm = projected_step(param, update, projection.view, step=step_size, decay=decay, eps=eps)
            projection = projection._replace(radial_norm=step_size * norm.item())
        else:
            if weight_decay > 0:
                param.mul_(decay)
            if update is None:
                param.addcdiv_(exp_avg, denom, value=-step_size)
            else:
                param.add_(update, alpha=-step_size)
        projections.append(projection)
    return projections


def adamp_foreach(
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
    delta: float,
    wd_ratio: float,
    nesterov: bool,
    projections: list[Projection] | None = None,
) -> list[Projection]:
    """:func:`adamp` on lists of tensors: one bucket per device, dtype, step count and projected view.

    All projection tests are read back in one transfer (or come as ``projections``, see :func:`adamp_compiled`);
    the removal of the radial part is per tensor (it needs each tensor's row norms), and so is the norm of the
    removed part, read back in one transfer at the end.
    Where nothing is projected (and no Nesterov) the step is AdamW's: torch's fused Adam kernel where it runs.
    """
    if projections is None:
        projections = radial_views(params, grads, delta=delta, wd_ratio=wd_ratio, eps=eps)
    keys = [(step, projection.view) for step, projection in zip(steps, projections, strict=True)]
    columns = [params, grads, exp_avgs, exp_avg_sqs, range(len(params))]
    radial: dict[int, tuple[float, Tensor]] = {}
    for (step, view), (params_, grads_, exp_avgs_, exp_avg_sqs_, indices) in buckets(columns, keys):
        ratio = 1.0 if view == "none" else wd_ratio
        if (
            view == "none"
            and not nesterov
            and fused_adam(
                params_,
                grads_,
                exp_avgs_,
                exp_avg_sqs_,
                step,
                lr=lr,
                beta1=beta1,
                beta2=beta2,
                eps=eps,
                weight_decay=weight_decay,
                decoupled=True,
            )
        ):
            continue
        bias_correction1 = 1 - beta1**step
        sqrt_bias_correction2 = math.sqrt(1 - beta2**step)
        step_size = lr * sqrt_bias_correction2 / bias_correction1
        torch._foreach_lerp_(exp_avgs_, grads_, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs_, beta2)
        torch._foreach_addcmul_(exp_avg_sqs_, grads_, grads_, value=1 - beta2)
        denoms = torch._foreach_sqrt(exp_avg_sqs_)
        torch._foreach_add_(denoms, eps * sqrt_bias_correction2)
        if view == "none" and not nesterov:
            updates = None
        elif nesterov:
            updates = torch._foreach_mul(exp_avgs_, beta1)
            torch._foreach_add_(updates, grads_, alpha=1 - beta1)
            torch._foreach_div_(updates, denoms)
        else:
            updates = torch._foreach_div(exp_avgs_, denoms)
        decay = 1 - lr * weight_decay * ratio if weight_decay > 0 else 1.0
        if view != "none":  # the removal of u's radial part folded into the scale of θ
            for index, param, update in zip(indices, params_, updates, strict=True):
                radial[index] = (step_size, projected_step(param, update, view, step=step_size, decay=decay, eps=eps))
            continue
        if weight_decay > 0:
            torch._foreach_mul_(params_, decay)
        if updates is None:
            torch._foreach_addcdiv_(params_, exp_avgs_, denoms, value=-step_size)
        else:
            torch._foreach_add_(params_, updates, alpha=-step_size)
    return with_radial_norms(projections, radial)


def _update(
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    beta1: float,
    beta2: float,
    floor: float,
    nesterov: bool,
    low: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The update u and the new :math:`m_t, v_t`, as :func:`adamp` makes them; ``floor`` is :math:`ε\sqrt{1-β_2^t}`.

    ``low``: the form of lerp for m (:func:`optim._compiled.lerp`).
    """
    exp_avg = lerp(exp_avg, grad, 1 - beta1, low=low)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    denom = exp_avg_sq.sqrt() + floor
    update = (beta1 * exp_avg + (1 - beta1) * grad) / denom if nesterov else exp_avg / denom
    return update, exp_avg, exp_avg_sq


def _measure(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    *,
    beta1: float,
    beta2: float,
    floor: float,
    nesterov: bool,
    low: bool,
) -> Tensor:
    """A projected tensor's ``[θ·u, θ·θ]`` per row piece (:func:`optim._projection.radial_sums`); writes nothing."""
    update, _, _ = _update(grad, exp_avg, exp_avg_sq, beta1=beta1, beta2=beta2, floor=floor, nesterov=nesterov, low=low)
    return radial_sums(param, update)


def _projected_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    scale: Tensor,
    *,
    beta1: float,
    beta2: float,
    floor: float,
    nesterov: bool,
    step_size: float,
    low: bool,
) -> None:
    r"""A projected tensor's step in one pass: m, v, then :math:`θ ← θ\,(a + γk) - γu` (``scale`` per row)."""
    update, new_avg, new_avg_sq = _update(
        grad, exp_avg, exp_avg_sq, beta1=beta1, beta2=beta2, floor=floor, nesterov=nesterov, low=low
    )
    exp_avg.copy_(new_avg)
    exp_avg_sq.copy_(new_avg_sq)
    param.copy_(scale * param - step_size * update)


_MEASURE = Rule(_measure, writes=(), pointwise=False)
_PROJECTED = Rule(_projected_step, writes=(0, 2, 3), pointwise=False, per_row=(4,))


def adamp_compiled(
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
    delta: float,
    wd_ratio: float,
    nesterov: bool,
) -> list[Projection]:
    """:func:`adamp_foreach` with compiled kernels (:mod:`optim._compiled`): projection tests and projected steps.

    The projection test of each tensor is one compiled kernel (one pass over θ and g, instead of three). A projected
    float32/float64 tensor takes two more: one reads θ, g, m and v for the rows' θ·u and θ·θ, from which θ's
    scale a + γk follows (:func:`optim._projection.scale_columns`), one steps m, v and θ. The other tensors take
    the multi-tensor path (whose unprojected tensors already take torch's fused Adam, one pass).
    """
    test = dict(delta=delta, wd_ratio=wd_ratio, eps=eps)
    projections = compiled_radial_views("AdamP", params, grads, **test)
    columns = [params, grads, exp_avgs, exp_avg_sqs]
    turned = [index for index, projection in enumerate(projections) if projection.view != "none"]
    turned = [turned[i] for i in compiled_rows(at(columns, turned), eps=eps)[0]]
    measuring, stepping = {}, {}  # the rules' scalars per step count
    for step in sorted({steps[i] for i in turned}):
        root = math.sqrt(1 - beta2**step)
        measuring[step] = dict(beta1=beta1, beta2=beta2, floor=eps * root, nesterov=nesterov, low=low_weight(1 - beta1))
        stepping[step] = dict(**measuring[step], step_size=lr * root / (1 - beta1**step))
    sums = _MEASURE.run("AdamP", at(columns, turned), [measuring[steps[i]] for i in turned])
    step_sizes = [stepping[steps[i]]["step_size"] for i in turned]
    decay = 1 - lr * weight_decay * wd_ratio if weight_decay > 0 else 1.0
    views = [projections[i].view for i in turned]
    scales, norms = scale_columns(sums, at(columns, turned)[0], views, step_sizes, [decay] * len(turned), eps=eps)
    _PROJECTED.run("AdamP", [*at(columns, turned), scales], [stepping[steps[i]] for i in turned])
    radial = {i: (size, norm) for i, size, norm in zip(turned, step_sizes, norms, strict=True)}
    projections = with_radial_norms(projections, radial)
    others = sorted(set(range(len(params))) - set(turned))
    if others:
        hyper = dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, nesterov=nesterov)
        rest = at([*columns, steps], others)
        done = adamp_foreach(*rest, **test, **hyper, projections=[projections[i] for i in others])
        for index, projection in zip(others, done, strict=True):
            projections[index] = projection
    return projections


class AdamP(Checked):
    r"""AdamP: Adam whose update loses its radial component on scale-invariant weights.

    γ, β₁, β₂, ε, λ, δ are ``lr``, ``betas``, ``eps``, ``weight_decay``, ``delta``; t counts steps from 1.

    .. math::
        m_t = β_1 m_{t-1} + (1-β_1) g_t,\quad v_t = β_2 v_{t-1} + (1-β_2) g_t^2,\quad
        u = \frac{m_t}{\sqrt{v_t}/\sqrt{1-β_2^t} + ε}\ \Big(\text{Nesterov: }
        \frac{β_1 m_t + (1-β_1) g_t}{\sqrt{v_t}/\sqrt{1-β_2^t} + ε}\Big),\\
        \text{if } \max_{row} |\cos(g_t, θ)| < δ/\sqrt{\text{row length}}:\
        u ← u - \hat θ \textstyle\sum_{row}(\hat θ ⊙ u),\ λ_{eff} = λ\,\text{wd\_ratio}\ (\text{else } λ_{eff} = λ),\\
        θ ← θ(1 - γλ_{eff}),\quad θ ← θ - \frac{γ}{1-β_1^t} u.

    The projection is tried per output channel first, then on the whole tensor (see
    :func:`optim._projection.radial_view`); tensors with fewer than two dims (or no elements) are never projected. Where
    nothing is projected (and ``nesterov=False``) AdamP is ``torch.optim.AdamW`` with the same λ — decoupled
    decay :math:`θ(1-γλ)` (wd_ratio does not apply), then :math:`θ - γ/(1-β_1^t) · m_t/(\sqrt{v_t}/\sqrt{1-β_2^t}+ε)`
    — equal to rounding, since AdamP evaluates it as :math:`c\,m_t/(\sqrt{v_t}+εc)`, :math:`c=\sqrt{1-β_2^t}`.
    With AdamP's default λ = 0 that is plain Adam (AdamW's own default λ is 0.01).

    Args:
        params: Iterable of parameters or param groups.
        lr: γ. Default 1e-3 (Heo et al. 2021, official code).
        betas: (β₁, β₂). Default (0.9, 0.999).
        eps: ε, also the cosine's norm clamp. Default 1e-8 (official code).
        weight_decay: λ (decoupled). Default 0.
        delta: δ, cosine threshold. Default 0.1 (official code).
        wd_ratio: weight-decay factor on projected tensors. Default 0.1 (official code).
        nesterov: Nesterov momentum in u. Default False.
        foreach: the multi-tensor path (:func:`adamp_foreach`); ``None`` (default) takes it when every parameter
            is on a device with multi-tensor kernels (CUDA), as torch does.
        compiled: the projection test and the step of each projected tensor as ``torch.compile``'d kernels, the
            other steps on the multi-tensor path (:func:`adamp_compiled`; the first step compiles, see
            :mod:`optim._compiled`). Default False.

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq`` and of the last step ``projection``
    ("none" | "channel" | "layer"), ``max_cosine`` (max channel |cos|), ``layer_cosine`` and ``radial_norm``
    (norm of the radial part removed from the parameter step, γ/(1−β₁ᵗ)·‖removed part of u‖).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
        >>> opt = AdamP([w], lr=0.1)
        >>> (w / w.norm()).mul(torch.tensor([[1.0, -1.0]])).sum().backward(); opt.step()
        >>> opt.state[w]["projection"]
        'channel'

    Reference: Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021, Algorithm 2.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {
        "lr": check_nonnegative,
        "betas": check_betas,
        "eps": check_positive,
        "weight_decay": check_nonnegative,
        "delta": check_positive,
        "wd_ratio": check_nonnegative,
        "nesterov": check_bool,
        "foreach": check_optional_bool,
        "compiled": check_bool,
    }

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        foreach: bool | None = None,
        compiled: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=check_betas("betas", betas),
            eps=eps,
            weight_decay=weight_decay,
            delta=delta,
            wd_ratio=wd_ratio,
            nesterov=nesterov,
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
            kernel = pick(adamp, adamp_foreach, group, params, adamp_compiled)
            projections = kernel(
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
                delta=group["delta"],
                wd_ratio=group["wd_ratio"],
                nesterov=group["nesterov"],
            )
            for state, projection in zip(states, projections, strict=True):
                projection.record(state)
        return loss
