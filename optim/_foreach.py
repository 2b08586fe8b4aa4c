"""Multi-tensor (``torch._foreach_*``) plumbing shared by valley's optimizers: which path to take, and buckets.

Every optimizer here has a per-tensor kernel (the reference) and a multi-tensor kernel beside it that applies the
same arithmetic to lists of tensors at once. The multi-tensor kernel runs on buckets of tensors that share device,
dtype and every per-tensor decision of the step (step count, projection, counter kind), so a decision taken for
one tensor is never taken for its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from torch import Tensor
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

Kernel = TypeVar("Kernel", bound=Callable[..., Any])


def use_foreach(foreach: bool | None, tensors: Sequence[Tensor]) -> bool:
    """Whether to take the multi-tensor path: ``foreach`` when given, else torch's default rule.

    torch's rule (``torch.optim``'s ``foreach=None``): on when every tensor lives on a device with multi-tensor
    kernels (CUDA and the like), off on CPU, where one tensor at a time is as fast and needs no scratch lists.
    """
    if foreach is not None:
        return bool(foreach)
    devices = _get_foreach_kernels_supported_devices()
    return bool(tensors) and all(t.device.type in devices for t in tensors)


def pick(per_tensor: Kernel, multi_tensor: Kernel, foreach: bool | None, tensors: Sequence[Tensor]) -> Kernel:
    """Return ``multi_tensor`` when :func:`use_foreach` says so, else ``per_tensor`` (same signature)."""
    return multi_tensor if use_foreach(foreach, tensors) else per_tensor


def buckets(
    lists: Sequence[Sequence[Any]], keys: Sequence[Hashable] | None = None
) -> list[tuple[Hashable, list[list[Any]]]]:
    """Split parallel lists into buckets whose first-list tensors share device, dtype and ``keys[i]``.

    Returns ``(key, lists)`` pairs, buckets in order of first appearance and the original order inside each.

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
    return [(key[2], bucket) for key, bucket in found.items()]


def batches(lists: Sequence[Sequence[Any]], foreach: bool) -> list[list[list[Any]]]:
    """Parallel lists cut into the lists that ``torch._foreach_*`` ops take, original order kept.

    The multi-tensor path gets one batch per device-and-dtype bucket (:func:`buckets`); the per-tensor path one
    batch per tensor, so the same bookkeeping code serves both paths (the wrappers' perturb-and-restore).
    """
    if foreach:
        return [bucket for _, bucket in buckets(lists)]
    return [[[values[index]] for values in lists] for index in range(len(lists[0]))]
