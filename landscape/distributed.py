r"""Scale-out helpers on ``torch.distributed``: process group, rank and world, sharding, gathering and reducing.

Everything here is a no-op in a plain single process: with no process group initialised, :func:`rank` is 0,
:func:`world_size` is 1, :func:`shard` returns its input, :func:`all_gather_objects` returns ``[obj]`` and
:func:`all_reduce_sum` returns its arguments. A run launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) opens the default process group with :func:`process_group`:
gloo on CPU, NCCL when the device is CUDA.

Three kinds of work are split (Li et al. 2018 split surfaces with MPI; here the engine is ``torch.distributed``):

* grid chunks of a surface, by a static round robin of chunk ids, rank :math:`r` of :math:`W` taking the ids
  :math:`\{c : c \equiv r \pmod W\}` (:func:`evaluate_job`); finished chunks are persisted by the rank that computed
  them, so a restart with any world size loads them;
* the data of a curvature operator (:func:`shard_batches`): with rank :math:`r` holding examples :math:`S_r`,
  :math:`Hv = \frac{1}{N}\sum_r \sum_{i \in S_r} H_i v` with :math:`N = \sum_r |S_r|`, one all-reduce of the shard
  sums and counts per application (:func:`all_reduce_sum`);
* the configurations of a study sweep, again round robin.

Example:
    >>> with process_group():  # plain process: nothing to set up
    ...     rank(), world_size(), shard(list(range(5)))
    (0, 1, [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from landscape._data import Batch, ForwardFn, batch_length, map_tensors

if TYPE_CHECKING:
    from landscape._grid import ChunkResult, SurfaceJob

T = TypeVar("T")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

__all__ = [
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "evaluate_job",
    "is_distributed",
    "is_main",
    "launched",
    "local_device",
    "process_group",
    "rank",
    "shard",
    "shard_batches",
    "world_size",
]


def is_distributed() -> bool:
    """Whether a default process group is initialised (any world size)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes combined results."""
    return rank() == 0


def launched() -> bool:
    """Whether the environment holds a ``torchrun``-style launch (``RANK``, ``WORLD_SIZE``, ``MASTER_*``)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def local_device(device: str | torch.device) -> str:
    """The device this rank should use: a bare ``"cuda"`` becomes ``cuda:LOCAL_RANK`` under a launch, else unchanged.

    Example:
        >>> local_device("cpu")
        'cpu'
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and is_distributed():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank()))}"
    return str(device)


@contextmanager
def process_group(
    device: str | torch.device = "cpu", backend: str | None = None, timeout_s: float = 1800.0
) -> Iterator[None]:
    """Open the default process group for the duration of the block when launched by ``torchrun``; else nothing.

    The group is opened only if the ``torchrun`` variables are set and no group exists yet, and it is destroyed on
    leaving the block only if it was opened here. A plain process (no variables) needs no set-up at all.

    Args:
        device: the device the work runs on (or ``"auto"``); CUDA selects NCCL and this rank's GPU (``LOCAL_RANK``),
            anything else gloo.
        backend: ``"gloo"`` or ``"nccl"`` to override the choice.
        timeout_s: how long a collective waits for the other ranks before failing (seconds).
    """
    if backend not in (None, "gloo", "nccl"):
        raise ValueError(f"Invalid backend: {backend!r} (expected 'gloo' or 'nccl')")
    if timeout_s <= 0:
        raise ValueError(f"Invalid timeout_s: {timeout_s}")
    if is_distributed() or not launched():
        yield
        return
    cuda = torch.cuda.is_available() if device == "auto" else torch.device(device).type == "cuda"
    backend = backend or ("nccl" if cuda and dist.is_nccl_available() else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if world_size() > 1:
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's items by static round robin: ``items[rank::world_size]``.

    Example:
        >>> shard(["a", "b", "c"])  # one process keeps everything
        ['a', 'b', 'c']
    """
    return list(items[rank() :: world_size()])


def shard_batches(batches: Sequence[Batch], forward_fn: ForwardFn | None = None) -> list[Batch]:
    """This rank's part of the data, every example on exactly one rank.

    With at least as many batches as ranks, batches are dealt round robin; otherwise every batch is cut into
    ``world_size`` contiguous pieces and this rank keeps piece ``rank`` of each (a rank may hold no example).
    """
    size, me = world_size(), rank()
    if len(batches) >= size:
        return list(batches[me::size])
    pieces = [map_tensors(b, lambda t: t.tensor_split(size)[me] if t.dim() > 0 else t) for b in batches]
    return [p for p in pieces if batch_length(p, forward_fn)]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in a single process."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(total: Tensor, count: int) -> tuple[Tensor, int]:
    r"""Sum a shard's ``total`` and example ``count`` over the ranks at once: :math:`(\sum_r T_r, \sum_r n_r)`.

    The count rides along as one extra element, so the reduction is a single all-reduce in ``total``'s dtype (exact
    for counts below :math:`2^{24}` in float32, :math:`2^{53}` in float64). Every rank receives the same bits.

    Example:
        >>> total, count = all_reduce_sum(torch.ones(2, 1), 3)  # one process: unchanged
        >>> total.flatten().tolist(), count
        ([1.0, 1.0], 3)
    """
    if world_size() == 1:
        return total, count
    packed = torch.cat([total.reshape(-1), total.new_tensor([float(count)])])
    dist.all_reduce(packed)
    return packed[:-1].reshape(total.shape), round(float(packed[-1]))


def evaluate_job(job: SurfaceJob) -> dict[int, ChunkResult]:
    """Evaluate a surface job's chunks split round robin over the ranks, and give every rank all the results.

    Each rank evaluates (or loads from the job's cache) its chunk ids ``range(n_chunks)[rank::world_size]`` and
    persists what it computed, so a restart with any world size resumes from every finished chunk. The results are
    then all-gathered; :attr:`SurfaceJob.computed` and :attr:`SurfaceJob.reused` list the chunk ids over all ranks.
    """
    results = job.evaluate(shard(range(job.n_chunks)))
    if world_size() == 1:
        return results
    parts = all_gather_objects((results, job.computed, job.reused, job.evaluator_name))
    merged: dict[int, ChunkResult] = {}
    for part, _, _, _ in parts:
        merged.update(part)
    job.computed = sorted(i for _, computed, _, _ in parts for i in computed)
    job.reused = sorted(i for _, _, reused, _ in parts for i in reused)
    job.evaluator_name = next((name for _, _, _, name in parts if name is not None), None)
    return merged
