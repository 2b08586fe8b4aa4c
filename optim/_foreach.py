"""Multi-tensor (``torch._foreach_*``) plumbing shared by valley's optimizers: which path to take, and buckets.

Every optimizer here has a per-tensor kernel (the reference) and a multi-tensor kernel beside it that applies the
same arithmetic to lists of tensors at once. The multi-tensor kernel runs on buckets of tensors that share device,
dtype and every per-tensor decision of the step (step count, projection, counter kind), so a decision taken for
one tensor is never taken for its neighbours. Where a bucket's update is Adam's or momentum SGD's with folded
factors, it runs as torch's fused kernel (one pass over memory; :func:`fused_adam`, :func:`fused_sgd`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices
from torch.utils.weak import WeakIdKeyDictionary

Kernel = TypeVar("Kernel", bound=Callable[..., Any])


def use_foreach(foreach: bool | None, tensors: Sequence[Tensor]) -> bool:
    """Whether to take the multi-tensor path: ``foreach`` when given, else torch's default rule.

    torch's rule (``torch.optim``'s ``foreach=None``): on when every tensor lives on a device with multi-tensor
    kernels (CUDA and the like), off on CPU. (On CPU ``foreach=True`` is often the faster path here, through the
    fused kernels; the default stays torch's so that ``foreach=None`` means the same in valley and torch.)
    """
    if foreach is not None:
        return bool(foreach)
    devices = _get_foreach_kernels_supported_devices()
    return bool(tensors) and all(t.device.type in devices for t in tensors)


def pick(
    per_tensor: Kernel,
    multi_tensor: Kernel,
    group: Mapping[str, Any],
    tensors: Sequence[Tensor],
    compiled: Kernel | None = None,
) -> Kernel:
    """The kernel a param group asks for, all of one signature.

    ``compiled`` (:mod:`optim._compiled`) when the optimizer has one and the group says ``compiled=True``; else
    ``multi_tensor`` when :func:`use_foreach` says so for the group's ``foreach``; else ``per_tensor``.
    """
    if compiled is not None and group.get("compiled"):
        return compiled
    return multi_tensor if use_foreach(group.get("foreach"), tensors) else per_tensor


def copies(tensors: Sequence[Tensor]) -> list[Tensor]:
    """New tensors equal to ``tensors`` bit for bit, of the same dtypes and layouts, filled by one multi-tensor copy.

    (``torch._foreach_clone`` would say it more plainly but is missing from torch releases valley supports: 2.11.)
    """
    made = [torch.empty_like(t) for t in tensors]
    if made:  # multi-tensor ops refuse empty lists
        torch._foreach_copy_(made, list(tensors))
    return made


def buckets(
    lists: Sequence[Sequence[Any]], keys: Sequence[Hashable] | None = None, *, cpu_parts: bool = True
) -> list[tuple[Hashable, list[list[Any]]]]:
    """Split parallel lists into buckets whose first-list tensors share device, dtype and ``keys[i]``.

    Returns ``(key, lists)`` pairs, buckets in order of first appearance and the original order inside each; with
    ``cpu_parts`` a CPU bucket comes in cache-sized runs (:data:`CPU_PART`), for chains of multi-tensor ops.

    Example:
        >>> import torch
        >>> a, b, c = torch.zeros(1), torch.zeros(1, dtype=torch.float64), torch.ones(2)
        >>> [(key, len(bucket[0])) for key, bucket in buckets([[a, b, c], [1, 2, 3]], keys=[5, 5, 5])]
        [(5, 2), (5, 1)]
    """
    found: dict[Hashable, list[list[Any]]] = {}
    for index, first in enumerate(lists[0]):
        key = None if keys is None else keys[index]
        bucket = found.setdefault((first.device, first.dtype, key), [[] for _ in lists])
        for column, values in zip(bucket, lists, strict=True):
            column.append(values[index])
    return [(key[2], part) for key, bucket in found.items() for part in (_cpu_parts(bucket) if cpu_parts else [bucket])]


CPU_PART = 1 << 20
"""Most elements per multi-tensor call on CPU (whole tensors; a larger tensor goes alone)."""


def _cpu_parts(bucket: list[list[Any]]) -> list[list[list[Any]]]:
    """A CPU bucket cut into runs of at most :data:`CPU_PART` elements (other devices: whole).

    The scratch lists of a chain of multi-tensor ops then stay cache-sized, and their memory is reused from one
    run to the next instead of being mapped afresh.
    """
    tensors = bucket[0]
    if not tensors or tensors[0].device.type != "cpu":
        return [bucket]
    parts, start, size = [], 0, 0
    for index, tensor in enumerate(tensors):
        if size and size + tensor.numel() > CPU_PART:
            parts.append([column[start:index] for column in bucket])
            start, size = index, 0
        size += tensor.numel()
    parts.append([column[start:] for column in bucket])
    return parts


def batches(lists: Sequence[Sequence[Any]], foreach: bool) -> list[list[list[Any]]]:
    """Parallel lists cut into the lists that ``torch._foreach_*`` ops take, original order kept.

    The multi-tensor path gets one batch per device-and-dtype bucket (:func:`buckets`); the per-tensor path one
    batch per tensor, so the same bookkeeping code serves both paths (the wrappers' perturb-and-restore).
    """
    if foreach:
        return [bucket for _, bucket in buckets(lists)]
    return [[[values[index]] for values in lists] for index in range(len(lists[0]))]


class Workspace:
    """Work tensors shaped like the parameters, kept from one step to the next (not part of any optimizer state).

    A chain of multi-tensor ops needs temporaries as large as the parameters. Allocated afresh every step on CPU,
    they cost several times the arithmetic: memory that large is mapped and zeroed by the system on each
    allocation. A workspace keeps one buffer per CPU tensor instead; on other devices it keeps nothing (torch's
    caching allocator already reuses memory there) and the kernels take their multi-tensor ops' fresh results.
    """

    def __init__(self) -> None:
        self._buffers: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def like(self, tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> list[Tensor] | None:
        """One uninitialised buffer per tensor, same shape and device (``dtype`` if given); ``None`` off CPU."""
        if not tensors or tensors[0].device.type != "cpu":
            return None
        found = []
        for tensor in tensors:
            buffer = self._buffers.get(tensor)
            if (
                buffer is None
                or buffer.shape != tensor.shape
                or buffer.stride() != tensor.stride()
                or buffer.dtype != (dtype or tensor.dtype)
            ):
                buffer = torch.empty_like(tensor, dtype=dtype, memory_format=torch.preserve_format)
                self._buffers[tensor] = buffer
            found.append(buffer)
        return found


def workspace(optimizer: Optimizer) -> Workspace:
    """The :class:`Workspace` of ``optimizer``, made on first use (it is not saved with the optimizer)."""
    found = optimizer.__dict__.get("_workspace")
    if found is None:
        found = optimizer.__dict__["_workspace"] = Workspace()
    return found


def written(
    work: list[Tensor] | None,
    foreach_op: Callable[..., list[Tensor]],
    op: Callable[..., Tensor],
    *lists: Any,
    **kwargs: Any,
) -> list[Tensor]:
    """``op`` applied element-wise to parallel lists (tensors or scalars), its results written into ``work``.

    On CPU (``work`` given) each result goes into its buffer in one pass (``op(..., out=buffer)``; a buffer may
    also be an operand). Without ``work`` the multi-tensor ``foreach_op`` returns fresh tensors.
    """
    if work is None:
        return foreach_op(*lists, **kwargs)
    columns = [values if isinstance(values, (list, tuple)) else [values] * len(work) for values in lists]
    for buffer, *operands in zip(work, *columns, strict=True):
        op(*operands, out=buffer, **kwargs)
    return work


def fusable(*lists: Sequence[Tensor]) -> bool:
    """Whether torch's fused optimizer kernels can run on these parallel lists of one bucket.

    They take float32 or float64, and walk each tensor's memory in storage order, whatever its strides: so every
    tensor must be dense (no gaps, no overlaps) and laid out like its partners in the other lists (same strides),
    as autograd's gradient and a fresh state tensor are for a dense parameter. A slice of a larger tensor, or a
    gradient set by hand in another layout, takes the plain multi-tensor arithmetic instead.
    """
    if lists[0][0].dtype not in (torch.float32, torch.float64):
        return False
    return all(
        _dense(first) and all(other.stride() == first.stride() for other in others)
        for first, *others in zip(*lists, strict=True)
    )


def _dense(tensor: Tensor) -> bool:
    """Whether ``tensor`` covers a gap-free, non-overlapping block of memory (in any order of its dims)."""
    expected = 1
    for size, stride in sorted(zip(tensor.shape, tensor.stride(), strict=True), key=lambda pair: pair[1]):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def fused_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    step: int,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
) -> bool:
    r"""Run torch's fused Adam kernel on one bucket (one pass over memory); return ``False`` where it cannot run.

    With t = ``step`` (already counted), it computes, after the decay :math:`g ← g + λθ` (or with ``decoupled``
    :math:`θ ← θ(1-γλ)`, AdamW's),

    .. math::
        m ← β_1 m + (1-β_1) g,\quad v ← β_2 v + (1-β_2) g^2,\quad
        θ ← θ - \frac{γ}{1-β_1^t}\,\frac{m}{\sqrt{v}/\sqrt{1-β_2^t} + ε},

    the update of Adam-type optimizers here once their factors are folded into γ and ε (RAdam's rectified step,
    Adam-2k after its warm-up, AdamP where nothing is projected, AdaM3 with g := m and β₁ = 0); it agrees with
    their own arithmetic to rounding.
    """
    if not fusable(params, grads, exp_avgs, exp_avg_sqs):
        return False
    steps = [torch.full((), float(step), device=params[0].device)] * len(params)
    (torch._fused_adamw_ if decoupled else torch._fused_adam_)(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        eps=eps,
        amsgrad=False,
        maximize=False,
    )
    return True


def fused_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
) -> bool:
    r"""Run torch's fused momentum-SGD kernel on one bucket; return ``False`` where it cannot run.

    It computes :math:`b ← μ b + (1-τ) g`, then :math:`θ ← θ - γ d` with :math:`d = g + μ b` (Nesterov) or
    :math:`d = b` — SGDP's step where nothing is projected (its buffers start at 0, so no first-step copy).
    """
    if momentum == 0 or not fusable(params, grads, momentum_buffers):
        return False
    torch._fused_sgd_(
        params,
        grads,
        momentum_buffers,
        weight_decay=0.0,
        momentum=momentum,
        lr=lr,
        dampening=dampening,
        nesterov=nesterov,
        maximize=False,
        is_first_step=False,
    )
    return True


def fused_adagrad(
    params: list[Tensor], grads: list[Tensor], state_sums: list[Tensor], *, lr: float, eps: float
) -> bool:
    r"""Run torch's fused Adagrad kernel (CPU) on one bucket; return ``False`` where it cannot run.

    It computes :math:`s ← s + g^2`, then :math:`x ← x - η\,g/(\sqrt{s} + ε)` with η = ``lr`` (any sign) and ε =
    ``eps`` (no decay, no learning-rate decay): Expectigrad's step where every coordinate has counted every step,
    with η and ε scaled by √t (see :func:`optim.expectigrad.expectigrad_foreach`).
    """
    if params[0].device.type != "cpu" or not fusable(params, grads, state_sums):
        return False
    steps = [torch.ones((), device=params[0].device)] * len(params)  # without a learning-rate decay it is unused
    torch._fused_adagrad_(
        params, grads, state_sums, steps, lr=lr, lr_decay=0.0, weight_decay=0.0, eps=eps, maximize=False
    )
    return True
