r"""Directions in parameter space for 1D/2D surfaces: random, normalised, between models, PCA, Hessian eigenvectors.

A direction is a dict ``{parameter name: tensor}`` over the model's trainable parameters (``named_parameters``), the
same shapes as the parameters. Filter normalisation (Li et al. 2018, Section 4) rescales each filter :math:`d_{i,j}`
(the :math:`j`-th slice along dimension 0 of layer :math:`i`) of a Gaussian direction to the norm of the matching
filter of :math:`\theta`:

.. math::
    d_{i,j} \leftarrow \frac{d_{i,j}}{\lVert d_{i,j} \rVert + 10^{-10}} \lVert \theta_{i,j} \rVert ,

so that a surface no longer depends on the scale of filters followed by a normalisation layer. Layer normalisation
does the same per parameter tensor. Tensors with at most one dimension (biases, BatchNorm affine parameters) are set
to zero by default (Li et al.'s ``ignore='biasbn'``), or kept as drawn, or set to :math:`\theta` (what the official
code does when they are not ignored).

References:
    Li, Xu, Taylor, Studer, Goldstein. "Visualizing the Loss Landscape of Neural Nets." NeurIPS 2018;
    official code github.com/tomgoldstein/loss-landscape, ``net_plotter.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from landscape._data import named_parameters
from landscape.curvature import EigenResult

Direction = dict[str, Tensor]
NORMALIZATIONS = ("filter", "layer", None)
BIAS_BN = ("zero", "keep", "weights")


def _params(source: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(source, nn.Module):
        return {n: p.detach() for n, p in named_parameters(source).items()}
    if isinstance(source, Mapping):
        return {n: t.detach() for n, t in source.items()}
    raise TypeError(f"expected an nn.Module or a mapping of tensors, got {type(source).__name__}")


def normalize_direction(
    direction: Mapping[str, Tensor],
    theta: nn.Module | Mapping[str, Tensor],
    normalization: str | None = "filter",
    bias_bn: str = "zero",
) -> Direction:
    """Rescale ``direction`` filter-wise or layer-wise to the norms of ``theta`` (a new dict; inputs untouched).

    Args:
        direction: tensors by parameter name.
        theta: the model (its trainable parameters) or parameters by name, with every name of ``direction``.
        normalization: ``"filter"`` (Li et al. 2018), ``"layer"`` (one norm per tensor) or ``None`` (unchanged).
        bias_bn: what becomes of tensors with at most one dimension: ``"zero"`` (default, Li et al.'s
            ``ignore='biasbn'``), ``"keep"`` (left as they are, not rescaled) or ``"weights"`` (set to ``theta``, as
            the official code does when they are not ignored).

    Raises:
        ValueError: for an unknown option, or a name or shape that ``theta`` lacks.

    Example:
        >>> d = normalize_direction({"w": torch.tensor([[3.0, 4.0]])}, {"w": torch.tensor([[0.0, 2.0]])})
        >>> d["w"].tolist()
        [[1.2000000476837158, 1.600000023841858]]
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"Invalid normalization: {normalization!r} (expected one of {NORMALIZATIONS})")
    if bias_bn not in BIAS_BN:
        raise ValueError(f"Invalid bias_bn: {bias_bn!r} (expected one of {BIAS_BN})")
    params = _params(theta)
    out = {}
    for name, d in direction.items():
        if name not in params:
            raise ValueError(f"direction has a tensor {name!r} that theta lacks")
        w = params[name].to(d.device, d.dtype)
        if w.shape != d.shape:
            raise ValueError(f"shape of {name!r} differs: direction {tuple(d.shape)}, theta {tuple(w.shape)}")
        if normalization is not None and d.dim() <= 1:
            out[name] = {"zero": torch.zeros_like(d), "keep": d.clone(), "weights": w.clone()}[bias_bn]
        elif normalization == "filter":
            dims = tuple(range(1, d.dim()))
            norm = torch.linalg.vector_norm
            scale = norm(w, dim=dims, keepdim=True) / (norm(d, dim=dims, keepdim=True) + 1e-10)
            out[name] = d * scale
        elif normalization == "layer":
            out[name] = d * (w.norm() / (d.norm() + 1e-10))
        else:
            out[name] = d.clone()
    return out


def random_direction(
    model: nn.Module | Mapping[str, Tensor],
    normalization: str | None = "filter",
    bias_bn: str = "zero",
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Direction:
    """A Gaussian direction over the trainable parameters, normalised as :func:`normalize_direction` describes.

    Draws are made on the CPU in the parameters' dtype, so one seed gives the same direction on every device.

    Args:
        model: the model, or its parameters by name.
        normalization: ``"filter"`` (default), ``"layer"`` or ``None``.
        bias_bn: ``"zero"`` (default), ``"keep"`` or ``"weights"`` for tensors with at most one dimension.
        seed: seeds a fresh generator (ignored when ``generator`` is given).
        generator: a CPU generator to draw from. With neither, torch's global CPU generator is drawn from (as
            ``torch.randn`` does: set by ``torch.manual_seed``, advanced by each draw).

    Example:
        >>> d = random_direction(nn.Linear(3, 2), seed=0)
        >>> sorted(d), d["bias"].abs().sum().item()
        (['bias', 'weight'], 0.0)
    """
    params = _params(model)
    integer = [name for name, p in params.items() if not (p.is_floating_point() or p.is_complex())]
    if integer:
        raise ValueError(
            f"random_direction: {integer[0]!r} is a {params[integer[0]].dtype} tensor, not a parameter; a state_dict "
            "holds buffers too: pass the model or dict(model.named_parameters())"
        )
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(seed)
    raw = {n: torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for n, p in params.items()}
    return normalize_direction(raw, params, normalization, bias_bn)


def model_direction(theta_a: nn.Module | Mapping[str, Tensor], theta_b: nn.Module | Mapping[str, Tensor]) -> Direction:
    r"""The direction :math:`\theta_b - \theta_a` from one model (or parameter dict) to another.

    Example:
        >>> model_direction({"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])})["w"].item()
        2.0
    """
    a, b = _params(theta_a), _params(theta_b)
    if a.keys() != b.keys():
        raise ValueError(f"the two models differ in parameter names: {sorted(a.keys() ^ b.keys())}")
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(f"shape of {name!r} differs: {tuple(a[name].shape)} vs {tuple(b[name].shape)}")
    return {name: b[name] - a[name].to(b[name].device, b[name].dtype) for name in a}


def cosine_similarity(d1: Mapping[str, Tensor], d2: Mapping[str, Tensor]) -> float:
    """Cosine of the angle between two directions, over the names they share (NaN if either is zero).

    Example:
        >>> cosine_similarity({"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([1.0, 1.0])})
        0.7071067811865475
    """
    names = [n for n in d1 if n in d2]
    if not names:
        raise ValueError("the two directions share no parameter name")
    a = torch.cat([d1[n].detach().reshape(-1).double().cpu() for n in names])
    b = torch.cat([d2[n].detach().reshape(-1).double().cpu() for n in names])
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else float("nan")


@dataclass
class PCADirections:
    """Top principal directions of a trajectory, with the explained variance and the trajectory's coordinates.

    Attributes:
        directions: the unit-norm principal directions, as direction dicts.
        explained_variance_ratio: fraction of the variance of the differences carried by each direction.
        coords: ``(T, k)`` coordinates of every trajectory point in the plane through ``theta_final``.
        singular_values: the matching singular values of the difference matrix.
    """

    directions: list[Direction]
    explained_variance_ratio: np.ndarray
    coords: np.ndarray
    singular_values: np.ndarray

    def __repr__(self) -> str:
        ratios = ", ".join(f"{r:.3g}" for r in self.explained_variance_ratio)
        return (
            f"PCADirections({len(self.directions)} directions over {len(self.directions[0]) if self.directions else 0}"
            f" tensors, explained variance [{ratios}], {len(self.coords)} trajectory points)"
        )

    def frame(self) -> pd.DataFrame:
        """The trajectory as a tidy frame: ``index, x, y`` (one row per saved point)."""
        cols = {"index": np.arange(len(self.coords))}
        for k, name in enumerate("xyzw"[: self.coords.shape[1]]):
            cols[name] = self.coords[:, k]
        return pd.DataFrame(cols)


def pca_directions(
    trajectory: Sequence[nn.Module | Mapping[str, Tensor]],
    final: nn.Module | Mapping[str, Tensor] | None = None,
    n_components: int = 2,
    names: Sequence[str] | None = None,
    center: bool = True,
) -> PCADirections:
    r"""PCA directions of a saved trajectory (Li et al. 2018, Section 7).

    With :math:`\theta_n` the final point, the rows of :math:`M` are :math:`\theta_i - \theta_n`; the directions are
    the top right singular vectors of :math:`M` (centred column-wise when ``center``, as the official code does
    through ``sklearn.decomposition.PCA``), and the coordinates of point :math:`i` are
    :math:`(\langle \theta_i - \theta_n, u_1\rangle, \langle \theta_i - \theta_n, u_2\rangle)`, so the final point
    sits at the origin of a surface drawn around it along the same (unit-norm) directions.

    Args:
        trajectory: parameter dicts (``named_parameters``-style or state dicts) or models, oldest first.
        final: the point the plane goes through (default: the last of ``trajectory``).
        n_components: number of directions (default 2).
        names: the tensors to use (default: every floating-point tensor of ``final``).
        center: subtract the mean difference before the decomposition (default True, as Li et al.'s code).

    Example:
        >>> traj = [{"w": torch.tensor([float(t), 0.0, 0.1 * t * t])} for t in range(5)]
        >>> pca = pca_directions(traj)
        >>> round(float(pca.explained_variance_ratio.sum()), 6), pca.coords.shape
        (1.0, (5, 2))
    """
    if len(trajectory) < 2:
        raise ValueError(f"trajectory needs at least 2 points, got {len(trajectory)}")
    if n_components < 1:
        raise ValueError(f"Invalid n_components: {n_components}")
    points = [_params(p) for p in trajectory]
    end = _params(final) if final is not None else points[-1]
    if names is None:
        names = [n for n, t in end.items() if t.is_floating_point()]
    for i, p in enumerate(points):
        missing = [n for n in names if n not in p]
        if missing:
            raise ValueError(f"trajectory point {i} lacks {missing}")
    theta_n = torch.cat([end[n].reshape(-1).double().cpu() for n in names])
    diffs = torch.stack([torch.cat([p[n].reshape(-1).double().cpu() for n in names]) - theta_n for p in points])
    matrix = diffs - diffs.mean(dim=0) if center else diffs
    _, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    k = min(n_components, len(s))
    total = float((s**2).sum())
    ratio = (s[:k] ** 2 / total).numpy() if total > 0 else np.full(k, np.nan)
    directions = []
    for row in vh[:k]:
        d, start = {}, 0
        for n in names:
            t = end[n]
            d[n] = row[start : start + t.numel()].view(t.shape).to(t.device, t.dtype)
            start += t.numel()
        directions.append(d)
    return PCADirections(directions, ratio, (diffs @ vh[:k].T).numpy(), s[:k].numpy())


def eigen_directions(result: EigenResult, model: nn.Module) -> list[Direction]:
    r"""The eigenvectors of a curvature result as direction dicts, one per eigenvalue (largest first).

    A curvature operator's flat vectors are the model's trainable parameters concatenated in registration order;
    column :math:`i` of ``result.eigenvectors`` is cut into tensors shaped and named like them. The eigenvectors have
    unit norm, so a surface along them is in absolute parameter units (no filter normalisation: the curvature along
    :math:`v_i` is :math:`\lambda_i`, and :math:`L(\theta + \alpha v_i) \approx L(\theta) + \tfrac12 \lambda_i
    \alpha^2` at a minimum).

    Args:
        result: from :func:`landscape.curvature.lanczos_eigenpairs` (or power iteration) on ``model``'s operator.
        model: the network the operator was built on.

    Raises:
        ValueError: if the vectors' length differs from the number of trainable parameters.

    Example:
        >>> import numpy as np
        >>> model = nn.Linear(2, 1)
        >>> r = EigenResult(np.array([2.0]), np.array([[0.6], [0.8], [0.0]]), np.zeros(1), np.ones(1, bool), 1, "x")
        >>> d = eigen_directions(r, model)[0]
        >>> d["weight"].tolist(), d["bias"].tolist()
        ([[0.6000000238418579, 0.800000011920929]], [0.0])
    """
    params = named_parameters(model)
    vectors = np.asarray(result.eigenvectors)
    size = sum(p.numel() for p in params.values())
    if vectors.ndim != 2 or vectors.shape[0] != size:
        raise ValueError(f"eigenvectors have shape {vectors.shape}; the model has {size} trainable parameters")
    directions = []
    for column in vectors.T:
        d, start = {}, 0
        for name, p in params.items():
            piece = torch.as_tensor(column[start : start + p.numel()].copy())
            d[name] = piece.view(p.shape).to(p.device, p.dtype)
            start += p.numel()
        directions.append(d)
    return directions
