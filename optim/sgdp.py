"""SGDP (Heo et al. 2021): momentum SGD that removes the radial part of the step on scale-invariant weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from optim._checks import (
    Check,
    Checked,
    check_bool,
    check_closed_unit_interval,
    check_nonnegative,
    check_optional_bool,
    check_positive,
    check_unit_interval,
    evaluate,
)
from optim._compiled import Rule, at, split
from optim._foreach import buckets, fused_sgd, pick
from optim._projection import (
    Projection,
    compiled_rows,
    measured_views,
    projected_step,
    radial_view,
    radial_views,
    scale_columns,
    with_radial_norms,
)

__all__ = ["SGDP", "sgdp", "sgdp_compiled", "sgdp_foreach"]


def _decay(lr: float, weight_decay: float, ratio: float, momentum: float) -> float:
    r"""SGDP's decoupled decay factor :math:`a = 1 - γλ\,\mathrm{ratio}/(1-μ)` (1 without decay, whatever μ)."""
    return 1 - lr * weight_decay * ratio / (1 - momentum) if weight_decay != 0 else 1.0


def sgdp(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
) -> list[Projection]:
    """Apply one SGDP update in place; return the projection of each tensor."""
    projections = []
    for param, grad, buf in zip(params, grads, momentum_buffers, strict=True):
        buf.mul_(momentum).add_(grad, alpha=1 - dampening)
        direction = grad.add(buf, alpha=momentum) if nesterov else buf
        projection = radial_view(param, grad, delta=delta, wd_ratio=wd_ratio, eps=eps)
        decay = _decay(lr, weight_decay, projection.wd_ratio, momentum)
        if projection.view != "none":
            # The authors' code projects the momentum buffer itself in place; valley leaves b as it is and folds
            # the projection into the scale of θ (projected_step).
            norm = projected_step(param, direction, projection.view, step=lr, decay=decay, eps=eps)
            projection = projection._replace(radial_norm=lr * norm.item())
        else:
            if weight_decay != 0:
                param.mul_(decay)
            param.add_(direction, alpha=-lr)
        projections.append(projection)
    return projections


def sgdp_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
    projections: list[Projection] | None = None,
) -> list[Projection]:
    """:func:`sgdp` on lists of tensors: one bucket per device, dtype and projected view (see :func:`adamp_foreach`).

    Where nothing is projected the step is momentum SGD's: torch's fused SGD kernel where it runs.
    """
    if projections is None:
        projections = radial_views(params, grads, delta=delta, wd_ratio=wd_ratio, eps=eps)
    keys = [projection.view for projection in projections]
    radial: dict[int, tuple[float, Tensor]] = {}
    for view, (params_, grads_, buffers_, indices) in buckets(
        [params, grads, momentum_buffers, range(len(params))], keys
    ):
        decay = _decay(lr, weight_decay, 1.0 if view == "none" else wd_ratio, momentum)
        if weight_decay != 0 and view == "none":  # a projection reads θ first, so there it comes later
            torch._foreach_mul_(params_, decay)
        if view == "none" and fused_sgd(
            params_, grads_, buffers_, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov
        ):
            continue
        torch._foreach_mul_(buffers_, momentum)
        torch._foreach_add_(buffers_, grads_, alpha=1 - dampening)
        directions = torch._foreach_add(grads_, buffers_, alpha=momentum) if nesterov else buffers_
        if view == "none":
            torch._foreach_add_(params_, directions, alpha=-lr)
            continue
        for index, param, direction in zip(indices, params_, directions, strict=True):  # b stays unprojected
            radial[index] = (lr, projected_step(param, direction, view, step=lr, decay=decay, eps=eps))
    return with_radial_norms(projections, radial)


def _plain_step(
    param: Tensor,
    grad: Tensor,
    buf: Tensor,
    *,
    momentum: float,
    dampening: float,
    decay: float,
    lr: float,
    nesterov: bool,
) -> None:
    r"""One unprojected tensor's step of :func:`sgdp` for the compiled path: decay, momentum and step in one pass.

    :math:`b ← μb + (1-τ)g`, :math:`d = g + μb` (Nesterov) or :math:`d = b`, :math:`θ ← aθ - γd` with
    a = ``decay`` (:math:`1 - γλ/(1-μ)`; for a projected tensor a per-row scale, :func:`_radial_dots`).
    """
    buf.copy_(momentum * buf + (1 - dampening) * grad)
    direction = grad + momentum * buf if nesterov else buf
    param.copy_(decay * param - lr * direction)


def _radial_dots(param: Tensor, buf: Tensor, grad_dots: Tensor, *, by_grad: float, by_buf: float) -> Tensor:
    r"""A projected tensor's ``[θ·θ, θ·d]`` per row piece (:func:`optim._projection.radial_sums`), reading θ and b.

    d is linear in g and the buffer b before the step (:func:`_plain_step`): :math:`d = (1-τ)g + μb`, or with
    Nesterov :math:`d = (1 + μ(1-τ))g + μ^2 b`, so :math:`θ·d` = ``by_grad`` · θ·g + ``by_buf`` · θ·b, with the
    row pieces' θ·g (``grad_dots``, a column) from the projection test, which read θ and g already. The buffer is
    scaled before the sum, as d is before θ·d: without momentum a finite old buffer counts 0 even where θ·b overflows.
    """
    return torch.stack([(param * param).sum(1), by_grad * grad_dots[:, 0] + (by_buf * buf * param).sum(1)])


def _projected_step(
    param: Tensor,
    grad: Tensor,
    buf: Tensor,
    scale: Tensor,
    *,
    momentum: float,
    dampening: float,
    lr: float,
    nesterov: bool,
) -> None:
    r""":func:`_plain_step` of a projected tensor: :math:`θ ← θ\,(a + γk) - γd`, with θ's scale a + γk per row."""
    _plain_step(param, grad, buf, momentum=momentum, dampening=dampening, decay=scale, lr=lr, nesterov=nesterov)


_RULE = Rule(_plain_step, writes=(0, 2))
_PROJECTED = Rule(_projected_step, writes=(0, 2), pointwise=False, per_row=(3,))
_RADIAL = Rule(_radial_dots, writes=(), pointwise=False, per_row=(2,))


def sgdp_compiled(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    eps: float,
    delta: float,
    wd_ratio: float,
) -> list[Projection]:
    """:func:`sgdp_foreach` with compiled kernels (:mod:`optim._compiled`): projection tests and steps.

    The projection test of each float32/float64 tensor of two or more dims is one compiled kernel (one pass over θ
    and g, :func:`optim._projection.compiled_rows`); its step is another (decay, momentum and step in one pass,
    where torch's fused SGD needs a pass of its own for the decay). A projected tensor's step takes θ's scale per
    row, a + γk (:func:`optim._projection.scale_columns`), from one more pass over θ and b (:func:`_radial_dots`).
    Tensors of fewer dims, never projected, take the same step kernel; other tensors take :func:`sgdp_foreach`.
    """
    columns = [params, grads, momentum_buffers]
    measured, rest = compiled_rows(columns, eps=eps)
    plain = [i for i in rest if params[i].dim() < 2]
    plain = [plain[i] for i in split(at(columns, plain))[0]]
    others = sorted(set(rest) - set(plain))
    test = dict(delta=delta, wd_ratio=wd_ratio, eps=eps)
    views, sums = measured_views("SGDP", *at([params, grads], measured), **test)
    found = dict(zip(measured, views, strict=True))
    turned = [i for i, index in enumerate(measured) if found[index].view != "none"]
    plain += [measured[i] for i, index in enumerate(measured) if found[index].view == "none"]
    by_grad = 1 + momentum * (1 - dampening) if nesterov else 1 - dampening
    dots = dict(by_grad=by_grad, by_buf=momentum * momentum if nesterov else momentum)
    projected = at(columns, [measured[i] for i in turned])
    radial = _RADIAL.run("SGDP", [projected[0], projected[2], [sums[i][0] for i in turned]], [dots] * len(turned))
    decay = _decay(lr, weight_decay, wd_ratio, momentum)
    scales, norms = scale_columns(
        radial,
        projected[0],
        [found[measured[i]].view for i in turned],
        [lr] * len(turned),
        [decay] * len(turned),
        eps=eps,
    )
    projecting = dict(momentum=momentum, dampening=dampening, lr=lr, nesterov=nesterov)  # θ's scale comes per row
    plain_columns, plain_scalars = at(columns, plain), [dict(projecting, decay=_decay(lr, weight_decay, 1.0, momentum))]
    _RULE.prepare("SGDP", plain_columns, plain_scalars * len(plain))  # both compile before either changes a tensor
    _PROJECTED.run("SGDP", [*projected, scales], [projecting] * len(turned))
    _RULE.run("SGDP", plain_columns, plain_scalars * len(plain))
    for index in plain:
        found.setdefault(index, Projection("none", math.nan, math.nan, 1.0))
    if others:
        hyper = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
        found.update(zip(others, sgdp_foreach(*at(columns, others), **test, **hyper), strict=True))
    norms_by = {measured[i]: (lr, norm) for i, norm in zip(turned, norms, strict=True)}
    return with_radial_norms([found[index] for index in range(len(params))], norms_by)


class SGDP(Checked):
    r"""SGDP: momentum SGD whose step loses its radial component on scale-invariant weights.

    γ, μ, τ, λ, δ are ``lr``, ``momentum``, ``dampening``, ``weight_decay``, ``delta``.

    .. math::
        b ← μ b + (1-τ) g \ (b_0 = 0),\quad d = g + μ b\ (\text{Nesterov})\ \text{else}\ d = b,\\
        \text{if } \max_{row} |\cos(g, θ)| < δ/\sqrt{\text{row length}}:\
        d ← d - \hat θ \textstyle\sum_{row}(\hat θ ⊙ d),\ λ_{eff} = λ\,\text{wd\_ratio}\ (\text{else } λ_{eff} = λ),\\
        θ ← θ\Big(1 - \frac{γλ_{eff}}{1-μ}\Big),\quad θ ← θ - γ d.

    Unlike torch's SGD, the first momentum step is :math:`b = (1-τ)g` (the buffer starts at 0), as in the
    authors' code. The authors project the momentum buffer in place; valley projects only the step, so b stays
    the plain momentum average (one-line deviation, keeps b comparable across optimizers). The projection is
    applied as a scale of θ (:func:`optim._projection.projected_step`), never writing the projected direction.

    Args:
        params: Iterable of parameters or param groups.
        lr: γ (required, as in the official code).
        momentum: μ in [0, 1). Default 0.
        dampening: τ in [0, 1]. Default 0.
        weight_decay: λ (decoupled, scaled by 1/(1-μ)). Default 0.
        nesterov: Nesterov momentum (needs μ > 0). Default False.
        eps: ε of the cosine and the normalisation. Default 1e-8 (official code).
        delta: δ, cosine threshold. Default 0.1 (official code).
        wd_ratio: weight-decay factor on projected tensors. Default 0.1 (official code).
        foreach: the multi-tensor path (:func:`sgdp_foreach`); ``None`` (default) takes it when every parameter
            is on a device with multi-tensor kernels (CUDA), as torch does.
        compiled: the projection test and the step of each float32/float64 tensor as ``torch.compile``'d
            kernels, and for a projected tensor one more for the rows' θ·d (:func:`sgdp_compiled`; the first step
            compiles, see :mod:`optim._compiled`). Default False.

    State per parameter: ``momentum_buffer`` b and of the last step ``projection``, ``max_cosine``,
    ``layer_cosine``, ``radial_norm`` (as :class:`~optim.AdamP`).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
        >>> opt = SGDP([w], lr=0.1, momentum=0.9)
        >>> (w / w.norm()).mul(torch.tensor([[1.0, -1.0]])).sum().backward(); opt.step()
        >>> opt.state[w]["projection"]
        'channel'

    Reference: Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
    Weights", ICLR 2021, Algorithm 1.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {
        "lr": check_nonnegative,
        "momentum": check_unit_interval,
        "dampening": check_closed_unit_interval,
        "weight_decay": check_nonnegative,
        "nesterov": check_bool,
        "eps": check_positive,
        "delta": check_positive,
        "wd_ratio": check_nonnegative,
        "foreach": check_optional_bool,
        "compiled": check_bool,
    }

    def check_relations(self, group: Mapping[str, Any]) -> None:
        """Nesterov momentum needs a momentum."""
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError(f"Invalid nesterov: {group['nesterov']} (Nesterov momentum needs momentum > 0)")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        foreach: bool | None = None,
        compiled: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            eps=eps,
            delta=delta,
            wd_ratio=wd_ratio,
            foreach=foreach,
            compiled=compiled,
        )
        super().__init__(params, defaults)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Any], ...]:
        params, grads, buffers, states = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("SGDP does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)  # b
            params.append(p)
            grads.append(p.grad)
            buffers.append(state["momentum_buffer"])
            states.append(state)
        return params, grads, buffers, states

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = evaluate(closure)
        for group in self.param_groups:
            params, grads, buffers, states = self._init_group(group)
            kernel = pick(sgdp, sgdp_foreach, group, params, sgdp_compiled)
            projections = kernel(
                params,
                grads,
                buffers,
                lr=group["lr"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
                eps=group["eps"],
                delta=group["delta"],
                wd_ratio=group["wd_ratio"],
            )
            for state, projection in zip(states, projections, strict=True):
                projection.record(state)
        return loss
