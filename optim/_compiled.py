"""The compiled path: an optimizer's update of one tensor, compiled by ``torch.compile`` into a single kernel.

A multi-tensor step is a chain of element-wise ops, each one pass over memory; torch's fused Adam does its whole
update in one pass. An optimizer with ``compiled=True`` writes its update for one tensor as a :class:`Rule`;
``torch.compile`` fuses the rule into one kernel (one pass over the tensors it reads and writes, plus one per
reduction, such as AdamP's projection test). Shapes are dynamic, so one compiled kernel serves every tensor of a
device and dtype, whatever its size. The rule's numbers (step-dependent factors) reach the kernel as one float64
tensor, an input rather than constants, so no step recompiles (as Python floats they would be inputs too, but each
costs a conversion on every call: 77 µs a call with four of them, 47 µs with the tensor). Only boolean switches (a
branch of the rule), a new device or dtype, and a kernel's first tensor of :data:`PARALLEL` elements compile again.

The first step pays for the compilation (about 10 s on a CPU, which needs a C++ compiler for it; a cache under the
system's temporary folder shortens it in later processes). float32 and float64 tensors take the compiled rule; others
(bfloat16, float16, whose rounding at every op the compiled kernel would not keep) take the multi-tensor path.

On a CPU a compiled kernel runs on one thread unless its tensor is large (:data:`PARALLEL`), while the multi-tensor
path's ops use all of torch's intra-op threads: on a machine with many cores, compare the two with
``benchmarks/bench_optim.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

COMPILED_DTYPES = (torch.float32, torch.float64)
PARALLEL = 1 << 20
"""Fewest elements for which a CPU tensor gets a kernel on all of torch's intra-op threads; the others run on one.

In interleaved runs on two cores (idle threads sleeping, ``OMP_WAIT_POLICY=PASSIVE``) two threads for ResNet-18's
four tensors of at least 2^20 elements took AdaBelief's compiled step from 14.3 to 12.3 ms and Expectigrad's from
15.8 to 13.4 ms (2^19 gained nothing more); below that, waking the other thread (up to 120 µs a parallel region)
costs about what it saves. A rule over rows is therefore kept to one loop (its rows' sums, combined by the caller):
each further parallel loop in a kernel ends in a wait for the other thread, and a projection test that also
combined its rows in the kernel took as long on two threads as on one.

The thread count is stated in ``torch.compile``'s options (``cpp.threads``) rather than left to it: it plans
threads from the sizes of the first tensors it compiles on (stand-ins of a few elements here) and caches what it
planned across processes. GPU kernels are not affected."""
KINDS = 64
"""Most compiled graphs of one rule (devices x dtypes x switch settings)."""
BATCH = 1 << 18
"""Most elements in one batch of small tensors."""
KEPT = 16
"""Most sets of flat work tensors a rule keeps between steps (one per batch: at most KEPT x BATCH x arguments)."""
OWN_CALL = 1 << 15
"""Fewest elements for which a tensor gets a call of its own; smaller ones are batched (pointwise rules).

Each call of a compiled kernel costs 0.05-0.2 ms of Python on a CPU, about what a pass over 2^15-2^16 float32
values takes. A pointwise rule runs on the small tensors of a step together: copied into one flat work tensor per
argument, updated in one call, and the tensors it changes copied back. torch copies a tensor of 2^15 elements or
more (its grain size) on all intra-op threads, which wakes them: where idle threads sleep (``OMP_WAIT_POLICY=
PASSIVE``) a copy of ResNet-18's small tensors into a work tensor took 0.25 ms on two threads and 0.04 ms on one.
Below 2^15 every copy runs on the calling thread. Interleaved, ResNet-18's compiled steps on two cores with
sleeping threads, 2^16 → 2^15: AdaBelief 9.72 → 7.75 ms, Expectigrad 11.22 → 9.45, SGDP 11.97 → 11.32; with
spinning threads (the default) 7.40 → 7.12, 8.63 → 8.31, 9.83 → 10.02 (within noise).
"""
DEVICE_OWN_CALL, DEVICE_BATCH = 1 << 20, 1 << 24
"""The two limits above on a GPU (any device but the CPU). A call costs the same Python there while a pass over
memory is some fifty times faster, so tensors of up to 2^20 elements are batched (the copies into and out of the
work tensors move more bytes, but one call replaces dozens: ResNet-18's step on an H200 took 2.0 ms with its
tensors batched, 3.2 ms with the CPU's limits). Work tensors are not kept there: torch's caching allocator
already reuses the memory, so a step holds at most one batch's."""
PIECE = 4096
"""Most elements of a row piece: a rule over rows sees each row cut into equal pieces of at most this many elements
where the row length has such a divisor (:func:`pieces`), one piece per row of its view; the caller adds up a row's
pieces. ``torch.compile`` sums more than 4096 float32 values on a CPU with a cascade (pairwise) helper kept per
row, whose bookkeeping made the projection test of ResNet-18's four 512 x 4608 tensors take 8.1 ms against 5.3 ms
in pieces of 2304 (one thread; a read of the same two tensors by ``torch.dot`` on two threads took 2.5 ms).
The pieces are summed in float32 by eight vector lanes each, as torch's own reductions do."""


def limits(device: torch.device) -> tuple[int, int]:
    """(fewest elements for a call of its own, most elements in one batch) for tensors on ``device``."""
    return (OWN_CALL, BATCH) if device.type == "cpu" else (DEVICE_OWN_CALL, DEVICE_BATCH)


class Rule:
    """An update rule for one tensor, compiled on first use with dynamic shapes.

    ``update(*tensors, **scalars)`` changes the tensors at the positions ``writes`` in place (a position may hold
    ``None`` for a state the optimizer does not keep, such as Expectigrad's momentum at β = 0). A ``pointwise``
    rule treats every element alike and sees its tensors flattened; otherwise (AdamP's projection, which reduces
    over rows) it sees them as rows, one per piece of an output channel's row (:data:`PIECE`), and returns what it
    measures; there the tensors at the positions ``per_row`` hold one value per row of that view (a per-row scale),
    seen as a column.
    """

    def __init__(
        self,
        update: Callable[..., Any],
        *,
        writes: Sequence[int],
        pointwise: bool = True,
        per_row: Sequence[int] = (),
    ) -> None:
        self.update = update
        self.writes = tuple(writes)
        self.pointwise = pointwise
        self.per_row = tuple(per_row)
        self._compiled: dict[int, Callable[..., Any]] = {}  # torch.compile's wrappers by CPU threads, made on first use
        self._ready: set[tuple[Any, ...]] = set()
        self._work_kept: dict[tuple[Any, ...], tuple[list[Tensor], list[list[Tensor]]]] = {}

    def run(self, owner: str, columns: Sequence[Sequence[Tensor]], scalars: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Run the rule on each row of parallel ``columns`` (a tensor and its partners) with its scalars.

        Returns the rule's result for each row (``None`` for batched rows: rows that share their scalars, the same
        dict, may be batched). Every kind of row (scalars, device, dtype, absent tensors, CPU threads) compiles
        first, on small stand-in tensors, so a failure (no C++ compiler, say) changes no parameter and no state
        tensor (the step counters have counted the step, so the optimizer is not to be stepped again); it is raised
        as a ``RuntimeError`` naming ``owner``.
        """
        rows = list(zip(*columns, strict=True))
        kinds = self._kinds(rows, scalars)
        results: list[Any] = [None] * len(rows)
        batches: list[list[int]] = []
        arguments: dict[tuple[int, torch.device], dict[str, Any]] = {}  # per scalars dict and device
        # every device x dtype x switch kind is one compiled graph of the same function: allow more of them than
        # torch's default of 8 per function before it gives up
        with torch._dynamo.config.patch(recompile_limit=KINDS):
            self._prepare_kinds(owner, rows, scalars, kinds)
            filling: dict[tuple[Any, ...], tuple[list[int], int]] = {}  # per kind: its open batch and its size
            for index, (row, values, kind) in enumerate(zip(rows, scalars, kinds, strict=True)):
                numel = row[0].numel()
                own_call, limit = limits(kind[1])
                if not (self.pointwise and numel < own_call):
                    compiled = self._wrapper(kind[-1])
                    results[index] = compiled(*self._views(row), **packed(values, kind[1], arguments))
                    continue
                batch, size = filling.get(kind, ([], limit))
                if size + numel > limit:
                    batch, size = [], 0
                    batches.append(batch)
                batch.append(index)
                filling[kind] = batch, size + numel
            for indices in batches:
                device = kinds[indices[0]][1]
                self._batched([rows[i] for i in indices], packed(scalars[indices[0]], device, arguments))
        return results

    def prepare(self, owner: str, columns: Sequence[Sequence[Tensor]], scalars: Sequence[Mapping[str, Any]]) -> None:
        """Compile every kind of row that :meth:`run` on these arguments would, without running the rule.

        For an optimizer whose later rules must compile before an earlier rule changes a tensor (a failure then
        changes nothing): the tensors only tell device, dtype and which are absent (a per-row tensor may be stood
        in for by any tensor of the row's device and dtype).
        """
        rows = list(zip(*columns, strict=True))
        with torch._dynamo.config.patch(recompile_limit=KINDS):
            self._prepare_kinds(owner, rows, scalars, self._kinds(rows, scalars))

    @staticmethod
    def _kinds(rows: list[Sequence[Tensor]], scalars: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Each row's kind: its scalars dict, device, dtype, absent tensors and CPU threads (:data:`PARALLEL`)."""
        threads = torch.get_num_threads()
        kinds = []
        for row, values in zip(rows, scalars, strict=True):
            first = row[0]  # the row's tensors share device, dtype and shape with it
            large = first.device.type == "cpu" and first.numel() >= PARALLEL
            kinds.append(
                (id(values), first.device, first.dtype, tuple(t is None for t in row), threads if large else 1)
            )
        return kinds

    def _prepare_kinds(
        self, owner: str, rows: list[Sequence[Tensor]], scalars: Sequence[Mapping[str, Any]], kinds: list[Any]
    ) -> None:
        first_of: dict[tuple[Any, ...], int] = {}  # every kind compiles before any row runs
        for index, kind in enumerate(kinds):
            first_of.setdefault(kind, index)
        for index in first_of.values():
            self._prepare(owner, rows[index], scalars[index], kinds[index][-1])

    def _batched(self, rows: list[Sequence[Tensor]], arguments: dict[str, Any]) -> None:
        """One call on the rows' tensors gathered into flat work tensors, then the changed ones copied back."""
        columns = [list(column) for column in zip(*rows, strict=True)]
        kept = [i for i, column in enumerate(columns) if column[0] is not None]
        flats, views = self._work([columns[i] for i in kept])
        for view, i in zip(views, kept, strict=True):
            torch._foreach_copy_(view, columns[i])
        tensors: list[Tensor | None] = [None] * len(columns)
        for flat, i in zip(flats, kept, strict=True):
            tensors[i] = flat
        self._wrapper(1)(*tensors, **arguments)  # a batch holds at most BATCH < PARALLEL elements
        for view, i in zip(views, kept, strict=True):
            if i in self.writes:
                torch._foreach_copy_(columns[i], view)

    def _work(self, columns: list[list[Tensor]]) -> tuple[list[Tensor], list[list[Tensor]]]:
        """Flat work tensors for a batch and, per column, its tensors' views into them.

        At least two elements (one would compile once more). On a CPU they are kept for the next step (fresh large
        allocations cost page faults there), found again by thread, dtypes and shapes (optimizers of the same shapes
        share them, one at a time); elsewhere they are made for each batch.
        """
        key = (threading.get_ident(), *((c[0].device, c[0].dtype) for c in columns), *(t.shape for t in columns[0]))
        if key in self._work_kept:
            return self._work_kept[key]
        sizes = [t.numel() for t in columns[0]]
        total = max(sum(sizes), 2)
        flats = [c[0].new_empty(total) for c in columns]
        views = [
            [part.view(t.shape) for part, t in zip(f[: sum(sizes)].split(sizes), columns[0], strict=True)]
            for f in flats
        ]
        if columns[0][0].device.type == "cpu":
            if len(self._work_kept) >= KEPT:
                self._work_kept.pop(next(iter(self._work_kept)))
            self._work_kept[key] = flats, views
        return flats, views

    def _wrapper(self, threads: int) -> Callable[..., Any]:
        if threads not in self._compiled:
            update = self.update

            def unpacked(*tensors: Tensor | None, numbers: Tensor, names: tuple[str, ...], **switches: bool) -> Any:
                return update(*tensors, **dict(zip(names, numbers.unbind(), strict=True)), **switches)

            options = {"cpp.threads": threads}
            self._compiled[threads] = torch.compile(unpacked, dynamic=True, fullgraph=True, options=options)
        return self._compiled[threads]

    def _prepare(self, owner: str, row: Sequence[Tensor], scalars: Mapping[str, Any], threads: int) -> None:
        """Compile the kind of ``row`` (:meth:`run`) on stand-ins, unless done; ``threads`` as in :data:`PARALLEL`."""
        switches = tuple(sorted((k, v) for k, v in scalars.items() if isinstance(v, bool)))
        kind = (tuple(None if t is None else (t.device, t.dtype) for t in row), switches, threads)
        if kind in self._ready:
            return
        # sizes unlike each other and unlike the count of the rule's numbers, which no rule has as many as 17 of
        # (equal sizes compile as one symbol, and the numbers' size is fixed: a stand-in of as many rows or elements
        # would fix its own, and the first real tensor would compile again); a parallel kernel's stand-ins are large,
        # or torch.compile plans it serial whatever the option
        if self.pointwise:
            shape: tuple[int, ...] = (PARALLEL,) if threads > 1 else (37,)
        else:
            shape = (PARALLEL // 2048, 2048) if threads > 1 else (17, 19)
        stand_ins = [
            None
            if t is None
            else torch.full((shape[0], 1) if i in self.per_row else shape, 0.5, dtype=t.dtype, device=t.device)
            for i, t in enumerate(row)
        ]
        try:
            self._wrapper(threads)(*stand_ins, **packed(scalars, row[0].device, {}))
        except Exception as error:  # torch.compile raises many types; all mean the same to the caller
            first = (str(error).strip().splitlines() or [""])[0]
            raise RuntimeError(
                f"{owner}: compiled=True could not compile its update with torch.compile "
                f"({type(error).__name__}: {first[:200]}); no parameter was changed; build the optimizer with "
                "compiled=False"
            ) from error
        self._ready.add(kind)

    def _views(self, row: Sequence[Tensor | None]) -> list[Tensor | None]:
        """The row's tensors as the rule sees them: same memory, outside autograd (one compiled kind).

        Flat for a pointwise rule; otherwise (rows x pieces) x piece length (:func:`pieces`).
        """
        if self.pointwise:
            shape: tuple[int, ...] = (-1,)
        else:
            rows = row[0].shape[0]
            shape = (rows * pieces(row[0].numel() // rows), -1)
        return [None if tensor is None else tensor.detach().view(shape) for tensor in row]


def lerp(start: Tensor, end: Tensor, weight: Tensor, *, low: bool) -> Tensor:
    """``start + weight (end - start)`` for a compiled rule, as the other paths' ``lerp_`` computes it.

    torch's lerp rounds the weight to the tensors' dtype and, from a weight of 0.5 up (``low`` False, see
    :func:`low_weight`), computes ``end - (end - start)(1 - weight)``, which keeps ``end`` where ``start`` is far
    larger (a first moment after a spike, with β₁ ≤ 0.5; the one form lost it) and turns an inf ``end`` into NaN.
    The form is a switch of the rule rather than a select in the kernel, which computed both (a compiled AdaM3
    step 12% slower on two cores).
    """
    weight = weight.to(start.dtype)
    return start + weight * (end - start) if low else end - (end - start) * (1 - weight)


def low_weight(weight: float) -> bool:
    """Whether torch's lerp takes its first form for ``weight`` (:func:`lerp`)."""
    return abs(weight) < 0.5


def pieces(length: int) -> int:
    """Into how many equal pieces of at most :data:`PIECE` elements a row of ``length`` is cut.

    The fewest that divide the length, looked for up to twice the fewest possible; a row with no such divisor
    (a large prime length, say) stays whole.
    """
    fewest = -(-length // PIECE)
    return next((count for count in range(fewest, 2 * fewest + 1) if length % count == 0), 1)


def packed(
    scalars: Mapping[str, Any], device: torch.device, made: dict[tuple[int, torch.device], dict[str, Any]]
) -> dict[str, Any]:
    """A rule's scalars as its compiled function takes them.

    Boolean switches as they are, the numbers in one float64 tensor on ``device`` with their names; made once per
    scalars dict and device (kept in ``made``).
    """
    key = (id(scalars), device)
    if key not in made:
        names = tuple(name for name, value in scalars.items() if not isinstance(value, bool))
        numbers = torch.tensor([float(scalars[name]) for name in names], dtype=torch.float64, device=device)
        switches = {name: value for name, value in scalars.items() if isinstance(value, bool)}
        made[key] = dict(numbers=numbers, names=names, **switches)
    return made[key]


def compilable(tensors: Sequence[Tensor], pointwise: bool = True) -> bool:
    """Whether a tensor and its partners take a compiled rule.

    They must be float32 or float64, all of one dtype and shape; a tensor large enough for a call of its own must be
    contiguous, so that the rule's view shares its memory, and a non-pointwise rule needs at least two rows of at
    least two elements (a size of 1 would compile once more). (Called for every tensor of every step: each tensor
    attribute is read once.)
    """
    first = tensors[0]
    dtype, shape = first.dtype, first.shape
    if dtype not in COMPILED_DTYPES or any(t.dtype != dtype or t.shape != shape for t in tensors[1:]):
        return False
    if pointwise:
        return first.numel() < limits(first.device)[0] or all(t.is_contiguous() for t in tensors)
    rows = len(shape) >= 2 and shape[0] >= 2 and first.numel() >= 2 * shape[0]
    return rows and all(t.is_contiguous() for t in tensors)


def split(columns: Sequence[Sequence[Any]], pointwise: bool = True) -> tuple[list[int], list[int]]:
    """Indices of the rows of parallel ``columns`` (tensors first) that take the compiled rule, and the others."""
    compiled, others = [], []
    for index, row in enumerate(zip(*columns, strict=True)):
        tensors = [item for item in row if isinstance(item, Tensor)]
        (compiled if compilable(tensors, pointwise) else others).append(index)
    return compiled, others


def at(columns: Sequence[Sequence[Any]], indices: Sequence[int]) -> list[list[Any]]:
    """Each of the parallel ``columns`` restricted to the rows ``indices``."""
    return [[column[i] for i in indices] for column in columns]
