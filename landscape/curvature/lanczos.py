"""Top-k eigenpairs of a symmetric curvature operator by Lanczos with full reorthogonalisation (or ARPACK's eigsh)."""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from tqdm.auto import tqdm

from landscape.curvature._common import EigenResult, Seed, TorchOperator, eigen_result, rng

__all__ = ["lanczos_eigenpairs"]

Which = Literal["LA", "LM", "SA"]


def lanczos_eigenpairs(
    operator: Any,
    k: int = 1,
    which: Which = "LA",
    tol: float | None = None,
    maxiter: int | None = None,
    ncv: int | None = None,
    seed: Seed = None,
    residual_tol: float = 1e-6,
    progress: bool = False,
    method: Literal["lanczos", "arpack"] = "lanczos",
    max_basis: int | None = None,
    v0: np.ndarray | torch.Tensor | None = None,
) -> EigenResult:
    r"""The ``k`` extreme eigenvalues and eigenvectors of a symmetric operator :math:`H` by Lanczos.

    ``method="lanczos"`` (default) grows one Krylov basis :math:`V_m = [v_1, \dots, v_m]` of
    :math:`\mathcal{K}_m(H, v_1)`, one application per step, from a standard normal :math:`v_1` (unit norm):

    .. math::
        w = Hv_j - \beta_{j-1}v_{j-1}, \quad \alpha_j = v_j^\top w, \quad
        w \leftarrow (I - V_jV_j^\top)(w - \alpha_j v_j) \ \text{(twice)}, \quad
        \beta_j = \lVert w\rVert, \quad v_{j+1} = w/\beta_j,

    so that :math:`HV_m = V_mT_m + \beta_m v_{m+1}e_m^\top` with :math:`T_m` tridiagonal (diagonal
    :math:`\alpha_1..\alpha_m`, off-diagonal :math:`\beta_1..\beta_{m-1}`). With
    :math:`T_m = S\,\mathrm{diag}(\theta)S^\top` the Ritz pairs are :math:`(\theta_i, y_i = V_m s_i)` and, because
    the full reorthogonalisation keeps :math:`V_m` orthonormal to rounding, their residuals are

    .. math::
        \lVert Hy_i - \theta_i y_i\rVert = \beta_m\,|e_m^\top s_i|

    up to rounding (Parlett 1998, *The Symmetric Eigenvalue Problem*, ch. 13; Saad 2011, *Numerical Methods
    for Large Eigenvalue Problems*, Sec. 6.3). The iteration stops at the first :math:`m \ge k` where every wanted Ritz
    pair has :math:`\beta_m|e_m^\top s_i| \le \tau\max(|\theta_i|, \epsilon^{2/3}\lVert T_m\rVert)`, with
    :math:`\tau = \max(\mathrm{tol}, \epsilon)` and :math:`\epsilon` the dtype's machine epsilon (ARPACK's test, with
    its floor scaled by :math:`\lVert T_m\rVert`). These bounds are the reported ``residuals``: no application is spent
    re-checking them (for float32 operators they are accurate to the products' rounding, about
    :math:`10^{-7}\lVert H\rVert`, below which a bound can fall but a measured residual cannot). The eigenvalue error
    of a pair with residual :math:`r_i` is at most :math:`r_i^2/\mathrm{gap}_i`. A breakdown
    :math:`\beta_j \le 100\,\epsilon\lVert T_j\rVert` means :math:`V_j` spans an invariant subspace whose Ritz pairs
    are exact; if the basis holds fewer than ``k`` vectors, or the wanted pairs are not within ``tol``, it continues
    from a new random vector orthogonal to :math:`V_j` (:math:`T` gets a zero off-diagonal; the dropped
    :math:`\beta_j` stays in the residuals). Like every single-vector Krylov method, one block sees an exactly repeated
    eigenvalue once: with ``k`` or more pairs found before a breakdown, a second copy can be missed.

    Memory: the basis holds :math:`m \times n` numbers of the operator's dtype (e.g. 60 vectors of a 10⁵-parameter
    float64 Hessian: 48 MB) and grows by doubling only as needed, up to ``max_basis``. If the wanted pairs are not
    within ``tol`` by then, a ``RuntimeWarning`` is issued and the current Ritz pairs are returned with their residual
    bounds and ``config["stop"] == "max_basis"``; for
    operators too large for such a basis, ``method="arpack"`` restarts within ``ncv`` vectors at the price of more
    applications (ARPACK, Lehoucq et al. 1998, via ``scipy.sparse.linalg.eigsh``; it measures residuals explicitly
    with ``k`` extra applications).

    Args:
        operator: a :class:`~landscape.curvature.operator.CurvatureOperator`, a ``LinearOperator`` or a symmetric array.
        k: number of eigenpairs, ``1 <= k <= n`` (``k < n`` for ``"arpack"``).
        which: ``"LA"`` largest algebraic (default), ``"LM"`` largest magnitude, ``"SA"`` smallest algebraic.
        tol: relative residual :math:`\mathrm{tol}` at which a Ritz pair counts as converged; ``0`` means machine
            precision. ``None``: 1e-10 for float64 operators (eigenvalues then exact to rounding), 1e-5 otherwise
            (float32 products carry ~1e-7 relative noise); for ``"arpack"`` ``None`` keeps its former meaning, 0 for
            float64.
        maxiter: ARPACK restarts (``"arpack"`` only; ``None``: ARPACK's default, 10 n).
        ncv: ARPACK's basis size (``"arpack"`` only; ``None``: ``eigsh``'s default, ``min(n, max(2k + 1, 20))``).
        seed: seed or generator of the start vector :math:`v_1` (standard normal) and of restart vectors.
        residual_tol: relative residual below which a pair is flagged converged (against the largest :math:`|\lambda|`).
        progress: show a progress bar counting operator applications.
        method: ``"lanczos"`` (full reorthogonalisation, one basis) or ``"arpack"`` (``eigsh``, kept for comparison).
        max_basis: largest basis size :math:`m` (``"lanczos"`` only); ``None``: ``min(n, max(100, 10k))``.
        v0: start vector :math:`v_1` (normalised here) instead of a random one, e.g. an eigenvector of a nearby
            operator to warm-start a tracked eigenvalue; restart vectors stay random.

    Returns:
        An :class:`~landscape.curvature._common.EigenResult`; ``config`` holds ``basis_size``, ``restarts`` and
        ``stop`` (``"converged"``, ``"invariant"``, ``"full"``: basis spans the space, or ``"max_basis"``) for
        ``"lanczos"``, and ``arpack_converged`` for ``"arpack"``.

    Example:
        >>> result = lanczos_eigenpairs(np.diag([1.0, 5.0, 3.0, 2.0]), k=2, seed=0)
        >>> result.eigenvalues.round(6).tolist(), result.converged.tolist(), result.applications
        ([5.0, 3.0], [True, True], 4)
    """
    view = TorchOperator(operator)
    start = None if v0 is None else _start_vector(v0, view.n)
    if method not in ("lanczos", "arpack"):
        raise ValueError(f"Invalid method: {method!r}")
    if which not in ("LA", "LM", "SA"):
        raise ValueError(f"Invalid which: {which!r}")
    if tol is not None and not tol >= 0:
        raise ValueError(f"Invalid tol: {tol}")
    if not residual_tol > 0:
        raise ValueError(f"Invalid residual_tol: {residual_tol}")
    if method == "arpack":
        if not 1 <= k < view.n:
            raise ValueError(f"Invalid k: {k} (need 1 <= k < n = {view.n} for method='arpack')")
        if max_basis is not None:
            raise ValueError(f"Invalid max_basis: {max_basis} (method='lanczos' only; ARPACK's basis size is ncv)")
        return _arpack(view, k, which, tol, maxiter, ncv, seed, residual_tol, progress, start)
    if not 1 <= k <= view.n:
        raise ValueError(f"Invalid k: {k} (need 1 <= k <= n = {view.n})")
    if maxiter is not None:
        raise ValueError(f"Invalid maxiter: {maxiter} (method='arpack' only)")
    if ncv is not None:
        raise ValueError(f"Invalid ncv: {ncv} (method='arpack' only; use max_basis)")
    if max_basis is None:
        max_basis = min(view.n, max(100, 10 * k))
    if not k <= max_basis <= view.n:
        raise ValueError(f"Invalid max_basis: {max_basis} (need k = {k} <= max_basis <= n = {view.n})")
    if tol is None:
        tol = 1e-10 if view.dtype == torch.float64 else 1e-5
    with tqdm(total=max_basis, desc="lanczos", unit="matvec", disable=not progress) as bar:
        view.on_apply = bar.update
        try:
            values, vectors, residuals, info = _lanczos(view, k, which, tol, max_basis, rng(seed), start)
        finally:
            view.on_apply = None
    if info["stop"] == "max_basis":
        warnings.warn(
            f"lanczos_eigenpairs: the wanted Ritz pairs did not reach tol={tol} within max_basis={max_basis} "
            "vectors; raise max_basis or use method='arpack' (restarted)",
            RuntimeWarning,
            stacklevel=2,
        )
    config = {"method": "lanczos", "k": k, "which": which, "tol": tol, "max_basis": max_basis, **info}
    return eigen_result(view, values, vectors, residual_tol, "lanczos", config, residuals=residuals)


def _lanczos(
    view: TorchOperator,
    k: int,
    which: Which,
    tol: float,
    max_basis: int,
    generator: np.random.Generator,
    start: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The iteration of :func:`lanczos_eigenpairs`: wanted Ritz values, Ritz vectors, residual bounds, diagnostics."""
    eps = float(torch.finfo(view.dtype).eps)
    tau = max(tol, eps)
    basis = torch.empty(min(max_basis, 2 * k + 20), view.n, dtype=view.dtype, device=view.device)  # rows v_j
    basis[0] = _unit(view.tensor(generator.standard_normal(view.n) if start is None else start))
    alphas: list[float] = []
    betas: list[float] = []  # off-diagonal of T; 0 where a breakdown started a new block
    dropped: list[tuple[int, float]] = []  # (row, beta) of each breakdown: the coupling left out of T
    previous, m = 0.0, 0
    while True:
        v = basis[m]
        w = view.apply(v[:, None])[:, 0] - previous * (basis[m - 1] if m else 0.0)
        alpha = float(v @ w)
        w = w - alpha * v
        for _ in range(2):  # full reorthogonalisation; twice is enough (Kahan and Parlett)
            coefficients = basis[: m + 1] @ w
            w = w - coefficients @ basis[: m + 1]
            alpha += float(coefficients[m])
        alphas.append(alpha)
        beta = float(torch.linalg.vector_norm(w))
        m += 1
        theta, s = eigh_tridiagonal(np.array(alphas), np.array(betas))
        scale = float(np.abs(theta).max())
        wanted = _wanted(theta, min(k, m), which)
        bounds = np.sqrt(beta**2 * s[m - 1, wanted] ** 2 + sum(b**2 * s[row, wanted] ** 2 for row, b in dropped))
        converged = bounds <= tau * np.maximum(np.abs(theta[wanted]), eps ** (2 / 3) * scale)
        invariant = beta <= 100 * eps * scale
        stop = "full" if m == view.n else "converged" if m >= k and converged.all() else None
        if stop is None and m == max_basis:
            stop = "max_basis"
        if stop is None and invariant and m >= k and converged.all():
            stop = "invariant"
        if stop is not None:
            break
        if m == basis.shape[0]:  # grow the basis only as far as needed
            grown = torch.empty(min(max_basis, 2 * m), view.n, dtype=view.dtype, device=view.device)
            grown[:m] = basis
            basis = grown
        if invariant:  # restart from a random vector orthogonal to the invariant subspace found
            dropped.append((m - 1, beta))
            w = view.tensor(generator.standard_normal(view.n))
            for _ in range(2):
                w = w - (basis[:m] @ w) @ basis[:m]
            beta = 0.0
        betas.append(beta)
        previous = beta
        basis[m] = _unit(w)
    ritz = basis[:m].T @ view.tensor(s[:, wanted])
    info = {"basis_size": m, "restarts": len(dropped), "stop": stop}
    return torch.as_tensor(theta[wanted]), ritz, torch.as_tensor(bounds), info


def _wanted(theta: np.ndarray, count: int, which: Which) -> np.ndarray:
    """Indices of the ``count`` wanted Ritz values (``theta`` ascending, as ``eigh`` returns them)."""
    if which == "LA":
        return np.arange(len(theta) - count, len(theta))
    if which == "SA":
        return np.arange(count)
    return np.sort(np.argsort(np.abs(theta), kind="stable")[len(theta) - count :])


def _start_vector(v0: np.ndarray | torch.Tensor, n: int) -> np.ndarray:
    """``v0`` as a float64 NumPy vector of length ``n``; ``ValueError`` if it has another size or is zero/non-finite."""
    array = (v0.detach().cpu().double().numpy() if isinstance(v0, torch.Tensor) else np.asarray(v0, float)).ravel()
    if array.shape != (n,):
        raise ValueError(f"v0 must have {n} entries, got shape {np.shape(v0)}")
    norm = float(np.linalg.norm(array))
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(f"v0 must be a finite non-zero vector (norm {norm})")
    return array


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / torch.linalg.vector_norm(vector)


def _arpack(
    view: TorchOperator,
    k: int,
    which: Which,
    tol: float | None,
    maxiter: int | None,
    ncv: int | None,
    seed: Seed,
    residual_tol: float,
    progress: bool,
    start: np.ndarray | None = None,
) -> EigenResult:
    """Implicitly restarted Lanczos by ARPACK (``eigsh``); residuals measured with ``k`` more applications."""
    if tol is None:
        tol = 0.0 if view.dtype == torch.float64 else 1e-5
    v0 = rng(seed).standard_normal(view.n) if start is None else start
    with tqdm(desc="lanczos (arpack)", unit="matvec", disable=not progress) as bar:
        view.on_apply = bar.update
        try:
            values, vectors = eigsh(view.as_scipy(), k=k, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0)
            found = k
        except ArpackNoConvergence as error:
            values, vectors, found = error.eigenvalues, error.eigenvectors, len(error.eigenvalues)
        finally:
            view.on_apply = None
    config = {"method": "arpack", "k": k, "which": which, "tol": tol, "maxiter": maxiter, "ncv": ncv}
    config["arpack_converged"] = found
    return eigen_result(view, torch.as_tensor(values), torch.as_tensor(vectors), residual_tol, "lanczos", config)
