"""Top-k eigenpairs of a symmetric curvature operator by implicitly restarted Lanczos (ARPACK through ``eigsh``)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from tqdm.auto import tqdm

from landscape.curvature._common import EigenResult, Seed, TorchOperator, eigen_result, rng

__all__ = ["lanczos_eigenpairs"]


def lanczos_eigenpairs(
    operator: Any,
    k: int = 1,
    which: Literal["LA", "LM", "SA"] = "LA",
    tol: float | None = None,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed: Seed = None,
    residual_tol: float = 1e-6,
    progress: bool = False,
) -> EigenResult:
    r"""The ``k`` extreme eigenvalues and eigenvectors of a symmetric operator by Lanczos.

    ARPACK's implicitly restarted Lanczos method (Lehoucq et al. 1998) builds a Krylov basis
    :math:`\mathcal{K}_m(H, v_0) = \mathrm{span}\{v_0, Hv_0, \dots, H^{m-1}v_0\}` of ``ncv`` vectors, takes the Ritz
    pairs of :math:`V_m^\top H V_m = T_m` and restarts until every wanted pair satisfies
    :math:`\lVert H y - \theta y \rVert \le \mathrm{tol}\,|\theta|`. Every reported pair is then checked by one
    more application: ``residuals`` holds :math:`\lVert Hv_i - \lambda_i v_i \rVert` and ``converged`` whether it is
    at most ``residual_tol`` times the largest :math:`|\lambda|`.

    Args:
        operator: a :class:`~landscape.curvature.operator.CurvatureOperator`, a ``LinearOperator`` or a symmetric array.
        k: number of eigenpairs, ``1 <= k < n``.
        which: ``"LA"`` largest algebraic (default), ``"LM"`` largest magnitude, ``"SA"`` smallest algebraic.
        tol: ARPACK's relative tolerance; ``None``: 0 (machine precision) for float64 operators, 1e-5 otherwise
            (float32 products carry ~1e-7 relative noise that a zero tolerance would chase).
        maxiter: ARPACK restarts (``None``: ARPACK's default, 10 n).
        ncv: Krylov basis size (``None``: ``eigsh``'s default, ``min(n, max(2k + 1, 20))``).
        seed: seed or generator of the start vector :math:`v_0` (standard normal).
        residual_tol: relative residual below which a pair is flagged converged.
        progress: show a progress bar counting operator applications.

    Returns:
        An :class:`~landscape.curvature._common.EigenResult`. If ARPACK stops before all ``k`` pairs converged, the
        converged ones are returned and ``config["arpack_converged"]`` says how many.

    Example:
        >>> import numpy as np
        >>> result = lanczos_eigenpairs(np.diag([1.0, 5.0, 3.0, 2.0]), k=2, seed=0)
        >>> result.eigenvalues.round(6).tolist(), result.converged.tolist()
        ([5.0, 3.0], [True, True])
    """
    view = TorchOperator(operator)
    if not 1 <= k < view.n:
        raise ValueError(f"Invalid k: {k} (need 1 <= k < n = {view.n})")
    if which not in ("LA", "LM", "SA"):
        raise ValueError(f"Invalid which: {which!r}")
    if tol is not None and tol < 0:
        raise ValueError(f"Invalid tol: {tol}")
    if residual_tol <= 0:
        raise ValueError(f"Invalid residual_tol: {residual_tol}")
    if tol is None:
        tol = 0.0 if view.dtype == torch.float64 else 1e-5
    v0 = rng(seed).standard_normal(view.n)
    with tqdm(desc="lanczos", unit="matvec", disable=not progress) as bar:
        view.on_apply = bar.update
        try:
            values, vectors = eigsh(view.as_scipy(), k=k, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0)
            found = k
        except ArpackNoConvergence as error:
            values, vectors, found = error.eigenvalues, error.eigenvectors, len(error.eigenvalues)
        finally:
            view.on_apply = None
    config = {"k": k, "which": which, "tol": tol, "maxiter": maxiter, "ncv": ncv, "arpack_converged": found}
    return eigen_result(view, torch.as_tensor(values), torch.as_tensor(vectors), residual_tol, "lanczos", config)
