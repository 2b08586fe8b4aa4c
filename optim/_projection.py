"""The radial projection shared by AdamP and SGDP (Heo et al. 2021, authors' code ``clovaai/AdamP``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


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


def radial_view(param: Tensor, grad: Tensor, *, delta: float, wd_ratio: float, eps: float) -> Projection:
    r"""Decide which view of ``param`` looks scale invariant for ``grad`` (no projection done yet).

    For the views (rows = output channels, then the whole tensor as one row) with
    :math:`c = |\cos(g, θ)|` row-wise (each norm clamped below at ε, as ``F.cosine_similarity``): the first
    view with :math:`\max c < δ/\sqrt{\text{row length}}` is chosen. Tensors with fewer than two dims never are.
    The layer cosine is assembled from the row sums, so it costs no extra pass.
    """
    if param.dim() < 2:
        return Projection("none", math.nan, math.nan, 1.0)
    rows = param.shape[0]
    param_rows = param.reshape(rows, -1)
    grad_rows = grad.reshape(rows, -1)
    dots = torch.linalg.vecdot(grad_rows, param_rows)
    grad_norms = torch.linalg.vector_norm(grad_rows, dim=1)
    param_norms = torch.linalg.vector_norm(param_rows, dim=1)
    channel_cos = dots.abs() / (grad_norms.clamp(min=eps) * param_norms.clamp(min=eps))
    layer_grad = torch.linalg.vector_norm(grad_norms).clamp(min=eps)
    layer_param = torch.linalg.vector_norm(param_norms).clamp(min=eps)
    max_cosine = channel_cos.max().item()
    layer_cosine = (dots.sum().abs() / (layer_grad * layer_param)).item()
    if max_cosine < delta / math.sqrt(param_rows.shape[1]):
        return Projection("channel", max_cosine, layer_cosine, wd_ratio)
    if layer_cosine < delta / math.sqrt(param.numel()):
        return Projection("layer", max_cosine, layer_cosine, wd_ratio)
    return Projection("none", max_cosine, layer_cosine, 1.0)


def remove_radial(param: Tensor, update: Tensor, view: str, *, eps: float) -> float:
    r"""Remove the radial part of ``update`` in place for ``view``; return the norm of the removed part.

    .. math::
        \hat θ = θ/(\lVert θ\rVert_{row} + ε),\qquad u ← u - \hat θ \textstyle\sum_{row}(\hat θ ⊙ u).
    """
    rows = param.shape[0]
    param_rows = param.reshape(rows, -1)
    update_rows = update.view(rows, -1)
    if view == "channel":
        norms = torch.linalg.vector_norm(param_rows, dim=1, keepdim=True)
    else:
        norms = torch.linalg.vector_norm(param_rows).expand(rows, 1)
    unit = param_rows / norms.add(eps)
    if view == "channel":
        coefficients = torch.linalg.vecdot(unit, update_rows).unsqueeze(1)
    else:
        coefficients = torch.linalg.vecdot(unit.flatten(), update_rows.flatten()).expand(rows, 1)
    radial = unit.mul_(coefficients)
    update_rows.sub_(radial)
    return torch.linalg.vector_norm(radial).item()
