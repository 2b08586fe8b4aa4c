r"""1D and 2D loss surfaces: linear interpolation between two models and slices along directions.

With :math:`\theta_0` the origin and :math:`d_1, d_2` directions, the 2D surface is

.. math::
    f(\alpha, \beta) = L(\theta_0 + \alpha d_1 + \beta d_2), \qquad \alpha \in \texttt{alphas},\ \beta \in
    \texttt{betas},

stored as ``loss[i, j]`` at ``(alphas[i], betas[j])`` (Li et al. 2018, Eq. 1); the 1D interpolation of Goodfellow et
al. is :math:`g(\alpha) = L((1 - \alpha)\theta_a + \alpha\theta_b)`. Every point is evaluated with the model in eval
mode unless the caller asks for ``mode="train"`` (batch statistics, dropout); BatchNorm uses its saved running
statistics (``bn="saved"``, default for slices around one model) or statistics re-estimated at every point on a few
training batches (``bn="recompute"``, default for the interpolation between two models that have BatchNorm layers,
whose running statistics belong to neither end); mode and policy are recorded in the result's config. The accuracy
at a point whose loss is NaN is NaN. Work runs in chunks
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

import hashlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor, nn

from landscape._data import Data, named_parameters
from landscape._evaluation import batchnorm_modules
from landscape._grid import SurfaceJob
from landscape.directions import cosine_similarity, model_direction
from landscape.distributed import evaluate_job, world_size
from landscape.files import atomic_write


def make_grid(lo: float, hi: float, n: int, include_zero: bool = True, include: Sequence[float] = ()) -> np.ndarray:
    """``n`` evenly spaced coordinates from ``lo`` to ``hi`` that contain 0 and every value of ``include`` exactly.

    A point of the even spacing within ``1e-9`` of the range of a wanted value is set to it exactly; a wanted value
    in range but between points is inserted in order (one point more each). Interpolations pass ``include=(0, 1)``
    so that both checkpoints are on the curve for any ``n``.

    Example:
        >>> make_grid(-1, 1, 5).tolist(), len(make_grid(-1, 1, 4)), 0.0 in make_grid(-1, 1, 4)
        ([-1.0, -0.5, 0.0, 0.5, 1.0], 5, True)
        >>> g = make_grid(-0.5, 1.5, 11, include=(0.0, 1.0))
        >>> len(g), 0.0 in g, 1.0 in g, float(g[0]), float(g[-1])
        (13, True, True, -0.5, 1.5)
    """
    if n < 1:
        raise ValueError(f"Invalid n: {n}")
    if not hi >= lo:
        raise ValueError(f"Invalid range: lo={lo} > hi={hi}")
    grid = np.linspace(lo, hi, n)
    wanted = [0.0] if include_zero else []
    wanted += [float(v) for v in include]
    tol = 1e-9 * max(hi - lo, 1.0)
    for value in wanted:
        if not lo <= value <= hi or np.any(grid == value):
            continue
        near = np.flatnonzero(np.abs(grid - value) <= tol)
        if len(near):
            grid[near[0]] = value
        else:
            grid = np.sort(np.append(grid, value))
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

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, config: dict[str, Any] | None = None) -> Surface:
        """The surface of a tidy frame as :meth:`frame` writes it (``alpha[, beta], loss, accuracy``).

        Raises:
            ValueError: if a 2D frame does not fill its grid.

        Example:
            >>> s = Surface(np.array([0.0, 1.0]), np.array([-1.0, 1.0]), np.eye(2), np.ones((2, 2)))
            >>> Surface.from_frame(s.frame()).loss.tolist()
            [[1.0, 0.0], [0.0, 1.0]]
        """
        if "beta" not in frame.columns:
            rows = frame.sort_values("alpha")
            return cls(rows["alpha"].to_numpy(float), None, rows["loss"].to_numpy(float),
                       rows["accuracy"].to_numpy(float), dict(config or {}))  # fmt: skip
        alphas, betas = np.unique(frame["alpha"].to_numpy(float)), np.unique(frame["beta"].to_numpy(float))
        if len(frame) != len(alphas) * len(betas):
            raise ValueError(f"{len(frame)} rows do not fill a {len(alphas)}x{len(betas)} grid")
        grids = []
        for column in ("loss", "accuracy"):
            table = frame.pivot_table(index="alpha", columns="beta", values=column, aggfunc="first", dropna=False)
            grids.append(table.reindex(index=alphas, columns=betas).to_numpy(float))
        return cls(alphas, betas, grids[0], grids[1], dict(config or {}))

    def __repr__(self) -> str:
        grid = f"{len(self.alphas)}" if self.betas is None else f"{len(self.alphas)}x{len(self.betas)}"
        finite = self.loss[np.isfinite(self.loss)]
        span = f"loss {finite.min():.4g}..{finite.max():.4g}" if finite.size else "no finite loss"
        kind = self.config.get("kind", "surface")
        alphas = f"alpha {self.alphas[0]:.3g}..{self.alphas[-1]:.3g}"
        return f"Surface({kind}, {grid} points, {alphas}, {span}, key={self.config.get('key')})"

    def barrier(self) -> dict[str, float]:
        r"""Linear-mode-connectivity barrier of a 1D interpolation (Frankle et al. 2020, Definition 1).

        With :math:`f(\alpha)` the loss at :math:`(1 - \alpha)\theta_a + \alpha\theta_b` and :math:`a(\alpha)`
        the accuracy, over the grid points with :math:`0 \le \alpha \le 1`,

        .. math::
            B_L = \max_\alpha f(\alpha) - \big((1-\alpha) f(0) + \alpha f(1)\big), \qquad
            B_A = \max_\alpha \big((1-\alpha) a(0) + \alpha a(1)\big) - a(\alpha),

        the largest rise of the loss (drop of the accuracy) above (below) the straight line between the ends. A value
        near 0 means the two networks are linearly mode connected. ``B_A`` is NaN when the accuracy is (a
        regression loss); a non-finite loss on the path gives ``B_L = inf`` or NaN, never a finite number.

        Returns:
            ``loss_barrier, loss_barrier_alpha, accuracy_barrier, accuracy_barrier_alpha``, plus ``loss_a, loss_b,
            accuracy_a, accuracy_b`` at the two ends.

        Raises:
            ValueError: for a 2D surface, or a grid lacking :math:`\alpha = 0` or :math:`\alpha = 1`.

        Example:
            >>> s = Surface(np.array([0.0, 0.5, 1.0]), None, np.array([1.0, 3.0, 2.0]), np.array([0.9, 0.5, 0.8]))
            >>> {k: round(v, 6) for k, v in s.barrier().items() if "barrier" in k}
            {'loss_barrier': 1.5, 'loss_barrier_alpha': 0.5, 'accuracy_barrier': 0.35, 'accuracy_barrier_alpha': 0.5}
        """
        if self.betas is not None:
            raise ValueError("the barrier is defined on a 1D interpolation, not a 2D surface")
        ends = [np.flatnonzero(self.alphas == v) for v in (0.0, 1.0)]
        if not all(len(e) for e in ends):
            raise ValueError("the grid lacks alpha = 0 or alpha = 1 (use make_grid(..., include=(0, 1)))")
        inside = (self.alphas >= 0.0) & (self.alphas <= 1.0)
        alpha = self.alphas[inside]
        out: dict[str, float] = {}
        for name, values, sign in (("loss", self.loss, 1.0), ("accuracy", self.accuracy, -1.0)):
            at_a, at_b = float(values[ends[0][0]]), float(values[ends[1][0]])
            gap = sign * (values[inside] - ((1.0 - alpha) * at_a + alpha * at_b))
            if np.all(np.isnan(gap)):
                worst, where = float("nan"), float("nan")
            elif np.any(np.isnan(gap)):
                worst, where = float("nan"), float(alpha[np.flatnonzero(np.isnan(gap))[0]])
            else:
                i = int(np.argmax(gap))
                worst, where = float(gap[i]) + 0.0, float(alpha[i])  # + 0.0: no -0.0 at an end
            out |= {f"{name}_barrier": worst, f"{name}_barrier_alpha": where}
            out |= {f"{name}_a": at_a, f"{name}_b": at_b}
        return {k: out[k] for k in (
            "loss_barrier", "loss_barrier_alpha", "accuracy_barrier", "accuracy_barrier_alpha",
            "loss_a", "loss_b", "accuracy_a", "accuracy_b",
        )}  # fmt: skip

    def at_origin(self) -> float:
        """The loss at coordinates 0 (raises ``ValueError`` if the grid lacks 0)."""
        i = np.flatnonzero(self.alphas == 0.0)
        j = np.flatnonzero(self.betas == 0.0) if self.betas is not None else np.array([0])
        if not len(i) or not len(j):
            raise ValueError("the grid does not contain the origin (use make_grid(..., include_zero=True))")
        return float(self.loss[i[0]] if self.betas is None else self.loss[i[0], j[0]])

    def _digest(self) -> str:
        """SHA-256 of the grids, values and config, stored in the file by :meth:`save` and checked by :meth:`load`."""
        h = hashlib.sha256()
        betas = self.betas if self.betas is not None else np.array([])
        for array in (self.alphas, betas, self.loss, self.accuracy):
            a = np.ascontiguousarray(array)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        h.update(json.dumps(self.config, sort_keys=True).encode())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        """Write grids, config and their SHA-256 to an ``.npz`` file at exactly ``path`` (:mod:`landscape.files`)."""
        betas = self.betas if self.betas is not None else np.array([])
        config = json.dumps(self.config)
        buffer = io.BytesIO()  # np.savez on a path would append ".npz" to a name without it
        arrays = {"alphas": self.alphas, "betas": betas, "loss": self.loss, "accuracy": self.accuracy}
        np.savez(buffer, **arrays, config=config, sha256=self._digest())
        atomic_write(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Surface:
        """Read a surface written by :meth:`save`, verifying its content.

        Raises:
            ValueError: the file is not a surface (truncated, garbage, missing entries) or its content differs from
                what was saved (the SHA-256 stored in the file does not match).
        """
        try:
            with np.load(path) as f:
                betas = f["betas"] if f["loss"].ndim == 2 else None
                surface = cls(f["alphas"], betas, f["loss"], f["accuracy"], json.loads(str(f["config"])))
                stored = str(f["sha256"]) if "sha256" in f.files else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: not a surface file written by Surface.save ({error})") from None
        if stored is None:
            warnings.warn(f"{path}: written without a checksum by an older valley; not verified", stacklevel=2)
        elif stored != surface._digest():
            raise ValueError(f"{path}: its content differs from what Surface.save wrote (SHA-256 mismatch)")
        return surface


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
    acc = np.where(np.isnan(loss), np.nan, acc)  # no accuracy beside a loss that could not be computed
    if config["n_nonfinite"]:
        warnings.warn(
            f"{config.get('kind', 'surface')}: the loss is not finite at {config['n_nonfinite']} of {loss.size} points "
            "(NaN or inf; counted in the config as n_nonfinite)",
            RuntimeWarning,
            stacklevel=3,
        )
    return Surface(alphas, betas, loss, acc, config)


def _warn_zero(directions: Sequence[Mapping[str, Tensor]]) -> None:
    """Warn about a direction that is zero everywhere: the surface is constant along it."""
    for k, direction in enumerate(directions):
        if not any(bool(t.any()) for t in direction.values()):
            warnings.warn(
                f"direction {k} is zero: the loss is constant along it (identical models, or a zero direction)",
                RuntimeWarning,
                stacklevel=3,
            )


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
        **options: ``loss_fn, accuracy_fn, method, mode, bn, bn_data, bn_batches, batch_size, chunk_size, cache_dir,
            first_layer_trick, progress`` as in :class:`landscape._grid.SurfaceJob`.
    """
    alphas = _coords(alphas, "alphas")
    job = SurfaceJob(model, data, [direction], alphas[:, None], origin=origin, **options)
    _warn_zero(job.directions)
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

    ``theta_a`` and ``theta_b`` are models or dicts holding every trainable parameter of ``model``. When ``model``
    has BatchNorm layers with running statistics, they are re-estimated at every point on the data (``bn="recompute"``
    with ``bn_data``/``bn_batches`` as in :class:`landscape._grid.SurfaceJob`), since the statistics of either end do
    not describe the interpolated weights; ``bn="saved"`` keeps ``model``'s own buffers and says so in the config.

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
    if batchnorm_modules(model) and options.get("mode", "eval") == "eval":
        options.setdefault("bn", "recompute")
    job = SurfaceJob(model, data, [model_direction(a, b)], alphas[:, None], origin=a, **options)
    _warn_zero(job.directions)
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
    _warn_zero(job.directions)
    cosine = cosine_similarity(directions[0], directions[1])
    return _run(job, alphas, betas, {"kind": "surface_2d", "cosine": cosine}, distributed)
