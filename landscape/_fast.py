r"""The batched surface evaluator: many grid points per pass with ``torch.func.functional_call`` and ``vmap``.

For a chunk of grid points :math:`c^{(g)} = (\alpha_g, \beta_g)` the parameters
:math:`\theta_0 + \alpha_g d_1 + \beta_g d_2` are built and the model is run on all of them at once with
``vmap(functional_call)``. When the first layer that touches parameters is affine (linear or convolution) and
receives only parameter-free transforms of the input, its output is linear in the grid coordinates:

.. math::
    f(x; W_0 + \alpha D_1 + \beta D_2,\, b_0 + \alpha e_1 + \beta e_2)
    = f(x; W_0, b_0) + \alpha f(x; D_1, e_1) + \beta f(x; D_2, e_2),

so the three products on the right are computed once per batch (and kept across chunks up to
``PARTS_CACHE_BYTES``), combined for all points of a chunk by one matrix product with the rows
:math:`(1, \alpha_g, \beta_g)`, and only the rest of the network runs per point. The trick is checked against the
plain batched call on a few examples before use. Points go through ``vmap`` a few at a time (``PASS_BYTES`` of
first-layer output per pass, written into one reused buffer), and each point's loss and accuracy are computed outside
``vmap`` by the same calls the loop makes.

What pays depends on the model. Under ``vmap`` a convolution whose weights differ per point becomes a grouped
convolution, which CPU libraries run far below the speed of one dense convolution; for such models one point per
forward pass, with images and convolution weights in the channels-last layout (oneDNN's fast path), can be faster.
So for a model with a parameter of three or more dimensions the evaluator times both ways on the first points it is
given (``CALIBRATION_POINTS``, whose values it keeps from the way chosen, so nothing is computed twice by the winner)
and goes on with the faster; :attr:`FastEvaluator.name` says which (``"vmap+first_layer"``, ``"vmap"`` or
``"loop+channels_last"``) and :attr:`FastEvaluator.calibration` holds the measured seconds per point. Models without
such parameters (MLPs) always take the ``vmap`` path, which wins there by far.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from landscape._data import Batch, ForwardFn, batch_length, functional_run, head, run_model
from landscape._evaluation import AccuracyFn, LossFn, combine

STRATEGIES = ("auto", "vmap", "loop")
CALIBRATION_POINTS = 3  # points timed with each way of evaluating before choosing

AFFINE = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


PARTS_CACHE_BYTES = 256 * 2**20  # first-layer products kept across chunks up to this size
PASS_BYTES = 8 * 2**20  # bound on the combined first-layer outputs of one vmap pass (points per pass follow)


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


def first_affine_layer(model: nn.Module, batch: Batch, forward_fn: ForwardFn | None = None) -> str | None:
    """Name of the first parameter-owning module called in a forward pass, when the trick applies to it.

    It applies when every parameter belongs to a leaf module, the first such module called is affine, is called
    once, and shares no parameter with another module. Otherwise ``None``.
    """
    owners = {name: m for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    if not owners or any(any(True for _ in m.children()) for m in owners.values()):
        return None
    calls: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name)) for name, m in owners.items()]
    try:
        with torch.no_grad():
            run_model(model, batch, forward_fn)
    finally:
        for h in handles:
            h.remove()
    if not calls or not isinstance(owners[calls[0]], AFFINE) or calls.count(calls[0]) != 1:
        return None
    first = owners[calls[0]]
    own = {id(p) for p in first.parameters()}
    for name, m in owners.items():
        if name != calls[0] and any(id(p) in own for p in m.parameters(recurse=False)):
            return None
    return calls[0]


def _layer_input(model: nn.Module, layer: nn.Module, batch: Batch, forward_fn: ForwardFn | None) -> Tensor:
    """The tensor ``layer`` receives when ``model`` runs on ``batch`` (the forward pass stops there)."""
    captured = []

    def hook(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        run_model(model, batch, forward_fn)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


class FastEvaluator:
    """Loss and accuracy at a chunk of grid points in one ``vmap`` over ``functional_call`` per batch.

    Args:
        model: the network, in eval mode; it is never modified, except that during a call the first affine layer's
            ``forward`` is replaced by the precomputed combination (and put back before returning).
        origin: parameters at the origin, by name (trainable ones).
        directions: one or two directions.
        batches: evaluation batches on the model's device.
        loss_fn: mean loss of a batch.
        accuracy_fn: mean accuracy of a batch.
        first_layer_trick: use the first-affine-layer shortcut when it applies (default True).
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)`` (default: the model on the batch's inputs).
        strategy: ``"auto"`` (default: time both ways on the first points for models with convolution-like
            parameters, else ``vmap``), ``"vmap"`` or ``"loop"`` (one point per forward pass, channels-last for
            image models).
    """

    def __init__(
        self,
        model: nn.Module,
        origin: Mapping[str, Tensor],
        directions: Sequence[Mapping[str, Tensor]],
        batches: Sequence[Batch],
        loss_fn: LossFn,
        accuracy_fn: AccuracyFn,
        first_layer_trick: bool = True,
        forward_fn: ForwardFn | None = None,
        strategy: str = "auto",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"Invalid strategy: {strategy!r} (expected one of {STRATEGIES})")
        self.model, self.origin, self.directions, self.forward_fn = model, origin, directions, forward_fn
        self.batches, self.loss_fn, self.accuracy_fn = batches, loss_fn, accuracy_fn
        self._parts: dict[int, Tensor] = {}
        self._parts_bytes = 0
        self._buffer: Tensor | None = None
        first = batches[0]
        images = forward_fn is None and isinstance(first, (tuple, list)) and getattr(first[0], "ndim", 0) == 4
        self.channels_last = images and any(t.ndim == 4 for t in origin.values())
        self.loop_name = "loop+channels_last" if self.channels_last else "loop"
        if strategy == "auto" and not any(t.ndim >= 3 for t in origin.values()):
            strategy = "vmap"
        self.strategy = strategy
        self.calibration: dict[str, float] = {}
        if strategy == "loop":
            self.layer_name, self.vmap_name = None, None
            return
        probe = [head(first, 4)]
        coords = torch.tensor([[0.0] * len(directions), [0.5, -0.25][: len(directions)]])
        plain = self._chunk(coords, probe, use_trick=False)  # raises where the model cannot be vmapped
        self.layer_name = first_affine_layer(model, head(batches[0], 2), forward_fn) if first_layer_trick else None
        if self.layer_name is not None:
            with_trick = self._chunk(coords, probe, use_trick=True)
            dtype = next(iter(origin.values())).dtype
            tol = 1e-4 if dtype in (torch.float32, torch.float64) else 1e-2
            if not all(
                torch.allclose(a, b, rtol=tol, atol=tol, equal_nan=True) for a, b in zip(with_trick, plain, strict=True)
            ):
                self.layer_name = None
        self.vmap_name = "vmap+first_layer" if self.layer_name is not None else "vmap"

    @property
    def name(self) -> str:
        """The way points are evaluated (``"auto"`` until the first call has chosen)."""
        return {"vmap": self.vmap_name, "loop": self.loop_name}.get(self.strategy, "auto")

    def __call__(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and accuracy at every row of ``coords`` (shape ``(G, k)``), as float64 tensors of length ``G``."""
        if self.strategy == "auto":
            return self._calibrate(coords)
        if self.strategy == "loop":
            return self._loop(coords)
        return self._chunk(coords, self.batches, use_trick=self.layer_name is not None, cache=True)

    def _calibrate(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """Evaluate the first points both ways, keep the faster way (and its values), then do the rest with it."""
        first, rest = coords[:CALIBRATION_POINTS], coords[CALIBRATION_POINTS:]
        device = next(iter(self.origin.values())).device
        results = {}
        for strategy in ("vmap", "loop"):
            self.strategy = strategy
            start = _clock(device)
            results[strategy] = self(first)
            self.calibration[strategy] = (_clock(device) - start) / len(first)
        self.strategy = min(self.calibration, key=self.calibration.__getitem__)
        loss, acc = results[self.strategy]
        if len(rest):
            more = self(rest)
            loss, acc = torch.cat([loss, more[0]]), torch.cat([acc, more[1]])
        return loss, acc

    def _loop(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """One point per forward pass by ``functional_call``; images and 4-D weights in channels-last layout."""
        dtype = next(iter(self.origin.values())).dtype
        coords = coords.to(next(iter(self.origin.values())).device, dtype)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        batches = (
            [(b[0].contiguous(memory_format=layout), *b[1:]) for b in self.batches]
            if self.channels_last
            else self.batches
        )
        sizes = [batch_length(b, self.forward_fn) for b in self.batches]
        total = sum(sizes)
        loss = torch.zeros(len(coords), dtype=torch.float64)
        acc = torch.zeros(len(coords), dtype=torch.float64)
        with torch.no_grad():
            for i, c in enumerate(coords):
                params = {
                    n: t.contiguous(memory_format=layout) if t.ndim == 4 else t
                    for n, t in combine(self.origin, self.directions, c).items()
                }
                for batch, size in zip(batches, sizes, strict=True):
                    out, y = functional_run(self.model, params, batch, self.forward_fn)
                    loss[i] += float(self.loss_fn(out, y)) * (size / total)
                    acc[i] += float(self.accuracy_fn(out, y)) * (size / total)
        return loss, acc

    def _chunk(
        self, coords: Tensor, batches: Sequence[Batch], use_trick: bool, cache: bool = False
    ) -> tuple[Tensor, Tensor]:
        dtype = next(iter(self.origin.values())).dtype
        device = next(iter(self.origin.values())).device
        coords = coords.to(device, dtype)
        sizes = [batch_length(b, self.forward_fn) for b in batches]
        total = sum(sizes)
        loss = torch.zeros(len(coords), dtype=torch.float64)
        acc = torch.zeros(len(coords), dtype=torch.float64)
        with torch.no_grad():
            for i, (batch, size) in enumerate(zip(batches, sizes, strict=True)):
                if use_trick:
                    batch_loss, batch_acc = self._batch_trick(coords, batch, i if cache else None)
                else:
                    batch_loss, batch_acc = self._batch_plain(coords, batch)
                loss += batch_loss.double().cpu() * (size / total)
                acc += batch_acc.double().cpu() * (size / total)
        return loss, acc

    def _batch_plain(self, coords: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        def point(c: Tensor) -> tuple[Any, Tensor]:
            return functional_run(self.model, combine(self.origin, self.directions, c), batch, self.forward_fn)

        return self._score(*vmap(point)(coords))

    def _first_layer_parts(self, batch: Batch, key: int | None) -> Tensor:
        r""":math:`f(x; W_0, b_0), f(x; D_1, e_1), \ldots` stacked, kept for later chunks while memory allows."""
        if key is not None and key in self._parts:
            return self._parts[key]
        prefix = self.layer_name + "."
        layer = self.model.get_submodule(self.layer_name)
        own = dict(layer.named_parameters())
        inp = _layer_input(self.model, layer, batch, self.forward_fn)
        sources = [(self.origin, False)] + [(d, True) for d in self.directions]
        outputs = []
        for source, zero_if_absent in sources:
            params = {}
            for n, p in own.items():
                if prefix + n in source:
                    params[n] = source[prefix + n]
                else:
                    params[n] = torch.zeros_like(p) if zero_if_absent else p.detach()
            outputs.append(functional_call(layer, params, (inp,)))
        parts = torch.stack(outputs)
        if key is not None and self._parts_bytes + parts.nbytes <= PARTS_CACHE_BYTES:
            self._parts[key] = parts
            self._parts_bytes += parts.nbytes
        return parts

    def _batch_trick(self, coords: Tensor, batch: Batch, key: int | None) -> tuple[Tensor, Tensor]:
        parts = self._first_layer_parts(batch, key)
        step = max(1, PASS_BYTES // max(parts[0].nbytes, 1))
        scores = [self._pass_trick(coords[i : i + step], parts, batch) for i in range(0, len(coords), step)]
        return torch.cat([s[0] for s in scores]), torch.cat([s[1] for s in scores])

    def _pass_trick(self, coords: Tensor, parts: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        weights = torch.cat([torch.ones_like(coords[:, :1]), coords], dim=1)
        size = len(coords) * parts[0].numel()
        if self._buffer is None or self._buffer.numel() < size or self._buffer.dtype != parts.dtype:
            self._buffer = torch.empty(size, dtype=parts.dtype, device=parts.device)
        # one buffer reused by every pass: fresh large allocations cost page faults on CPU
        flat = self._buffer[:size].view(len(coords), -1)
        torch.mm(weights, parts.reshape(len(parts), -1), out=flat)
        first = flat.view(len(coords), *parts.shape[1:])
        prefix = self.layer_name + "."
        layer = self.model.get_submodule(self.layer_name)
        rest = {n: t for n, t in self.origin.items() if not n.startswith(prefix)}
        current: list[Tensor] = []

        def precomputed(*_args: Tensor, **_kwargs: Tensor) -> Tensor:
            return current[0]

        def point(c: Tensor, z: Tensor) -> tuple[Any, Tensor]:
            current[:] = [z]
            return functional_run(self.model, combine(rest, self.directions, c), batch, self.forward_fn)

        saved = layer.__dict__.get("forward")
        layer.forward = precomputed
        try:
            outputs, targets = vmap(point)(coords, first)
        finally:
            if saved is None:
                del layer.forward
            else:
                layer.forward = saved
        return self._score(outputs, targets)

    def _score(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and accuracy of each point's outputs, by the same calls as the loop (vmapped losses are slow).

        ``targets`` come out of ``vmap`` stacked per point (copies of the batch's targets).
        """
        loss = torch.stack([self.loss_fn(out, y) for out, y in zip(outputs, targets, strict=True)])
        acc = torch.stack([self.accuracy_fn(out, y) for out, y in zip(outputs, targets, strict=True)])
        return loss, acc


def _clock(device: torch.device) -> float:
    """Seconds of this process's CPU time (insensitive to other processes' load); wall time after a sync on GPUs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()
