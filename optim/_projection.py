"""The radial projection shared by AdamP and SGDP (Heo et al. 2021, authors' code ``clovaai/AdamP``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from optim._compiled import Rule, at, split
from optim._foreach import buckets


class Projection(NamedTuple):
    """Outcome of the projection test for one tensor, and the removed part.

    Attributes:
        view: ``"none"``, ``"channel"`` or ``"layer"`` — the view whose radial part is removed.
        max_cosine: max over output channels of |cos(g, θ)| (NaN for tensors with fewer than 2 dims).
        layer_cosine: |cos(g, θ)| of the whole tensor (NaN for tensors with fewer than 2 dims).
        wd_ratio: the factor applied to the weight decay (``wd_ratio`` when projected, else 1).
        radial_norm: norm of the radial part removed from the parameter step (0 when not projected).
    """

    view: str
    max_cosine: float
    layer_cosine: float
    wd_ratio: float
    radial_norm: float = 0.0

    def record(self, state: dict) -> None:
        """Keep the outcome in a parameter's optimizer state (``projection``, the cosines, ``radial_norm``)."""
        state["projection"] = self.view
        state["max_cosine"] = self.max_cosine
        state["layer_cosine"] = self.layer_cosine
        state["radial_norm"] = self.radial_norm


@torch.no_grad()
def cosines(params: list[Tensor], grads: list[Tensor], *, eps: float) -> Tensor:
    r"""``[max_cosine, layer_cosine, overflowed]`` of each tensor (at least two dims; one device and dtype) as rows.

    With :math:`c = |\cos(g, θ)|` row-wise (rows = output channels; each norm clamped below at ε, as
    ``F.cosine_similarity``): the max over rows, and c of the whole tensor, assembled from the row sums so that it
    costs no extra pass. Each row's :math:`g·θ` comes from a batched matrix product, which reads the two tensors
    without writing their product out; the per-row results of all tensors are combined at once (zero padding
    changes neither maxima nor sums; a padded row's cosine, 0/ε² and so 0/0 where ε² underflows, is set to 0), in
    float64. Half-precision tensors are measured in float32. No sync.

    ``overflowed`` is 1 where a row's g·θ or norm is not finite in a dtype narrower than float64: finite g and θ
    whose sums overflow it (float32 g = 10¹⁹θ: ‖g_row‖ = inf, and c = g·θ/inf = 0 for a radial g), or non-finite
    ones. Such a tensor is measured again in float64 (:func:`measured_in_float64`), the rare case paying for it.
    """
    if params[0].dtype not in (torch.float32, torch.float64):  # float16 overflows above 65504: work in float32
        params, grads = [p.float() for p in params], [g.float() for g in grads]
    counts = [param.shape[0] for param in params]
    stats = params[0].new_zeros(3, len(params), max(counts))  # row g·θ, ‖g_row‖, ‖θ_row‖
    for index, (param, grad, count) in enumerate(zip(params, grads, counts, strict=True)):
        param_rows, grad_rows = param.reshape(count, 1, -1), grad.reshape(count, 1, -1)
        torch.bmm(grad_rows, param_rows.transpose(1, 2), out=stats[0, index, :count].view(count, 1, 1))
        torch.linalg.vector_norm(grad_rows, dim=2, out=stats[1, index, :count].view(count, 1))
        torch.linalg.vector_norm(param_rows, dim=2, out=stats[2, index, :count].view(count, 1))
    # combined in float64 (a float32 tensor's sums of rows can overflow), at ε as the dtype holds it (0 below its
    # range: a zero row's cosine is then 0/0, not projected, as the step's θ/(‖θ‖ + ε) would be 0/0)
    floor = torch.tensor(eps, dtype=stats.dtype).item()
    dots, grad_norms, param_norms = stats.to(torch.float64)
    channel_cos = dots.abs() / (grad_norms.clamp(min=floor) * param_norms.clamp(min=floor))
    rows = torch.arange(stats.shape[2], device=stats.device)
    channel_cos = channel_cos.where(rows < torch.tensor(counts, device=stats.device)[:, None], 0.0)  # padding: 0/0
    dot_sums = dots.sum(dim=1)
    layer_grad = torch.linalg.vector_norm(grad_norms, dim=1).clamp(min=floor)
    layer_param = torch.linalg.vector_norm(param_norms, dim=1).clamp(min=floor)
    # not finite where a row's sum was not (float64 adds up those of float32 without overflow)
    overflowed = (dot_sums + layer_grad + layer_param).isfinite().logical_not_() & (stats.dtype != torch.float64)
    channel_and_layer = [channel_cos.amax(dim=1), dot_sums.abs() / (layer_grad * layer_param)]
    return torch.stack([*channel_and_layer, overflowed.to(torch.float64)], dim=1)


def measured_in_float64(
    params: list[Tensor], grads: list[Tensor], indices: list[int], *, eps: float
) -> dict[int, tuple[float, float]]:
    """``(max_cosine, layer_cosine)`` of the tensors at ``indices`` by :func:`cosines` of float64 copies.

    For those whose sums overflowed their dtype; one tensor at a time (they may be on several devices), each
    read back on its own.
    """
    found = {}
    for index in indices:
        max_cosine, layer_cosine, _ = cosines([params[index].double()], [grads[index].double()], eps=eps)[0].tolist()
        found[index] = (max_cosine, layer_cosine)
    return found


def decide(param: Tensor, max_cosine: float, layer_cosine: float, *, delta: float, wd_ratio: float) -> Projection:
    r"""The first view with :math:`\max c < δ/\sqrt{\text{row length}}`: channels, then the whole tensor, else none."""
    if max_cosine < delta / math.sqrt(param[0].numel()):
        return Projection("channel", max_cosine, layer_cosine, wd_ratio)
    if layer_cosine < delta / math.sqrt(param.numel()):
        return Projection("layer", max_cosine, layer_cosine, wd_ratio)
    return Projection("none", max_cosine, layer_cosine, 1.0)


def radial_views(
    params: list[Tensor], grads: list[Tensor], *, delta: float, wd_ratio: float, eps: float
) -> list[Projection]:
    """Decide which view of each parameter looks scale invariant for its gradient (no projection done yet).

    Tensors with fewer than two dims or no elements are never projected; the cosines of all others are computed per
    device and dtype (:func:`cosines`) and read back to the host in one transfer (see :func:`decide`); those whose
    sums overflowed their dtype are measured again in float64.
    """
    measured = [index for index, param in enumerate(params) if param.dim() >= 2 and param.numel() > 0]
    parts = buckets([[params[i] for i in measured], [grads[i] for i in measured], measured], cpu_parts=False)
    found: dict[int, tuple[float, float]] = {}
    if parts:
        values = [cosines(params_, grads_, eps=eps) for _, (params_, grads_, _) in parts]
        device = values[0].device
        read = torch.cat([v.to(device, torch.float64) for v in values]).tolist()
        rows = dict(zip([i for _, (_, _, indices) in parts for i in indices], read, strict=True))
        found = {index: (max_cosine, layer_cosine) for index, (max_cosine, layer_cosine, _) in rows.items()}
        found.update(measured_in_float64(params, grads, [index for index, row in rows.items() if row[2]], eps=eps))
    return [
        decide(param, *found[index], delta=delta, wd_ratio=wd_ratio)
        if index in found
        else Projection("none", math.nan, math.nan, 1.0)
        for index, param in enumerate(params)
    ]


def radial_view(param: Tensor, grad: Tensor, *, delta: float, wd_ratio: float, eps: float) -> Projection:
    """:func:`radial_views` of one tensor."""
    return radial_views([param], [grad], delta=delta, wd_ratio=wd_ratio, eps=eps)[0]


def projected_step(param: Tensor, direction: Tensor, view: str, *, step: float, decay: float, eps: float) -> Tensor:
    r"""The step :math:`θ ← aθ - γ(d - \hat θ c)` as :math:`θ ← θ(a + γk) - γd` (:func:`radial_factor`), in place.

    ``step`` is γ, ``decay`` is a. Returns :math:`\lVert \hat θ c\rVert` (0-dim). The radial parts of γkθ and γd
    cancel only if both are added at the precision of the result: a float16/bfloat16 parameter is updated in
    float32 and rounded once (in its own precision, a + γk rounds to 1 whenever γk < 2⁻⁸, and θ·d can overflow).
    """
    factor, norm = radial_factor(param, direction, view, eps=eps)
    scale = factor.mul_(step).add_(decay)
    if param.dtype in (torch.float32, torch.float64):
        param.mul_(scale).add_(direction, alpha=-step)
    else:
        param.copy_(param.float().mul_(scale).add_(direction.float(), alpha=-step))
    return norm


def radial_factor(param: Tensor, direction: Tensor, view: str, *, eps: float) -> tuple[Tensor, Tensor]:
    r"""The removal of a direction's radial part, folded into the parameter step.

    With :math:`\hat θ = θ/(\lVert θ\rVert + ε)` per row (``view`` ``"channel"``) or of the whole tensor
    (``"layer"``) and :math:`c = \hat θ·d`, a step :math:`θ ← aθ - γ(d - \hat θ c)` is

    .. math::
        θ ← θ\,(a + γk) - γd,\qquad k = c/(\lVert θ\rVert + ε),

    so the projected direction is never written: one read of θ and d for the row dots, one of θ for the row norms,
    where removing the radial part from d takes about ten passes. Returns k (shaped to scale θ: one value per
    row, the same on every row for ``"layer"``) and :math:`\lVert \hat θ c\rVert`, the norm of the removed part,
    from the per-row values alone. Half-precision tensors are measured in float32 (θ·d overflows float16 long
    before θ̂·d does).
    """
    if param.dtype not in (torch.float32, torch.float64):
        param, direction = param.float(), direction.float()
    rows = param.shape[0]
    param_rows, direction_rows = param.reshape(rows, 1, -1), direction.reshape(rows, 1, -1)
    dots = torch.bmm(direction_rows, param_rows.transpose(1, 2)).view(1, rows)  # no product written out
    row_norms = torch.linalg.vector_norm(param_rows, dim=(1, 2)).view(1, rows)
    factors, norms = _radial_parts(dots, row_norms, torch.tensor([[view == "channel"]], device=dots.device), eps=eps)
    return factors.view(rows, *[1] * (param.dim() - 1)), norms[0]


def _radial_parts(dots: Tensor, row_norms: Tensor, channel: Tensor, *, eps: float) -> tuple[Tensor, Tensor]:
    r""":func:`radial_factor`'s k per row and :math:`\lVert \hat θ c\rVert` per tensor, for a table of tensors.

    ``dots`` and ``row_norms`` hold each row's θ·d and :math:`\lVert θ_{row}\rVert`, one tensor per table row
    (zero-padded); ``channel`` (a column) says which tensors take the channel view, the others the layer view
    (one c for the whole tensor, k the same on every row). Padded rows count nowhere.
    """
    denominators = torch.where(channel, row_norms, torch.linalg.vector_norm(row_norms, dim=1, keepdim=True)) + eps
    coefficients = torch.where(channel, dots, dots.sum(1, keepdim=True)) / denominators
    removed = (coefficients * row_norms / denominators).where(row_norms != 0, 0.0)  # 0 for a zero or padded row
    return coefficients / denominators, torch.linalg.vector_norm(removed, dim=1)


def _row_sums(param: Tensor, grad: Tensor) -> Tensor:
    """``[g·θ, g·g, θ·θ]`` of each row of the rule's view, for the compiled path: 3 x rows, one pass over θ and g.

    A row of the view is a piece of an output channel's row (:data:`optim._compiled.PIECE`).
    """
    return torch.stack([(grad * param).sum(1), (grad * grad).sum(1), (param * param).sum(1)])


_ROW_SUMS = Rule(_row_sums, writes=(), pointwise=False)


def _by_row(sums: Tensor, rows: int) -> Tensor:
    """A compiled rule's sums per row piece (k x pieces) added up per output channel's row: k x ``rows``."""
    return sums if sums.shape[1] == rows else sums.view(len(sums), rows, -1).sum(2)


def _summed_cosines(sums: list[Tensor], counts: list[int], *, eps: float) -> list[tuple[float, float, float]]:
    r"""``(max_cosine, layer_cosine, overflowed)`` of each tensor from its row pieces' sums (:func:`_row_sums`).

    The same cosines as :func:`cosines`, in float64, from squares: a row's
    :math:`c^2 = \frac{g·θ}{\max(g·g, ε^2)} \cdot \frac{g·θ}{\max(θ·θ, ε^2)}`, the whole tensor's from the summed
    rows, square roots taken of the two values per tensor only (a CPU square root of a few thousand values took
    50 µs, an element-wise op on them 4 µs). The two quotients stay finite where :math:`(g·θ)^2` overflowed (for
    float64 tensors with :math:`|g||θ|` above about 1e154: the cosine was inf/inf), and a zero row's is 0. The rows
    of all tensors are joined into one table, and each tensor's maximum and sums are segment reductions over it, so
    each step of this is one op for all of them (a zero-padded table took 0.28 ms for ResNet-18: its fill ran on
    every thread, and each tensor was copied in by an op of its own). ``overflowed`` as in :func:`cosines`: 1 where
    a float32 tensor's sums are not finite (whose float64 total then is not either).
    """
    rows = [_by_row(row_sums, count) for row_sums, count in zip(sums, counts, strict=True)]
    table = torch.cat(rows, dim=1).to(torch.float64)  # [g·θ, g·g, θ·θ] x rows
    lengths = torch.tensor(counts, device=table.device)
    layer_sums = torch.segment_reduce(table, "sum", lengths=lengths.expand(3, -1), axis=1)
    squares = []
    for dots, grad_squares, param_squares in (table, layer_sums):
        squares.append(dots / grad_squares.clamp(min=eps * eps) * (dots / param_squares.clamp(min=eps * eps)))
    channel, layer = squares
    # float64's squares keep clear of overflow (above): nothing to measure again there
    overflowed = layer_sums.sum(0).isfinite().logical_not_() & (sums[0].dtype != torch.float64)
    channel = torch.segment_reduce(channel, "max", lengths=lengths)
    found = torch.stack([channel, layer, overflowed.to(torch.float64)], dim=1).tolist()
    return [(math.sqrt(channel_square), math.sqrt(layer_square), flag) for channel_square, layer_square, flag in found]


def compiled_radial_views(
    owner: str, params: list[Tensor], grads: list[Tensor], *, delta: float, wd_ratio: float, eps: float
) -> list[Projection]:
    """:func:`radial_views` with the row sums of each float32/float64 tensor from one compiled kernel.

    The kernel reads θ and g once for the row dots and both squared row norms (:func:`cosines` reads them three
    times; :func:`measured_views`). Other tensors (:func:`compiled_rows`) take :func:`radial_views`.
    """
    chosen, others = compiled_rows([params, grads], eps=eps)
    test = dict(delta=delta, wd_ratio=wd_ratio, eps=eps)
    found = dict(zip(others, radial_views(*at([params, grads], others), **test), strict=True))
    found.update(zip(chosen, measured_views(owner, *at([params, grads], chosen), **test)[0], strict=True))
    return [found[index] for index in range(len(params))]


def measured_views(
    owner: str, params: list[Tensor], grads: list[Tensor], *, delta: float, wd_ratio: float, eps: float
) -> tuple[list[Projection], list[Tensor]]:
    """:func:`radial_views` of tensors that take the compiled rules over rows (:func:`compiled_rows`), and the sums.

    The sums are each tensor's ``[g·θ, g·g, θ·θ]`` per row piece (:func:`_row_sums`, one compiled kernel a
    tensor), from which :func:`summed_views` decides.
    """
    sums = _ROW_SUMS.run(owner, [params, grads], [{}] * len(params))
    return summed_views(params, grads, sums, delta=delta, wd_ratio=wd_ratio, eps=eps), sums


def summed_views(
    params: list[Tensor], grads: list[Tensor], sums: list[Tensor], *, delta: float, wd_ratio: float, eps: float
) -> list[Projection]:
    """:func:`radial_views` of ``params`` from their row pieces' ``[g·θ, g·g, θ·θ]`` (:func:`_row_sums`).

    The cosines of all tensors of a device and dtype are made at once and read back in one transfer
    (:func:`_summed_cosines`); those whose sums overflowed float32 are measured again as the per-tensor path does
    (:func:`measured_in_float64`).
    """
    found: dict[int, tuple[float, float]] = {}
    overflowed = []
    rows = [param.shape[0] for param in params]
    for _, (sums_, counts, indices) in buckets([sums, rows, range(len(params))], cpu_parts=False):
        measured = _summed_cosines(sums_, counts, eps=eps)
        for index, (max_cosine, layer_cosine, flag) in zip(indices, measured, strict=True):
            found[index] = (max_cosine, layer_cosine)
            if flag:
                overflowed.append(index)
    found.update(measured_in_float64(params, grads, overflowed, eps=eps))
    return [decide(param, *found[index], delta=delta, wd_ratio=wd_ratio) for index, param in enumerate(params)]


def compiled_rows(columns: list[list[Tensor]], *, eps: float) -> tuple[list[int], list[int]]:
    """The rows of parallel ``columns`` (parameters first) that take the compiled rules over rows, and the others.

    As :func:`optim._compiled.split` with ``pointwise=False``; a tensor also needs ε² to be a normal number in its
    dtype (ε ≥ 1.1e-19 in float32, 1.5e-154 in float64). That keeps clear of where the per-tensor path's clamp at ε,
    as the dtype holds it, rounds ε (to a subnormal, or to 0: a zero row's cosine is then 0/0 and nothing is
    projected) and of where its products of clamped norms underflow float64, which the compiled path's ε² would not
    reproduce: such a tensor takes the multi-tensor path.
    """
    compiled, others = split(columns, pointwise=False)
    chosen = [index for index in compiled if eps * eps >= torch.finfo(columns[0][index].dtype).tiny]
    return chosen, others + [index for index in compiled if index not in chosen]


def radial_sums(param: Tensor, direction: Tensor) -> Tensor:
    """``[θ·θ, θ·d]`` of each row of a rule's view (a piece of an output channel's row): 2 x rows.

    What a compiled rule that measures a projected step returns (:func:`scale_columns` turns it into θ's scale).
    """
    return torch.stack([(param * param).sum(1), (direction * param).sum(1)])


def scale_columns(
    sums: list[Tensor], params: list[Tensor], views: list[str], steps: list[float], decays: list[float], *, eps: float
) -> tuple[list[Tensor], list[Tensor]]:
    r"""For each projected tensor, from its row pieces' ``[θ·θ, θ·d]`` (:func:`radial_sums`): θ's scale a + γk.

    As :func:`projected_step` (γ = ``steps``, a = ``decays``, k and :math:`\lVert \hat θ c\rVert` as
    :func:`radial_factor`): one value per row of the rule's view, as a column (a row's pieces share it), and the
    norm of the removed part (0-dim). The compiled step is then :math:`θ ← θ\,(a + γk) - γd`, one pass over θ and
    what d is made of. The rows of all tensors of a device and dtype are padded into one table, so each step of
    this is one op for all of them (:func:`_radial_parts`).
    """
    columns: dict[int, Tensor] = {}
    norms: dict[int, Tensor] = {}
    lists = [sums, params, views, steps, decays, range(len(sums))]
    for _, (sums_, params_, views_, steps_, decays_, indices) in buckets(lists, cpu_parts=False):
        counts = [param.shape[0] for param in params_]
        stats = sums_[0].new_zeros(2, len(counts), max(counts))
        for index, (row_sums, count) in enumerate(zip(sums_, counts, strict=True)):
            stats[:, index, :count] = _by_row(row_sums[-2:], count)
        squares, dots = stats
        channel = torch.tensor([view == "channel" for view in views_], device=stats.device)[:, None]
        factors, removed = _radial_parts(dots, squares.sqrt(), channel, eps=eps)
        table = factors * torch.tensor(steps_, device=stats.device, dtype=stats.dtype)[:, None]
        table += torch.tensor(decays_, device=stats.device, dtype=stats.dtype)[:, None]
        for position, (index, row_sums, count) in enumerate(zip(indices, sums_, counts, strict=True)):
            columns[index] = table[position, :count, None].expand(-1, row_sums.shape[1] // count).reshape(-1, 1)
            norms[index] = removed[position]
    order = range(len(sums))
    return [columns[i] for i in order], [norms[i] for i in order]


def with_radial_norms(projections: list[Projection], radial: dict[int, tuple[float, Tensor]]) -> list[Projection]:
    """``projections`` with ``radial_norm = scale * norm`` at each index of ``radial`` (norms read back at once)."""
    if not radial:
        return projections
    device = next(iter(radial.values()))[1].device
    norms = torch.stack([norm.to(device, torch.float64) for _, norm in radial.values()]).tolist()
    filled = list(projections)
    for (index, (scale, _)), norm in zip(radial.items(), norms, strict=True):
        filled[index] = filled[index]._replace(radial_norm=scale * norm)
    return filled
