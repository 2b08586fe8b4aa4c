r"""Mean loss surface over several independent random direction pairs, with a confidence band.

One pair of random directions gives one slice of a high-dimensional landscape; repeating the draw :math:`n` times and
averaging shows how typical that slice is. At every grid point the band is the Student-t interval

.. math::
    \bar f(\alpha, \beta) \pm t_{(1 + c)/2,\, n - 1} \, \frac{s(\alpha, \beta)}{\sqrt{n}},

with :math:`\bar f` and :math:`s` the mean and sample standard deviation over the draws and :math:`c` the confidence
level. The cosine between the two directions of every draw is reported: in high dimension random directions are
nearly orthogonal, and a surface drawn with skewed axes would be misread.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from landscape._data import Data
from landscape.directions import random_direction
from landscape.surfaces import Surface, surface_2d


@dataclass
class SurfaceEnsemble:
    """Surfaces of several direction draws on one grid, and their mean with a confidence band.

    Attributes:
        surfaces: one :class:`landscape.surfaces.Surface` per draw (each holds its cosine in ``config``).
        confidence: level of the band (default 0.95).
    """

    surfaces: list[Surface]
    confidence: float = 0.95

    def __repr__(self) -> str:
        first = self.surfaces[0]
        grid = f"{len(first.alphas)}x{len(first.betas)}" if first.betas is not None else f"{len(first.alphas)}"
        return f"SurfaceEnsemble({len(self.surfaces)} draws on {grid} points, confidence {self.confidence})"

    @property
    def cosines(self) -> np.ndarray:
        """Cosine between the two directions of each draw."""
        return np.array([s.config["cosine"] for s in self.surfaces])

    def _band(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(values)
        mean = values.mean(axis=0)
        if n < 2:
            half = np.full_like(mean, np.nan)
            return mean, np.full_like(mean, np.nan), half
        std = values.std(axis=0, ddof=1)
        from scipy import stats  # here, not at the top: scipy.stats takes half a second to import

        return mean, std, stats.t.ppf((1 + self.confidence) / 2, n - 1) * std / np.sqrt(n)

    def frame(self) -> pd.DataFrame:
        """One row per grid point: ``alpha, beta``, then mean, std, lower and upper band of loss and accuracy.

        A draw's non-finite value at a point makes that point's statistics non-finite too (a warning says how many
        draws and points): leaving the draw out there would make each point a mean over other draws.
        """
        first = self.surfaces[0]
        a, b = np.meshgrid(first.alphas, first.betas, indexing="ij")
        cols: dict[str, Any] = {"alpha": a.ravel(), "beta": b.ravel()}
        for quantity in ("loss", "accuracy"):
            values = np.stack([getattr(s, quantity).ravel() for s in self.surfaces])
            bad = ~np.isfinite(values)
            if bad.any() and not bad.all():  # all NaN: an accuracy that does not apply (regression)
                warnings.warn(
                    f"SurfaceEnsemble: {int(bad.any(axis=1).sum())} of {len(values)} draws have a non-finite "
                    f"{quantity} at {int(bad.any(axis=0).sum())} points; its mean and band are not finite there",
                    RuntimeWarning,
                    stacklevel=2,
                )
            mean, std, half = self._band(values)
            cols.update({f"{quantity}_mean": mean, f"{quantity}_std": std})
            cols.update({f"{quantity}_lo": mean - half, f"{quantity}_hi": mean + half})
        cols["n_draws"] = len(self.surfaces)
        return pd.DataFrame(cols)

    def draws(self) -> pd.DataFrame:
        """Every draw's surface stacked: ``draw, cosine, alpha, beta, loss, accuracy``."""
        frames = [s.frame().assign(draw=i, cosine=s.config["cosine"]) for i, s in enumerate(self.surfaces)]
        return pd.concat(frames, ignore_index=True)[["draw", "cosine", "alpha", "beta", "loss", "accuracy"]]


def random_surfaces(
    model: nn.Module,
    data: Data,
    alphas: Sequence[float] | np.ndarray,
    betas: Sequence[float] | np.ndarray,
    n_draws: int = 5,
    seed: int = 0,
    normalization: str | None = "filter",
    bias_bn: str = "zero",
    confidence: float = 0.95,
    **options: Any,
) -> SurfaceEnsemble:
    """2D surfaces around the model's parameters along ``n_draws`` independent pairs of random directions.

    Args:
        model: the network (restored exactly afterwards).
        data: a pair ``(inputs, targets)`` or an iterable of pairs.
        alphas: coordinates along the first direction of each pair.
        betas: coordinates along the second.
        n_draws: number of direction pairs (default 5).
        seed: seeds the generator all pairs are drawn from, in order.
        normalization: ``"filter"`` (default), ``"layer"`` or ``None``, see
            :func:`landscape.directions.normalize_direction`.
        bias_bn: treatment of tensors with at most one dimension (default ``"zero"``).
        confidence: level of the band (default 0.95).
        **options: passed to :func:`landscape.surfaces.surface_2d`.

    Example:
        >>> model, data = nn.Linear(3, 2), (torch.ones(4, 3), torch.zeros(4, dtype=torch.long))
        >>> ens = random_surfaces(model, data, [-1, 0, 1], [0, 1], n_draws=3, progress=False)
        >>> ens.frame().shape, ens.cosines.shape
        ((6, 11), (3,))
    """
    if n_draws < 1:
        raise ValueError(f"Invalid n_draws: {n_draws}")
    if not 0 < confidence < 1:
        raise ValueError(f"Invalid confidence: {confidence}")
    generator = torch.Generator().manual_seed(seed)
    surfaces = []
    for draw in range(n_draws):
        pair = [random_direction(model, normalization, bias_bn, generator=generator) for _ in range(2)]
        surface = surface_2d(model, data, pair, alphas, betas, **options)
        surface.config.update({"draw": draw, "seed": seed, "normalization": normalization, "bias_bn": bias_bn})
        surfaces.append(surface)
    return SurfaceEnsemble(surfaces, confidence)
