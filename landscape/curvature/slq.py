"""Spectral density of a symmetric operator by stochastic Lanczos quadrature (SLQ)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from landscape.curvature._common import Seed, TorchOperator, rademacher, rng

__all__ = ["SpectralDensity", "lanczos_tridiagonal", "slq_density"]


@dataclass
class SpectralDensity:
    r"""Quadrature nodes and weights per probe and the Gaussian-smoothed spectral density on a grid.

    Attributes:
        probe: ``(q,)`` probe index of each node.
        nodes: ``(q,)`` Ritz values :math:`\theta_{j}` (quadrature nodes).
        weights: ``(q,)`` weights :math:`\tau_{j}`; they sum to 1 over each probe's nodes.
        grid: ``(g,)`` points :math:`t` where the density is evaluated.
        density: ``(g,)`` values of :math:`\phi_\sigma(t)`.
        dimension: the operator's size :math:`n`.
        applications: operator applications used.
        config: the estimator's arguments.
    """

    probe: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    dimension: int
    applications: int
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        probes = int(self.probe.max()) + 1 if len(self.probe) else 0
        span = f"{self.nodes.min():.4g}..{self.nodes.max():.4g}" if len(self.nodes) else "empty"
        return (
            f"SpectralDensity(dimension {self.dimension}, {probes} probes, {len(self.nodes)} nodes in [{span}], "
            f"grid of {len(self.grid)}, applications {self.applications})"
        )

    def moment(self, order: int) -> float:
        r"""Estimate of :math:`\frac{1}{n}\mathrm{tr}(A^k)`: the probe mean of :math:`\sum_j \tau_j\theta_j^k`."""
        probes = int(self.probe.max()) + 1
        return float(np.sum(self.weights * self.nodes**order) / probes)

    def frame(self) -> pd.DataFrame:
        """The smoothed density, one row per grid point: ``eigenvalue, density``."""
        return pd.DataFrame({"eigenvalue": self.grid, "density": self.density})

    def nodes_frame(self) -> pd.DataFrame:
        """The quadrature, one row per node: ``probe, node, weight``."""
        return pd.DataFrame({"probe": self.probe, "node": self.nodes, "weight": self.weights})


def lanczos_tridiagonal(view: TorchOperator, start: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    r"""``steps`` Lanczos steps with full reorthogonalisation from ``start``; returns :math:`T`'s diagonals.

    .. math::
        w = Av_j - \beta_{j-1}v_{j-1}, \quad \alpha_j = v_j^\top w, \quad
        w \leftarrow w - \alpha_j v_j - V_j(V_j^\top w), \quad \beta_j = \lVert w\rVert, \quad v_{j+1} = w/\beta_j.

    Stops early at an invariant subspace (:math:`\beta_j \le 10^{-10}\max_i|\alpha_i|`), returning fewer steps.
    """
    basis = [start / torch.linalg.vector_norm(start)]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        w = view.apply(basis[j][:, None])[:, 0]
        alpha = float(basis[j] @ w)
        alphas.append(alpha)
        if j == steps - 1:
            break
        stacked = torch.stack(basis, dim=1)
        for _ in range(2):  # twice is enough (Parlett's "twice is enough")
            w = w - stacked @ (stacked.T @ w)
        beta = float(torch.linalg.vector_norm(w))
        if beta <= 1e-10 * max(abs(a) for a in alphas) or beta == 0.0:
            break
        betas.append(beta)
        basis.append(w / beta)
    return np.array(alphas), np.array(betas)


def slq_density(
    operator: Any,
    probes: int = 10,
    steps: int = 80,
    sigma: float | None = None,
    grid: np.ndarray | None = None,
    num_grid: int = 1000,
    seed: Seed = None,
    progress: bool = False,
) -> SpectralDensity:
    r"""Spectral density :math:`\phi(t) = \frac{1}{n}\sum_i \delta(t - \lambda_i)` by stochastic Lanczos quadrature.

    For each probe :math:`v = z/\lVert z\rVert` (Rademacher :math:`z`), ``steps`` Lanczos steps give
    :math:`T = U\,\mathrm{diag}(\theta)\,U^\top`; Gauss quadrature gives
    :math:`v^\top f(A) v \approx \sum_j \tau_j f(\theta_j)` with :math:`\tau_j = U_{1j}^2`. Averaging over
    probes and smoothing each node by a Gaussian of width :math:`\sigma`,

    .. math::
        \phi_\sigma(t) = \frac{1}{n_v}\sum_{l=1}^{n_v}\sum_{j=1}^{m} \tau^{(l)}_j
        \frac{1}{\sqrt{2\pi}\sigma}\exp\Big(-\frac{(t - \theta^{(l)}_j)^2}{2\sigma^2}\Big)

    (Ubaru, Chen & Saad 2017, eq. 3.2; Ghorbani, Krishnan & Xiao 2019, Section 3). Weights sum to 1 per probe, so the
    density integrates to 1; its first moment is :math:`v^\top A v`, an unbiased estimate of :math:`\mathrm{tr}(A)/n`.

    Args:
        operator: a :class:`~landscape.curvature.operator.CurvatureOperator`, a ``LinearOperator`` or a symmetric array.
        probes: number of probe vectors :math:`n_v`.
        steps: Lanczos steps :math:`m` per probe (capped at ``n``).
        sigma: Gaussian width; ``None``: 1% of the node range (Ghorbani et al. smooth with a width relative to the
            spectrum's range; ours is a standard deviation, not their variance).
        grid: evaluation points; ``None``: ``num_grid`` points from ``min(θ) - 6σ`` to ``max(θ) + 6σ``.
        num_grid: grid size when ``grid`` is ``None``.
        seed: seed or generator of the probes.
        progress: show a progress bar over probes.

    Example:
        >>> result = slq_density(np.diag([1.0, 2.0, 3.0, 6.0]), probes=4, steps=4, seed=0)
        >>> round(result.moment(1), 10), round(float(np.trapezoid(result.density, result.grid)), 6)
        (3.0, 1.0)
    """
    if probes < 1:
        raise ValueError(f"Invalid probes: {probes}")
    if steps < 1:
        raise ValueError(f"Invalid steps: {steps}")
    if sigma is not None and sigma <= 0:
        raise ValueError(f"Invalid sigma: {sigma}")
    if grid is None and num_grid < 2:
        raise ValueError(f"Invalid num_grid: {num_grid}")
    view = TorchOperator(operator)
    generator = rng(seed)
    probe_index, nodes, weights = [], [], []
    for probe in tqdm(range(probes), desc="SLQ", disable=not progress):
        start = view.tensor(rademacher(generator, view.n, 1)[:, 0])
        alphas, betas = lanczos_tridiagonal(view, start, min(steps, view.n))
        tridiagonal = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, vectors = np.linalg.eigh(tridiagonal)
        probe_index.append(np.full(len(theta), probe))
        nodes.append(theta)
        weights.append(vectors[0] ** 2)
    probe_index, nodes, weights = np.concatenate(probe_index), np.concatenate(nodes), np.concatenate(weights)
    if sigma is None:
        sigma = 0.01 * max(float(np.ptp(nodes)), 1e-12 * max(float(np.abs(nodes).max()), 1.0))
    if grid is None:
        grid = np.linspace(nodes.min() - 6 * sigma, nodes.max() + 6 * sigma, num_grid)
    grid = np.asarray(grid, dtype=np.float64)
    kernel = np.exp(-((grid[:, None] - nodes[None, :]) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    density = kernel @ weights / probes
    config = {"probes": probes, "steps": steps, "sigma": sigma, "num_grid": len(grid), "mode": view.mode}
    return SpectralDensity(probe_index, nodes, weights, grid, density, view.n, view.applications, config)
