"""Top-k eigenpairs by power iteration with deflation, as PyHessian computes them (kept for comparison)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from landscape.curvature._common import EigenResult, Seed, TorchOperator, eigen_result, rng

__all__ = ["power_iteration_eigenpairs"]


def power_iteration_eigenpairs(
    operator: Any,
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: Seed = None,
    residual_tol: float = 1e-6,
    progress: bool = False,
) -> EigenResult:
    r"""The ``k`` largest-magnitude eigenpairs by power iteration, deflating by orthogonalisation.

    For the ``i``-th pair, from a standard normal :math:`v`, repeat at most ``max_iter`` times

    .. math::
        v \leftarrow \frac{P_i v}{\lVert P_i v \rVert}, \quad
        \lambda^{new} = v^\top H v, \quad v \leftarrow \frac{Hv}{\lVert Hv \rVert},

    with :math:`P_i` the Gram-Schmidt projection off the eigenvectors found so far, and stop when
    :math:`|\lambda - \lambda^{new}| / (|\lambda| + 10^{-6}) < \mathrm{tol}`, keeping the previous :math:`\lambda`
    (Yao et al. 2020, PyHessian ``hessian.eigenvalues``: defaults ``max_iter = 100``, ``tol = 1e-3``). The stopping rule
    watches the Rayleigh quotient only, so a slow start (small eigengap, or a start vector nearly orthogonal to the top
    eigenvector) can stop on a value between two eigenvalues; ``residuals``/``converged`` expose that, and
    ``config["iterations"]`` lists the iterations per pair (``max_iter`` means the rule never fired). An iterate
    with :math:`Hv = 0` is an eigenvector of eigenvalue 0 and ends its pair (a zero Hessian gives 0, converged, with
    a warning).

    Args:
        operator: a :class:`~landscape.curvature.operator.CurvatureOperator`, a ``LinearOperator`` or a symmetric array.
        k: number of eigenpairs, ``1 <= k <= n``.
        max_iter: maximum iterations (applications) per eigenpair.
        tol: relative change of the eigenvalue that stops an eigenpair's iteration.
        seed: seed or generator of the start vectors.
        residual_tol: relative residual below which a pair is flagged converged.
        progress: show a progress bar over the eigenpairs.

    Returns:
        An :class:`~landscape.curvature._common.EigenResult`, eigenvalues sorted largest first.

    Example:
        >>> result = power_iteration_eigenpairs(np.diag([1.0, 5.0, 3.0]), k=1, tol=1e-10, seed=0)
        >>> round(float(result.eigenvalues[0]), 6)
        5.0
    """
    view = TorchOperator(operator)
    if not 1 <= k <= view.n:
        raise ValueError(f"Invalid k: {k} (need 1 <= k <= n = {view.n})")
    if max_iter < 1:
        raise ValueError(f"Invalid max_iter: {max_iter}")
    if tol <= 0:
        raise ValueError(f"Invalid tol: {tol}")
    if residual_tol <= 0:
        raise ValueError(f"Invalid residual_tol: {residual_tol}")
    generator = rng(seed)
    values: list[float] = []
    vectors: list[torch.Tensor] = []
    iterations: list[int] = []
    for _ in tqdm(range(k), desc="power iteration", disable=not progress):
        v = view.tensor(generator.standard_normal(view.n))
        v = v / torch.linalg.vector_norm(v)
        value, used = None, 0
        while used < max_iter:
            used += 1
            for u in vectors:  # PyHessian's orthnormal: Gram-Schmidt against found eigenvectors, then normalise
                v = v - (v @ u) * u
            v = v / torch.linalg.vector_norm(v)
            hv = view.apply(v[:, None])[:, 0]
            new_value = float(v @ hv)
            norm = torch.linalg.vector_norm(hv)
            if norm == 0:  # Hv = 0: v is an eigenvector of eigenvalue 0 (e.g. a zero Hessian)
                value = 0.0
                break
            v = hv / norm
            if value is not None and abs(value - new_value) / (abs(value) + 1e-6) < tol:
                break
            value = new_value
        values.append(value)
        vectors.append(v)
        iterations.append(used)
    config = {"k": k, "max_iter": max_iter, "tol": tol, "iterations": iterations}
    return eigen_result(
        view, torch.tensor(np.array(values)), torch.stack(vectors, dim=1), residual_tol, "power_iteration", config
    )
