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

Graph reuse. Every product needs the first-order graph of a batch (a forward pass and a gradient built with
``create_graph=True``); the graph does not depend on the vector, so an operator can keep it and make each later product
one backward pass through it (as PyHessian does for one batch), instead of rebuilding it (about one more gradient's
work per application). ``graph="reuse"`` keeps the graphs of all batches, ``"recompute"`` keeps none, and ``"auto"``
(default) keeps them while the measured size of the kept graphs (the unique tensor storages the autograd nodes save,
summed over batches as they are built during the first application) stays within ``graph_bytes``, and otherwise drops
them and recomputes from then on. The choice made is :attr:`CurvatureOperator.graph_mode` and the measured size
:attr:`CurvatureOperator.graph_nbytes`. Products are the same with and without reuse: the same operations on the same
graph, column by column. Kept graphs are freed by :meth:`CurvatureOperator.close` (or on leaving a ``with`` block), or
when the operator is garbage-collected; the operator stays usable after ``close`` (the next product rebuilds under the
same policy).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Literal

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor, nn

from landscape._data import (
    Batch,
    Data,
    ForwardFn,
    as_batches,
    batch_to,
    functional_run,
    model_device,
    named_parameters,
)
from landscape._evaluation import IGNORE_INDEX, MODES, batch_weights, evaluation_mode
from landscape.distributed import all_reduce_sum, shard_batches

LossFn = Callable[[Tensor, Tensor], Tensor]
GraphPolicy = Literal["reuse", "recompute", "auto"]
GRAPH_POLICIES = ("reuse", "recompute", "auto")
GRAPH_BYTES = 2**30  # default bound on the kept first-order graphs with graph="auto"

__all__ = ["CurvatureOperator", "GGNOperator", "HessianOperator"]


class CurvatureOperator(LinearOperator):
    """Common bookkeeping of the curvature operators: parameters, data, flat vectors, counting, NumPy/torch dispatch.

    Args:
        model: the network; its trainable parameters at construction time define the point of evaluation. It is
            never modified (its modes are put back after every application).
        loss_fn: ``loss_fn(outputs, targets)``, a mean over the batch.
        data: a pair ``(inputs, targets)`` or an iterable of pairs.
        dtype: computation dtype, ``torch.float32`` or ``torch.float64``; parameters, buffers and floating inputs
            are cast to it. ``None`` keeps the parameters' dtype, float32 for half-precision parameters (whose
            products keep about three digits: Lanczos on them restarted on rounding noise and returned a top
            eigenvalue 6 % off). A ``forward_fn`` must then cast inputs to the parameters' dtype, not to a fixed
            ``.half()``.
        batch_size: split a single pair into batches of this size (memory bound); ``None`` keeps it whole.
        distributed: data parallel over the ranks of the default process group: pass the same ``data`` on every
            rank; each keeps its shard and every application all-reduces. Every rank must make the same
            applications (estimators with the same seed do). No effect in a single process.
        mode: ``"eval"`` (default: BatchNorm running statistics, no dropout) or ``"train"`` (batch statistics,
            dropout): the mode the model is in during every forward pass of an application, whatever its own mode
            (an application through kept graphs runs none and leaves the model alone); the estimators record it in
            their results' config.
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)`` for models with their own calling convention
            (default: ``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)``, see :mod:`landscape._data`).
        graph: ``"reuse"`` keep every batch's first-order graph across products, ``"recompute"`` rebuild it for every
            application, ``"auto"`` keep them while their measured size stays within ``graph_bytes`` (see the module
            docstring).
        graph_bytes: memory bound of ``graph="auto"`` in bytes (``None``: :data:`GRAPH_BYTES`, 1 GiB).
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
        *,
        graph: GraphPolicy = "auto",
        graph_bytes: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
        if graph not in GRAPH_POLICIES:
            raise ValueError(f"Invalid graph: {graph!r} (expected one of {GRAPH_POLICIES})")
        if graph_bytes is not None and not (isinstance(graph_bytes, int) and graph_bytes >= 0):
            raise ValueError(f"Invalid graph_bytes: {graph_bytes!r} (a non-negative int)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"Invalid dtype: {dtype} (float32 or float64: in half precision the products keep about three digits, "
                "too few for the Krylov estimators)"
            )
        if not isinstance(distributed, bool):
            raise TypeError(f"distributed must be a bool, got {type(distributed).__name__}")
        params = named_parameters(model)
        if not params:
            raise ValueError("model has no trainable parameter")
        self.model = model
        self.mode = mode
        self.loss_fn = loss_fn
        self.device = model_device(model)
        self.torch_dtype = dtype or torch.promote_types(next(iter(params.values())).dtype, torch.float32)
        self.forward_fn = forward_fn
        batches = as_batches(data, batch_size, forward_fn)
        self.distributed = distributed
        if distributed:
            batches = shard_batches(batches, forward_fn)
        self.batches = [self._cast(batch) for batch in batches]
        # n_b: the examples each batch's mean loss averages over (without its ignored targets); batches of ignored
        # targets only add no term and are left out
        weights = batch_weights(self.batches, loss_fn, forward_fn)
        self.batches = [batch for batch, n in zip(self.batches, weights, strict=True) if n]
        self.sizes = [n for n in weights if n]
        self.num_data = sum(self.sizes)
        if not self.num_data and not distributed:
            raise ValueError(f"every target is {IGNORE_INDEX} (ignore_index): the loss has no term to differentiate")
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.numels = [p.numel() for p in params.values()]
        self.params = {n: p.detach().to(self.torch_dtype).requires_grad_(True) for n, p in params.items()}
        self.buffers = {n: self._cast(b.detach()).clone() for n, b in model.named_buffers()}
        # frozen parameters in the operator's dtype too (cast once; the model's own where already in it)
        self.frozen = {
            n: p.detach().to(self.torch_dtype)
            for n, p in model.named_parameters()
            if n not in params and p.is_floating_point() and p.dtype != self.torch_dtype
        }
        self.applications = 0
        self.graph_policy: GraphPolicy = graph
        self.graph_bytes = GRAPH_BYTES if graph_bytes is None else graph_bytes
        self.graph_mode: str | None = None  # "reuse" or "recompute" once the first application decided
        self.graph_nbytes = 0  # measured size of the kept graphs
        self._graphs: list[Any] = []
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
        return functional_run(self.model, (self.params, self.frozen, buffers), batch, self.forward_fn)

    def shard_sum(self, vectors: Tensor) -> tuple[Tensor, int]:
        r"""Return :math:`\sum_b n_b C_b V` over this process's batches and the example count :math:`\sum_b n_b`.

        Args:
            vectors: ``(n, k)`` tensor of ``k`` flat vectors, in the operator's dtype and device.
        """
        total = None
        keep = self.graph_mode != "recompute" and self.graph_policy != "recompute"
        for index, (batch, size) in enumerate(zip(self.batches, self.sizes, strict=True)):
            if index < len(self._graphs):
                graph = self._graphs[index]
            else:
                graph = self._build_graph(batch)
                if keep:
                    keep = self._keep(graph)
            product = self._graph_product(graph, vectors)
            if total is None:  # laid out as ``vectors`` (one allocation, no zero fill)
                total = torch.mul(product, size, out=torch.empty_like(vectors))
            else:
                total += product.mul_(size)  # a new tensor: scaled in place
        if self.graph_mode is None:
            self.graph_mode = "reuse" if keep else "recompute"
        if total is None:  # this process's batches are all ignored targets
            total = torch.zeros_like(vectors)
        return total, self.num_data

    def _keep(self, graph: Any) -> bool:
        """Keep a newly built batch graph if the policy and the memory bound allow; else drop all (recompute)."""
        self.graph_nbytes += _graph_nbytes(graph)
        if self.graph_policy == "reuse" or self.graph_nbytes <= self.graph_bytes:
            self._graphs.append(graph)
            return True
        self._graphs.clear()
        self.graph_nbytes = 0
        self.graph_mode = "recompute"
        return False

    def close(self) -> None:
        """Free the kept first-order graphs; a later product rebuilds them under the same policy."""
        self._graphs = []
        self.graph_nbytes = 0
        self.graph_mode = None

    def __enter__(self) -> CurvatureOperator:
        """The operator itself; its kept graphs are freed on leaving the ``with`` block."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Free the kept graphs (:meth:`close`)."""
        self.close()

    def _build_graph(self, batch: Batch) -> Any:
        """The first-order graph of one batch: everything a product needs that does not depend on the vector."""
        raise NotImplementedError

    def _graph_product(self, graph: Any, vectors: Tensor) -> Tensor:
        """:math:`C_b V` for one batch's graph (from :meth:`_build_graph`), keeping the graph intact; a new tensor."""
        raise NotImplementedError

    def apply(self, vectors: Tensor) -> Tensor:
        """Apply the operator to the columns of an ``(n, k)`` tensor (``k`` applications)."""
        if vectors.ndim != 2 or vectors.shape[0] != self.shape[0]:
            raise ValueError(f"vectors must have shape ({self.shape[0]}, k), got {tuple(vectors.shape)}")
        vectors = vectors.to(device=self.device, dtype=self.torch_dtype)
        forward = len(self._graphs) < len(self.batches)  # some batch's graph is to be built: a forward pass runs
        with (
            torch.autocast(self.device.type, enabled=False),  # never mixed precision, even inside a caller's autocast
            evaluation_mode(self.model, self.mode) if forward else nullcontext(),  # kept graphs need no mode
        ):
            total, count = self.shard_sum(vectors)
        if self.distributed:
            total, count = all_reduce_sum(total, count)
        self.applications += vectors.shape[1]
        return total.div_(count)  # total is this application's own tensor

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


def _graph_nbytes(graph: Any) -> int:
    """Bytes of the unique tensor storages saved by the autograd nodes reachable from the tensors in ``graph``."""
    tensors = [t for item in graph for t in (item if isinstance(item, tuple) else (item,)) if isinstance(t, Tensor)]
    roots = [t.grad_fn for t in tensors if t.grad_fn is not None]
    seen_nodes, storages, stack = set(), {}, list(roots)
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        for attr in dir(node):
            if attr.startswith("_saved_"):
                try:
                    value = getattr(node, attr)
                except RuntimeError:  # freed or inaccessible saved value
                    continue
                for t in value if isinstance(value, (tuple, list)) else (value,):
                    if isinstance(t, Tensor) and t.device.type != "meta":
                        storage = t.untyped_storage()
                        storages[(t.device, storage.data_ptr())] = storage.nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return sum(storages.values())


class HessianOperator(CurvatureOperator):
    r"""The Hessian :math:`H = \nabla^2_\theta L(\theta)` of the data-averaged loss, applied by double backward.

    With :math:`L = \sum_b \frac{n_b}{N} L_b` over batches of :math:`n_b` examples (for cross-entropy, targets
    not ignored),

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

    def _build_graph(self, batch: Batch) -> tuple[Tensor, ...]:
        loss = self.loss_fn(*self._outputs(batch))
        grads = torch.autograd.grad(loss, list(self.params.values()), create_graph=True, materialize_grads=True)
        # the gradient's parts that depend on theta, by parameter index; none: zero Hessian (empty graph)
        return tuple((i, g) for i, g in enumerate(grads) if g.requires_grad)

    def _graph_product(self, graph: tuple[tuple[int, Tensor], ...], vectors: Tensor) -> Tensor:
        if not graph:
            return torch.zeros_like(vectors)
        result = vectors.new_empty(vectors.shape[::-1])  # one contiguous row per column, returned transposed
        index, grads = zip(*graph, strict=True)
        params = list(self.params.values())
        for column, v in enumerate(vectors.T.contiguous()):  # no copy for one column
            parts = self.unflatten(v)
            products = torch.autograd.grad(
                grads, params, grad_outputs=[parts[i] for i in index], retain_graph=True, materialize_grads=True
            )
            torch.cat([p.reshape(-1) for p in products], out=result[column])  # straight into the row
        return result.T


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

    def _build_graph(self, batch: Batch) -> tuple[Tensor, ...]:
        params = list(self.params.values())
        outputs, targets = self._outputs(batch)
        detached = outputs.detach().requires_grad_(True)
        loss_grad = torch.autograd.grad(self.loss_fn(detached, targets), detached, create_graph=True)[0]
        if not loss_grad.requires_grad:  # loss linear in the outputs: zero output Hessian
            return ()
        dummy = torch.zeros_like(outputs, requires_grad=True)
        vjp = torch.autograd.grad(outputs, params, grad_outputs=dummy, create_graph=True, materialize_grads=True)
        return (outputs, detached, loss_grad, dummy, *vjp)

    def _graph_product(self, graph: tuple[Tensor, ...], vectors: Tensor) -> Tensor:
        if not graph:
            return torch.zeros_like(vectors)
        outputs, detached, loss_grad, dummy, *vjp = graph
        params = list(self.params.values())
        columns = []
        for v in vectors.T.contiguous():
            jv = torch.autograd.grad(vjp, dummy, grad_outputs=self.unflatten(v), retain_graph=True)[0]
            hjv = torch.autograd.grad(loss_grad, detached, grad_outputs=jv, retain_graph=True)[0]
            jthjv = torch.autograd.grad(outputs, params, grad_outputs=hjv, retain_graph=True, materialize_grads=True)
            columns.append(_flat(jthjv))
        return torch.stack(columns).T
