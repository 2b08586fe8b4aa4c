"""Private helpers of the curvature estimators: random probes, operator wrapping and the eigenpair result."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator
from torch import Tensor

from landscape.curvature.operator import CurvatureOperator

Seed = int | np.random.Generator | None


class TorchOperator:
    """A torch-level view of a square operator that counts the applications made through it.

    A :class:`~landscape.curvature.operator.CurvatureOperator` is applied directly (its dtype, its device); any other
    ``LinearOperator`` or array is applied through NumPy in float64. ``mode`` is the curvature operator's
    evaluation mode (``None`` for any other operator), recorded by the estimators.
    """

    def __init__(self, operator: Any) -> None:
        if isinstance(operator, CurvatureOperator):
            self.inner: Any = operator
            self.device, self.dtype = operator.device, operator.torch_dtype
            self.mode: str | None = operator.mode
        else:
            try:
                self.inner = aslinearoperator(operator)
            except TypeError as error:
                raise TypeError(f"operator must be a LinearOperator or array, got {type(operator).__name__}") from error
            self.device, self.dtype = torch.device("cpu"), torch.float64
            self.mode = None
        if len(self.inner.shape) != 2 or self.inner.shape[0] != self.inner.shape[1]:
            raise ValueError(f"operator must be square, got shape {self.inner.shape}")
        self.n = int(self.inner.shape[0])
        self.applications = 0
        self.on_apply: Callable[[int], Any] | None = None  # e.g. a progress bar's update

    def apply(self, vectors: Tensor) -> Tensor:
        """Apply the operator to the columns of an ``(n, k)`` tensor (``k`` applications).

        Raises:
            FloatingPointError: a product is not finite (e.g. the loss or its curvature is not finite at the
                parameters): no estimate built on it could be trusted.
        """
        self.applications += vectors.shape[1]
        if self.on_apply is not None:
            self.on_apply(vectors.shape[1])
        if isinstance(self.inner, CurvatureOperator):
            result = self.inner.apply(vectors)
        else:
            result = self.inner.matmat(vectors.detach().cpu().numpy().astype(np.float64))
            result = torch.as_tensor(np.asarray(result), dtype=self.dtype).reshape(vectors.shape)
        # NaN and ±inf show in the smallest or largest entry: one pass (torch.isfinite(...).all() took 15x as long,
        # 0.2 ms of a 7 ms Hessian product of 10^5 parameters on one CPU thread)
        if result.numel() and not all(math.isfinite(v) for v in torch.stack(torch.aminmax(result)).tolist()):
            raise FloatingPointError(
                "the operator returned non-finite values (is the loss finite at these parameters?); "
                "no curvature estimate can be built on them"
            )
        return result

    def as_scipy(self) -> LinearOperator:
        """A float64 ``LinearOperator`` applying (and counting) through this view, e.g. for ``eigsh``."""

        def matmat(x: np.ndarray) -> np.ndarray:
            y = self.apply(self.tensor(np.reshape(x, (self.n, -1))))
            return y.detach().cpu().numpy().astype(np.float64).reshape(np.shape(x))

        return LinearOperator((self.n, self.n), matvec=matmat, matmat=matmat, rmatvec=matmat, dtype=np.float64)

    def tensor(self, array: np.ndarray) -> Tensor:
        """A NumPy array as a tensor in the operator's dtype and device."""
        return torch.as_tensor(array, dtype=self.dtype, device=self.device)


def rng(seed: Seed) -> np.random.Generator:
    """A NumPy generator from a seed, or the generator itself."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, a numpy Generator or None, got {type(seed).__name__}")
    return np.random.default_rng(seed)


def rademacher(generator: np.random.Generator, n: int, k: int) -> np.ndarray:
    """An ``(n, k)`` matrix of independent ±1 entries."""
    return generator.choice(np.array([-1.0, 1.0]), size=(n, k))


@dataclass
class EigenResult:
    r"""Eigenpairs of a symmetric operator with their quality.

    Attributes:
        eigenvalues: ``(k,)`` eigenvalues, largest first.
        eigenvectors: ``(n, k)`` unit eigenvectors, column ``i`` belongs to ``eigenvalues[i]``.
        residuals: ``(k,)`` residual norms :math:`\lVert Hv_i - \lambda_i v_i \rVert`.
        converged: ``(k,)`` flags, ``residuals <= residual_tol * max|eigenvalues|``.
        applications: operator applications used, including any spent measuring the residuals.
        method: name of the estimator.
        config: the estimator's arguments and diagnostics.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    applications: int
    method: str
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        values = ", ".join(f"{v:.4g}" for v in self.eigenvalues[:5]) + (", ..." if len(self.eigenvalues) > 5 else "")
        shape = "x".join(str(n) for n in np.shape(self.eigenvectors))
        return (
            f"EigenResult({self.method}, eigenvalues [{values}], eigenvectors {shape}, "
            f"converged {int(np.sum(self.converged))}/{len(self.converged)}, applications {self.applications})"
        )

    def frame(self) -> pd.DataFrame:
        """One row per eigenpair: ``index, eigenvalue, residual, converged, method, applications``."""
        return pd.DataFrame(
            {
                "index": np.arange(len(self.eigenvalues)),
                "eigenvalue": self.eigenvalues,
                "residual": self.residuals,
                "converged": self.converged,
                "method": self.method,
                "applications": self.applications,
            }
        )


def eigen_result(
    operator: TorchOperator,
    eigenvalues: Tensor,
    eigenvectors: Tensor,
    residual_tol: float,
    method: str,
    config: dict[str, Any],
    residuals: Tensor | None = None,
) -> EigenResult:
    """Sort eigenpairs (largest first) and build the result.

    ``residuals`` (in the order of ``eigenvalues``) are taken as given when the estimator knows them; otherwise they
    are measured with one ``k``-column application.
    """
    eigenvalues, eigenvectors = eigenvalues.to(operator.dtype), eigenvectors.to(operator.dtype)
    order = torch.argsort(eigenvalues, descending=True)
    values, vectors = eigenvalues[order], eigenvectors[:, order]
    if residuals is None:
        residuals = torch.linalg.vector_norm(operator.apply(vectors) - vectors * values, dim=0)
    else:
        residuals = torch.as_tensor(residuals, dtype=operator.dtype, device=values.device)[order.to(values.device)]
    if not bool(values.any()):
        warnings.warn(
            f"{method}: the operator maps every vector tried to zero (e.g. a zero Hessian); eigenvalues 0",
            RuntimeWarning,
            stacklevel=3,
        )
    scale = values.abs().max().clamp_min(torch.finfo(values.dtype).tiny)
    config = {**config, "residual_tol": residual_tol, "mode": operator.mode}
    return EigenResult(
        eigenvalues=values.detach().cpu().numpy(),
        eigenvectors=vectors.detach().cpu().numpy(),
        residuals=residuals.detach().cpu().numpy(),
        converged=(residuals <= residual_tol * scale).cpu().numpy(),
        applications=operator.applications,
        method=method,
        config=config,
    )
