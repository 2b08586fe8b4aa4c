"""The radial projection shared by AdamP and SGDP (Heo et al. 2021, authors' code ``clovaai/AdamP``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class Projection(NamedTuple):
    """Outcome of :func:`project_radial` for one tensor.

    Attributes:
        view: ``"none"``, ``"channel"`` or ``"layer"`` — the view whose radial part was removed.
        max_cosine: max over output channels of |cos(g, θ)| (NaN for tensors with fewer than 2 dims).
        layer_cosine: |cos(g, θ)| of the whole tensor (NaN for tensors with fewer than 2 dims).
        wd_ratio: the factor applied to the weight decay (``wd_ratio`` when projected, else 1).
        radial_norm: norm of the removed radial part of the update (0 when not projected).
    """

    view: str
    max_cosine: float
    layer_cosine: float
    wd_ratio: float
    radial_norm: float


def project_radial(
    param: Tensor, grad: Tensor, update: Tensor, *, delta: float, wd_ratio: float, eps: float
) -> Projection:
    r"""Remove the radial part of ``update`` in place where θ looks scale invariant; return what happened.

    For the views (rows = output channels, then the whole tensor as one row), with
    :math:`c = |\cos(g, θ)|` row-wise (each norm clamped below at ε, as ``F.cosine_similarity``):
    if :math:`\max c < δ/\sqrt{\text{row length}}`, :math:`\hat θ = θ/(\lVert θ\rVert_{row} + ε)` and
    :math:`u ← u - \hat θ \sum_{row}(\hat θ ⊙ u)`; the first view that passes wins. Tensors with fewer than
    two dims are never projected. The layer cosine is assembled from the row sums, so no extra pass is needed.
    """
    if param.dim() < 2:
        return Projection("none", math.nan, math.nan, 1.0, 0.0)
    rows = param.shape[0]
    param_rows = param.reshape(rows, -1)
    grad_rows = grad.reshape(rows, -1)
    dots = (grad_rows * param_rows).sum(dim=1)
    grad_sq = grad_rows.square().sum(dim=1)
    param_sq = param_rows.square().sum(dim=1)
    channel_cos = dots.abs() / (grad_sq.sqrt().clamp(min=eps) * param_sq.sqrt().clamp(min=eps))
    layer_cos = dots.sum().abs() / (grad_sq.sum().sqrt().clamp(min=eps) * param_sq.sum().sqrt().clamp(min=eps))
    max_cosine = channel_cos.max().item()
    layer_cosine = layer_cos.item()
    row_length = param_rows.shape[1]
    if max_cosine < delta / math.sqrt(row_length):
        view, norms = "channel", param_sq.sqrt()
    elif layer_cosine < delta / math.sqrt(param.numel()):
        view, norms = "layer", param_sq.sum().sqrt().expand(rows)
    else:
        return Projection("none", max_cosine, layer_cosine, 1.0, 0.0)
    unit = param_rows / norms.add(eps).unsqueeze(1)
    update_rows = update.view(rows, -1)
    if view == "channel":
        coefficients = (unit * update_rows).sum(dim=1, keepdim=True)
    else:
        coefficients = (unit * update_rows).sum().expand(rows, 1)
    radial = unit * coefficients
    update_rows.sub_(radial)
    return Projection(view, max_cosine, layer_cosine, wd_ratio, torch.linalg.vector_norm(radial).item())
