r"""The preconditioned curvature :math:`P^{-1/2} C P^{-1/2}` of an operator :math:`C` and a diagonal :math:`P`.

For a positive diagonal :math:`P`, :math:`P^{-1}C = P^{-1/2}(P^{-1/2}CP^{-1/2})P^{1/2}` is similar to the symmetric
:math:`P^{-1/2}CP^{-1/2}`, so both have the same (real) eigenvalues; the symmetric form is the one a Lanczos
iteration, a trace or a spectral density can use. With :math:`P` an adaptive optimizer's preconditioner
(``optim.preconditioner``), :math:`\lambda_{\max}(P^{-1/2}HP^{-1/2})` is the *preconditioned sharpness* whose
stability threshold is the optimizer's (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability").
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor

from landscape.curvature.operator import CurvatureOperator

__all__ = ["PreconditionedOperator"]


class PreconditionedOperator(CurvatureOperator):
    r"""The operator :math:`v \mapsto P^{-1/2} C P^{-1/2} v` of an operator :math:`C` and a diagonal :math:`P`.

    One application is one application of ``inner`` between two element-wise scalings by :math:`d = P^{-1/2}`; it
    counts in ``applications`` here and in ``inner``. ``model``, ``loss_fn``, ``device``, the data and the parameter
    layout (``unflatten``) and the evaluation ``mode`` are those of ``inner``.

    Args:
        inner: the curvature operator :math:`C` (a :class:`~landscape.curvature.operator.HessianOperator` or
            :class:`~landscape.curvature.operator.GGNOperator`).
        diagonal: the diagonal of :math:`P` as one flat vector in the operator's parameter order (``n`` entries,
            finite and positive).

    Example:
        >>> from landscape.curvature.operator import HessianOperator
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x, y = torch.eye(2), torch.zeros(2, 1)
        >>> H = HessianOperator(model, torch.nn.functional.mse_loss, (x, y), dtype=torch.float64)
        >>> PreconditionedOperator(H, torch.tensor([4.0, 1.0])).matvec(np.array([1.0, 1.0]))
        array([0.25, 1.  ])
    """

    def __init__(self, inner: CurvatureOperator, diagonal: Tensor | np.ndarray) -> None:
        if not isinstance(inner, CurvatureOperator):
            raise TypeError(f"inner must be a CurvatureOperator, got {type(inner).__name__}")
        diagonal = torch.as_tensor(diagonal).detach().reshape(-1)
        if diagonal.shape[0] != inner.shape[0]:
            raise ValueError(f"diagonal must have {inner.shape[0]} entries, got {diagonal.shape[0]}")
        if not bool(torch.isfinite(diagonal).all()) or not bool((diagonal > 0).all()):
            raise ValueError("diagonal must be finite and positive (P^{-1/2} is undefined otherwise)")
        self.inner = inner
        self.model, self.loss_fn, self.mode = inner.model, inner.loss_fn, inner.mode
        self.device, self.torch_dtype = inner.device, inner.torch_dtype
        self.distributed = inner.distributed
        self.diagonal = diagonal.to(device=self.device, dtype=self.torch_dtype)
        self.scale = self.diagonal.rsqrt()[:, None]
        self.applications = 0
        LinearOperator.__init__(self, dtype=inner.dtype, shape=inner.shape)

    @property
    def graph_policy(self) -> str:
        """The graph policy of ``inner`` (its products are the ones made)."""
        return self.inner.graph_policy

    @property
    def graph_mode(self) -> str | None:
        """Whether ``inner`` keeps its first-order graphs (``None`` before its first product)."""
        return self.inner.graph_mode

    def close(self) -> None:
        """Free the graphs ``inner`` keeps."""
        self.inner.close()

    def unflatten(self, vector: Tensor) -> list[Tensor]:
        """Split a flat vector into tensors shaped like the parameters (as ``inner`` does)."""
        return self.inner.unflatten(vector)

    def shard_sum(self, vectors: Tensor) -> tuple[Tensor, int]:
        r"""This process's :math:`\sum_b n_b P^{-1/2}C_bP^{-1/2}V` and example count (from ``inner.shard_sum``)."""
        total, count = self.inner.shard_sum(self.scale * vectors)
        return self.scale * total, count

    def apply(self, vectors: Tensor) -> Tensor:
        """Apply :math:`P^{-1/2}CP^{-1/2}` to the columns of an ``(n, k)`` tensor (``k`` applications)."""
        if vectors.ndim != 2 or vectors.shape[0] != self.shape[0]:
            raise ValueError(f"vectors must have shape ({self.shape[0]}, k), got {tuple(vectors.shape)}")
        vectors = vectors.to(device=self.device, dtype=self.torch_dtype)
        result = self.scale * self.inner.apply(self.scale * vectors)
        self.applications += vectors.shape[1]
        return result
