r"""1D and 2D loss surfaces: linear interpolation between two models and slices along directions.

With :math:`\theta_0` the origin and :math:`d_1, d_2` directions, the 2D surface is

.. math::
    f(\alpha, \beta) = L(\theta_0 + \alpha d_1 + \beta d_2), \qquad \alpha \in \texttt{alphas},\ \beta \in
    \texttt{betas},

stored as ``loss[i, j]`` at ``(alphas[i], betas[j])`` (Li et al. 2018, Eq. 1); the 1D interpolation of Goodfellow et
al. is :math:`g(\alpha) = L((1 - \alpha)\theta_a + \alpha\theta_b)`. Every point is evaluated with the model in eval
mode; BatchNorm uses its saved running statistics (``bn="saved"``, default) or statistics re-estimated at every point
on a few training batches (``bn="recompute"``); the policy is recorded in the result's config. Work runs in chunks
(:class:`landscape._grid.SurfaceJob`): batched with ``vmap`` by default, by the plain loop with ``method="loop"``,
resumable through ``cache_dir``. Non-finite losses are stored as they come (NaN or inf) and counted in the config.
With ``distributed=True`` under ``torchrun`` the chunks are dealt round robin over the ranks
(:func:`landscape.distributed.evaluate_job`): each rank persists its finished chunks in ``cache_dir`` (a folder every
rank sees), every rank returns the whole surface, and rank 0 is the one to save it.

References:
    Goodfellow, Vinyals, Saxe. "Qualitatively characterizing neural network optimization problems." ICLR 2015.
    Li, Xu, Taylor, Studer, Goldstein. "Visualizing the Loss Landscape of Neural Nets." NeurIPS 2018.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor, nn

from landscape._data import Data, named_parameters
from landscape._grid import SurfaceJob
from landscape.directions import cosine_similarity, model_direction
from landscape.distributed import evaluate_job, world_size


def make_grid(lo: float, hi: float, n: int, include_zero: bool = True) -> np.ndarray:
    """``n`` evenly spaced coordinates from ``lo`` to ``hi``, with an exact 0 added when asked and in range.

    For a symmetric range and odd ``n`` the middle point is exactly 0; otherwise 0 is inserted in order (``n + 1``
    points) so that the surface contains the origin.

    Example:
        >>> make_grid(-1, 1, 5).tolist(), len(make_grid(-1, 1, 4)), 0.0 in make_grid(-1, 1, 4)
        ([-1.0, -0.5, 0.0, 0.5, 1.0], 5, True)
    """
    if n < 1:
        raise ValueError(f"Invalid n: {n}")
    if not hi >= lo:
        raise ValueError(f"Invalid range: lo={lo} > hi={hi}")
    grid = np.linspace(lo, hi, n)
    if n % 2 == 1 and lo == -hi:
        grid[n // 2] = 0.0
    if include_zero and lo <= 0.0 <= hi and not np.any(grid == 0.0):
        grid = np.sort(np.append(grid, 0.0))
    return grid


@dataclass
class Surface:
    """Loss and accuracy on a 1D line or a 2D grid, with the config that produced them.

    Attributes:
        alphas: coordinates along the first direction.
        betas: coordinates along the second direction (``None`` for a 1D curve).
        loss: ``(len(alphas),)`` or ``(len(alphas), len(betas))``; ``loss[i, j]`` is at ``(alphas[i], betas[j])``.
        accuracy: same shape as ``loss`` (NaN where the outputs are not class scores).
        config: method, BatchNorm policy, cache key, chunks computed/reused, cosine of the directions, versions...
    """

    alphas: np.ndarray
    betas: np.ndarray | None
    loss: np.ndarray
    accuracy: np.ndarray
    config: dict[str, Any] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        """One row per point: ``alpha, loss, accuracy`` (1D) or ``alpha, beta, loss, accuracy`` (2D)."""
        if self.betas is None:
            return pd.DataFrame({"alpha": self.alphas, "loss": self.loss, "accuracy": self.accuracy})
        a, b = np.meshgrid(self.alphas, self.betas, indexing="ij")
        cols = {"alpha": a.ravel(), "beta": b.ravel(), "loss": self.loss.ravel(), "accuracy": self.accuracy.ravel()}
        return pd.DataFrame(cols)

    def at_origin(self) -> float:
        """The loss at coordinates 0 (raises ``ValueError`` if the grid lacks 0)."""
        i = np.flatnonzero(self.alphas == 0.0)
        j = np.flatnonzero(self.betas == 0.0) if self.betas is not None else np.array([0])
        if not len(i) or not len(j):
            raise ValueError("the grid does not contain the origin (use make_grid(..., include_zero=True))")
        return float(self.loss[i[0]] if self.betas is None else self.loss[i[0], j[0]])

    def save(self, path: str | os.PathLike) -> None:
        """Write grids and config to an ``.npz`` file (atomically: temporary file, then ``os.replace``)."""
        tmp = f"{os.fspath(path)}.tmp.npz"
        betas = self.betas if self.betas is not None else np.array([])
        config = json.dumps(self.config)
        np.savez(tmp, alphas=self.alphas, betas=betas, loss=self.loss, accuracy=self.accuracy, config=config)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Surface:
        """Read a surface written by :meth:`save`."""
        with np.load(path) as f:
            betas = f["betas"] if f["loss"].ndim == 2 else None
            return cls(f["alphas"], betas, f["loss"], f["accuracy"], json.loads(str(f["config"])))


def _run(
    job: SurfaceJob, alphas: np.ndarray, betas: np.ndarray | None, config: dict[str, Any], distributed: bool
) -> Surface:
    loss, acc = job.assemble(evaluate_job(job) if distributed else job.evaluate())
    shape = (len(alphas),) if betas is None else (len(alphas), len(betas))
    loss, acc = loss.reshape(shape), acc.reshape(shape)
    config = {
        **config,
        **job.config,
        "evaluator": job.evaluator_name,
        "evaluator_calibration": job.evaluator_calibration,
        "chunks_computed": len(job.computed),
        "chunks_reused": len(job.reused),
        "world_size": world_size() if distributed else 1,
        "n_nonfinite": int((~np.isfinite(loss)).sum()),
    }
    return Surface(alphas, betas, loss, acc, config)


def _coords(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or len(arr) == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty 1D sequence of finite numbers, got {values!r}")
    return arr


def surface_1d(
    model: nn.Module,
    data: Data,
    direction: Mapping[str, Tensor],
    alphas: Sequence[float] | np.ndarray,
    origin: Mapping[str, Tensor] | None = None,
    distributed: bool = False,
    **options: Any,
) -> Surface:
    r"""Loss and accuracy along :math:`\theta_0 + \alpha d` (default origin: the model's parameters).

    Args:
        model: the network (restored exactly afterwards).
        data: a pair ``(inputs, targets)`` or an iterable of pairs.
        direction: tensors by trainable parameter name (e.g. from :func:`landscape.directions.random_direction`).
        alphas: coordinates.
        origin: parameters at :math:`\alpha = 0` (default: the model's trainable parameters).
        distributed: split the chunks over the ranks of the default process group (no effect in one process).
        **options: ``loss_fn, accuracy_fn, method, bn, bn_data, bn_batches, batch_size, chunk_size, cache_dir,
            first_layer_trick, progress`` as in :class:`landscape._grid.SurfaceJob`.
    """
    alphas = _coords(alphas, "alphas")
    job = SurfaceJob(model, data, [direction], alphas[:, None], origin=origin, **options)
    return _run(job, alphas, None, {"kind": "surface_1d"}, distributed)


def interpolate_1d(
    model: nn.Module,
    theta_a: nn.Module | Mapping[str, Tensor],
    theta_b: nn.Module | Mapping[str, Tensor],
    data: Data,
    alphas: Sequence[float] | np.ndarray,
    distributed: bool = False,
    **options: Any,
) -> Surface:
    r"""Loss and accuracy along :math:`(1 - \alpha)\theta_a + \alpha\theta_b` (Goodfellow et al. 2015).

    ``theta_a`` and ``theta_b`` are models or dicts holding every trainable parameter of ``model`` (buffers such as
    BatchNorm statistics come from ``model`` itself, or are re-estimated with ``bn="recompute"``).

    Args:
        model: the network whose architecture evaluates the points (restored exactly afterwards).
        theta_a: the point at :math:`\alpha = 0`.
        theta_b: the point at :math:`\alpha = 1`.
        data: a pair ``(inputs, targets)`` or an iterable of pairs.
        alphas: coordinates (values outside [0, 1] extrapolate).
        distributed: as in :func:`surface_1d`.
        **options: as in :func:`surface_1d`.
    """
    names = named_parameters(model).keys()
    a = {n: t for n, t in _as_params(theta_a).items() if n in names}
    b = {n: t for n, t in _as_params(theta_b).items() if n in names}
    alphas = _coords(alphas, "alphas")
    job = SurfaceJob(model, data, [model_direction(a, b)], alphas[:, None], origin=a, **options)
    return _run(job, alphas, None, {"kind": "interpolate_1d"}, distributed)


def _as_params(source: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(source, nn.Module):
        return {n: p.detach() for n, p in source.named_parameters()}
    return dict(source)


def surface_2d(
    model: nn.Module,
    data: Data,
    directions: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    origin: Mapping[str, Tensor] | None = None,
    distributed: bool = False,
    **options: Any,
) -> Surface:
    r"""Loss and accuracy on the grid :math:`\theta_0 + \alpha d_1 + \beta d_2` (Li et al. 2018, Eq. 1).

    Args:
        model: the network (restored exactly afterwards).
        data: a pair ``(inputs, targets)`` or an iterable of pairs.
        directions: the two directions :math:`(d_1, d_2)`.
        alphas: coordinates along :math:`d_1` (rows of the grid).
        betas: coordinates along :math:`d_2` (columns); need not match ``alphas`` in length.
        origin: parameters at the grid centre (default: the model's trainable parameters).
        distributed: as in :func:`surface_1d`.
        **options: as in :func:`surface_1d`.

    Example:
        >>> import torch
        >>> from landscape.directions import random_direction
        >>> model, data = nn.Linear(2, 2), (torch.ones(4, 2), torch.zeros(4, dtype=torch.long))
        >>> dirs = [random_direction(model, seed=s) for s in (0, 1)]
        >>> s = surface_2d(model, data, dirs, make_grid(-1, 1, 3), make_grid(-1, 1, 5), progress=False)
        >>> s.loss.shape, len(s.frame())
        ((3, 5), 15)
    """
    if len(directions) != 2:
        raise ValueError(f"surface_2d needs two directions, got {len(directions)}")
    alphas, betas = _coords(alphas, "alphas"), _coords(betas, "betas")
    grid_a, grid_b = np.meshgrid(alphas, betas, indexing="ij")
    coords = np.stack([grid_a.ravel(), grid_b.ravel()], axis=1)
    job = SurfaceJob(model, data, directions, coords, origin=origin, **options)
    cosine = cosine_similarity(directions[0], directions[1])
    return _run(job, alphas, betas, {"kind": "surface_2d", "cosine": cosine}, distributed)
