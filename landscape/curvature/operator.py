r"""Curvature matrices of a loss behind one linear-operator interface: the Hessian and the generalised Gauss-Newton.

Both operators act on flat parameter vectors (the model's trainable parameters concatenated in registration order),
are frozen at the parameters they were built with, and average over ``data`` with batch-size weights, because every
loss is a mean over examples (see :mod:`landscape._data`). Each application is split in two: a per-shard sum
:math:`\sum_b n_b C_b v` with its example count :math:`\sum_b n_b`, then the normalisation by the count. With
``distributed=True`` each rank keeps its shard of the data (:func:`landscape.distributed.shard_batches`) and the sums
and counts are all-reduced before the division, so every rank applies the operator of the whole data set.

They are ``scipy.sparse.linalg.LinearOperator`` objects (``shape``, ``dtype``, ``matvec``/``matmat`` on NumPy arrays,
usable by ``eigsh``) whose ``matvec``/``matmat`` also accept torch tensors and then stay on the model's device. Every
application of the operator to one vector increments ``applications``. Products always run in the operator's dtype:
autocast (mixed precision a caller may use for training) is switched off inside.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor, nn

from landscape._data import (
    Batch,
    Data,
    ForwardFn,
    as_batches,
    batch_length,
    batch_to,
    functional_run,
    model_device,
    named_parameters,
)
from landscape._evaluation import MODES, evaluation_mode
from landscape.distributed import all_reduce_sum, shard_batches

LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["CurvatureOperator", "GGNOperator", "HessianOperator"]


class CurvatureOperator(LinearOperator):
    """Common bookkeeping of the curvature operators: parameters, data, flat vectors, counting, NumPy/torch dispatch.

    Args:
        model: the network; its trainable parameters at construction time define the point of evaluation. It is
            never modified (its modes are put back after every application).
        loss_fn: ``loss_fn(outputs, targets)``, a mean over the batch.
        data: a pair ``(inputs, targets)`` or an iterable of pairs.
        dtype: computation dtype (e.g. ``torch.float64``); parameters, buffers and floating inputs are cast to it.
            ``None`` keeps the parameters' dtype.
        batch_size: split a single pair into batches of this size (memory bound); ``None`` keeps it whole.
        distributed: data parallel over the ranks of the default process group: pass the same ``data`` on every
            rank; each keeps its shard and every application all-reduces. Every rank must make the same
            applications (estimators with the same seed do). No effect in a single process.
        mode: ``"eval"`` (default: BatchNorm running statistics, no dropout) or ``"train"`` (batch statistics,
            dropout): the mode the model is in during every application, whatever its own mode; the estimators
            record it in their results' config.
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)`` for models with their own calling convention
            (default: ``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)``, see :mod:`landscape._data`).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Data,
        dtype: torch.dtype | None = None,
        batch_size: int | None = None,
        distributed: bool = False,
        mode: str = "eval",
        forward_fn: ForwardFn | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"Invalid dtype: {dtype}")
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be a bool, got {type(distributed).__name__}")
        params = named_parameters(model)
        if not params:
            raise ValueError("model has no trainable parameter")
        self.model = model
        self.mode = mode
        self.loss_fn = loss_fn
        self.device = model_device(model)
        self.torch_dtype = dtype or next(iter(params.values())).dtype
        self.forward_fn = forward_fn
        batches = as_batches(data, batch_size, forward_fn)
        self.distributed = distributed
        if distributed:
            batches = shard_batches(batches, forward_fn)
        self.batches = [self._cast(batch) for batch in batches]
        self.sizes = [batch_length(batch, forward_fn) for batch in self.batches]
        self.num_data = sum(self.sizes)
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.numels = [p.numel() for p in params.values()]
        self.params = {n: p.detach().to(self.torch_dtype).requires_grad_(True) for n, p in params.items()}
        self.buffers = {n: self._cast(b.detach()).clone() for n, b in model.named_buffers()}
        self.applications = 0
        n = sum(self.numels)
        super().__init__(dtype=np.dtype(str(self.torch_dtype).removeprefix("torch.")), shape=(n, n))

    def _cast(self, batch: Batch) -> Batch:
        """Every tensor of a batch (or a single tensor) on the device, floating-point ones in the operator's dtype.

        Targets are cast too (as before for tensors): float targets of a regression loss follow the dtype.
        """
        return batch_to(batch, self.device, self.torch_dtype)

    def unflatten(self, vector: Tensor) -> list[Tensor]:
        """Split a flat vector into tensors shaped like the parameters."""
        return [c.view(s) for c, s in zip(vector.split(self.numels), self.shapes, strict=True)]

    def _outputs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        buffers = {n: b.clone() for n, b in self.buffers.items()}
        return functional_run(self.model, (self.params, buffers), batch, self.forward_fn)

    def shard_sum(self, vectors: Tensor) -> tuple[Tensor, int]:
        r"""Return :math:`\sum_b n_b C_b V` over this process's batches and the example count :math:`\sum_b n_b`.

        Args:
            vectors: ``(n, k)`` tensor of ``k`` flat vectors, in the operator's dtype and device.
        """
        total = torch.zeros_like(vectors)
        for batch, size in zip(self.batches, self.sizes, strict=True):
            total += size * self._batch_product(batch, vectors)
        return total, self.num_data

    def _batch_product(self, batch: Batch, vectors: Tensor) -> Tensor:
        raise NotImplementedError

    def apply(self, vectors: Tensor) -> Tensor:
        """Apply the operator to the columns of an ``(n, k)`` tensor (``k`` applications)."""
        if vectors.ndim != 2 or vectors.shape[0] != self.shape[0]:
            raise ValueError(f"vectors must have shape ({self.shape[0]}, k), got {tuple(vectors.shape)}")
        vectors = vectors.to(device=self.device, dtype=self.torch_dtype)
        with (
            torch.autocast(self.device.type, enabled=False),  # never mixed precision, even inside a caller's autocast
            evaluation_mode(self.model, self.mode),
        ):
            total, count = self.shard_sum(vectors)
        if self.distributed:
            total, count = all_reduce_sum(total, count)
        self.applications += vectors.shape[1]
        return total / count

    def matvec(self, x: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Return :math:`Cx`; a torch tensor stays a torch tensor (on the operator's device), else NumPy as scipy."""
        if isinstance(x, Tensor):
            return self.apply(x.reshape(-1, 1)).reshape(x.shape)
        return super().matvec(x)

    def matmat(self, x: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """Return :math:`CX` for an ``(n, k)`` matrix; torch in, torch out, else NumPy as scipy."""
        if isinstance(x, Tensor):
            return self.apply(x)
        return super().matmat(x)

    def _matmat(self, x: np.ndarray) -> np.ndarray:
        result = self.apply(torch.from_numpy(np.ascontiguousarray(x)).reshape(self.shape[0], -1))
        return result.detach().cpu().numpy().astype(self.dtype, copy=False)

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._matmat(np.reshape(x, (-1, 1))).reshape(-1)

    def _adjoint(self) -> CurvatureOperator:
        return self


def _flat(tensors: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class HessianOperator(CurvatureOperator):
    r"""The Hessian :math:`H = \nabla^2_\theta L(\theta)` of the data-averaged loss, applied by double backward.

    With :math:`L = \sum_b \frac{n_b}{N} L_b` over batches of :math:`n_b` examples,

    .. math::
        Hv = \frac{1}{N} \sum_b n_b \, \nabla_\theta \big( \nabla_\theta L_b(\theta)^\top v \big)

    (Pearlmutter 1994): one forward pass and one gradient graph per batch serve all columns of a ``matmat``.
    Arguments as :class:`CurvatureOperator`.

    Example:
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> _ = model.weight.data.copy_(torch.tensor([[1.0, -1.0]]))
        >>> x, y = torch.eye(2), torch.zeros(2, 1)
        >>> H = HessianOperator(model, torch.nn.functional.mse_loss, (x, y), dtype=torch.float64)
        >>> H.matvec(np.array([1.0, 0.0])), H.applications
        (array([1., 0.]), 1)
    """

    def _batch_product(self, batch: Batch, vectors: Tensor) -> Tensor:
        params = list(self.params.values())
        loss = self.loss_fn(*self._outputs(batch))
        grad = _flat(torch.autograd.grad(loss, params, create_graph=True, materialize_grads=True))
        if not grad.requires_grad:  # gradient constant in theta: zero Hessian
            return torch.zeros_like(vectors)
        columns = [
            _flat(torch.autograd.grad(grad, params, grad_outputs=v, retain_graph=True, materialize_grads=True))
            for v in vectors.T
        ]
        return torch.stack(columns, dim=1)


class GGNOperator(CurvatureOperator):
    r"""The generalised Gauss-Newton matrix :math:`G = \frac{1}{N}\sum_b n_b J_b^\top H^{out}_b J_b`.

    :math:`J_b = \partial f(x_b;\theta)/\partial\theta` is the Jacobian of the network outputs and
    :math:`H^{out}_b = \nabla^2_f L_b` the Hessian of the batch loss with respect to the outputs (Schraudolph 2002;
    Martens 2020, eq. 13). :math:`Jv` comes from the double-vjp trick (the vjp :math:`J^\top u` is linear in
    :math:`u`; differentiating it in :math:`u` along :math:`v` gives :math:`Jv`), then :math:`H^{out}(Jv)` by double
    backward in the outputs, then :math:`J^\top(\cdot)` by one vjp. Arguments as :class:`CurvatureOperator`.

    Example:
        >>> model = torch.nn.Linear(2, 1, bias=False)
        >>> x, y = torch.eye(2), torch.zeros(2, 1)
        >>> G = GGNOperator(model, torch.nn.functional.mse_loss, (x, y), dtype=torch.float64)
        >>> G.matvec(np.array([0.0, 2.0]))
        array([0., 2.])
    """

    def _batch_product(self, batch: Batch, vectors: Tensor) -> Tensor:
        params = list(self.params.values())
        outputs, targets = self._outputs(batch)
        detached = outputs.detach().requires_grad_(True)
        loss_grad = torch.autograd.grad(self.loss_fn(detached, targets), detached, create_graph=True)[0]
        if not loss_grad.requires_grad:  # loss linear in the outputs: zero output Hessian
            return torch.zeros_like(vectors)
        dummy = torch.zeros_like(outputs, requires_grad=True)
        vjp = torch.autograd.grad(outputs, params, grad_outputs=dummy, create_graph=True, materialize_grads=True)
        columns = []
        for v in vectors.T:
            jv = torch.autograd.grad(vjp, dummy, grad_outputs=self.unflatten(v), retain_graph=True)[0]
            hjv = torch.autograd.grad(loss_grad, detached, grad_outputs=jv, retain_graph=True)[0]
            jthjv = torch.autograd.grad(outputs, params, grad_outputs=hjv, retain_graph=True, materialize_grads=True)
            columns.append(_flat(jthjv))
        return torch.stack(columns, dim=1)
