r"""The batched surface evaluator: many grid points per pass with ``torch.func.functional_call`` and ``vmap``.

For a chunk of grid points :math:`c^{(g)} = (\alpha_g, \beta_g)` the parameters
:math:`\theta_0 + \alpha_g d_1 + \beta_g d_2` are built and the model is run on all of them at once with
``vmap(functional_call)``. When the first layer that touches parameters is affine (linear or convolution) and
receives only parameter-free transforms of the input, its output is linear in the grid coordinates:

.. math::
    f(x; W_0 + \alpha D_1 + \beta D_2,\, b_0 + \alpha e_1 + \beta e_2)
    = f(x; W_0, b_0) + \alpha f(x; D_1, e_1) + \beta f(x; D_2, e_2),

so the three products on the right are computed once per batch (and kept across chunks up to
``PARTS_CACHE_BYTES``) and only the rest of the network runs per point. Every shortcut below is checked against the
plain evaluation on a few examples before use, and refused when it does not agree.

Three ways of running the rest:

- ``"chain+first_layer"``: when the model after its first (linear) layer is a chain of linear layers and element-wise
  functions (traced with ``torch.fx``: each node takes the previous node's output only), activations are kept
  examples-last, :math:`Z^{(g)} \in \mathbb{R}^{h \times B}`, and each linear layer runs for the points of a pass as
  one ``baddbmm`` :math:`W^{(g)} Z^{(g)} + b^{(g)}` (the orientation in which BLAS libraries handle few output
  features well), with :math:`W^{(g)} = W_0 + \sum_k c_{gk} D_k` built by one small matrix product; buffers are
  reused across passes (fresh large allocations cost page faults on CPU). This serves MLPs.
- ``"vmap"`` / ``"vmap+first_layer"``: ``vmap(functional_call)`` over the points of a pass (``PASS_BYTES`` of
  first-layer output per pass, written into one reused buffer), for any other model ``vmap`` can run.
- ``"loop+..."``: one point per forward pass by ``functional_call``, with images and 4-D weights in the channels-last
  layout (oneDNN's fast path; a one-channel batch gets channels-last strides so that the first convolution keeps the
  layout), the first-layer trick where it agrees, and each batch cut into pieces whose largest activation is about
  ``PIECE_BYTES`` so activations stay in cache (only when the probe shows the model treats examples independently:
  evaluated in pieces of two it gives the same outputs). Under ``vmap`` a convolution whose weights differ per point
  becomes a grouped convolution, which CPU libraries run far below the speed of one dense convolution, so this way
  can win for convolutional models.

For a model with a parameter of three or more dimensions the evaluator evaluates the first ``CALIBRATION_POINTS``
points of its first call by ``vmap`` and the next as many by the loop, on all batches, timing both (their results
are kept: calibrating costs only the slower way's extra time on those points), and goes on with the faster;
:attr:`FastEvaluator.name` says which way ran and :attr:`FastEvaluator.calibration` holds the measured seconds per
point. Other models take the chain or ``vmap``. The default loss and accuracy of
all points of a pass are computed in one call (:func:`stacked_scores`); other loss functions are called point by
point.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from landscape._data import Batch, ForwardFn, batch_length, functional_run, head, run_model
from landscape._evaluation import (
    IGNORE_INDEX,
    AccuracyFn,
    LossFn,
    batch_fractions,
    check_classification,
    combine,
    cross_entropy,
    fraction,
    top1_accuracy,
)

STRATEGIES = ("auto", "vmap", "loop")
CALIBRATION_POINTS = 1  # points of the first call evaluated (and timed) with each way before choosing (more only
# add the slower way's cost: for convolutional models vmap's cost per point hardly falls with more points per pass)

AFFINE = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
)
ELEMENTWISE_FUNCTIONS = (
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    nn.functional.relu,
    nn.functional.leaky_relu,
    nn.functional.elu,
    nn.functional.gelu,
    nn.functional.silu,
    nn.functional.tanh,
    nn.functional.sigmoid,
    nn.functional.softplus,
)
ELEMENTWISE_METHODS = ("relu", "tanh", "sigmoid")

PARTS_CACHE_BYTES = 256 * 2**20  # first-layer products kept across chunks up to this size
PASS_BYTES = 8 * 2**20  # bound on the combined first-layer outputs of one vmap pass (points per pass follow)
CHAIN_PASS_BYTES = 4 * 2**20  # bound on the widest activation of one pass of the layer chain (points per pass follow)
PIECE_BYTES = 2 * 2**20  # bound on the largest activation of one piece of a batch on the loop path (stays in cache)


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
        strategy: ``"auto"`` (default: for models with convolution-like parameters, time ``vmap`` and the loop on
            the first points of the first call and keep the faster; for others the layer chain or ``vmap``),
            ``"vmap"`` (the chain where it applies, else ``vmap``) or ``"loop"`` (one point per forward pass,
            channels-last for image models, in cache-sized pieces).
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
        self._parts: dict[Hashable, Tensor] = {}
        self._parts_bytes = 0
        self._targets: dict[Hashable, ScoringTargets] = {}  # prepared targets of the evaluation batches
        self._buffer: Tensor | None = None
        self._scratch_buffers: dict[int, Tensor] = {}
        first = batches[0]
        images = forward_fn is None and isinstance(first, (tuple, list)) and getattr(first[0], "ndim", 0) == 4
        self.channels_last = images and any(t.ndim == 4 for t in origin.values())
        if strategy == "auto" and not any(t.ndim >= 3 for t in origin.values()):
            strategy = "vmap"
        self.strategy = strategy
        self.calibration: dict[str, float] = {}
        self.layer_name = first_affine_layer(model, head(first, 2), forward_fn) if first_layer_trick else None
        probe = [head(first, 4)]
        coords = torch.tensor([[0.0] * len(directions), [0.5, -0.25][: len(directions)]])
        self.vmap_name = self.loop_name = None
        self.vmap_trick = self.loop_trick = False
        self.piece: int | None = None
        self.chain: list[tuple[str, Any]] | None = None
        self.chain_widths: list[int] = []
        if strategy != "loop" and self.layer_name is not None:
            self._plan_chain(first)  # checked against the loop's plain evaluation: no vmap needed for a chain
            if self.chain is not None and self._agrees(
                self._loop(coords, probe, use_trick=False, piece=None),
                lambda: self._chunk(coords, probe, use_trick=True),
            ):
                self.vmap_trick, self.vmap_name = True, "chain+first_layer"
            else:
                self.chain = None
        if strategy != "loop" and self.chain is None:
            plain = self._chunk(coords, probe, use_trick=False)  # raises where the model cannot be vmapped
            self.vmap_trick = self.layer_name is not None and self._agrees(
                plain, lambda: self._chunk(coords, probe, use_trick=True)
            )
            self.vmap_name = "vmap+first_layer" if self.vmap_trick else "vmap"
        if strategy != "vmap":
            plain = self._loop(coords, probe, use_trick=False, piece=None)
            self.piece = piece_size(model, first, forward_fn, PIECE_BYTES)
            if self.piece is not None and not self._agrees(
                plain, lambda: self._loop(coords, probe, use_trick=False, piece=2)
            ):
                self.piece = None  # the model mixes examples of a batch: pieces would change its outputs
            self.loop_trick = self.layer_name is not None and self._agrees(
                plain, lambda: self._loop(coords, probe, use_trick=True, piece=None)
            )
            self.loop_name = "loop" + "+channels_last" * self.channels_last + "+first_layer" * self.loop_trick
            if self.piece is not None:
                self.loop_name += f"+pieces_of_{self.piece}"

    def _plan_chain(self, batch: Batch) -> None:
        """Set :attr:`chain` when everything after the first layer is a chain of linear and element-wise layers.

        The model is traced with ``torch.fx``; the chain applies when the nodes after the first layer each take the
        previous node's output as their only tensor argument and are linear layers or element-wise functions and
        modules (:data:`ELEMENTWISE_MODULES`, :data:`ELEMENTWISE_FUNCTIONS`), the last one giving the output, and
        the first layer is linear on ``(B, features)`` inputs.
        """
        if self.forward_fn is not None or not isinstance(batch[0], Tensor):
            return
        layer = self.model.get_submodule(self.layer_name)
        if not isinstance(layer, nn.Linear) or not _flattens(self.model, layer, batch):
            return
        try:
            graph = torch.fx.symbolic_trace(self.model).graph
        except Exception:  # any model fx cannot trace keeps the vmap path
            return
        nodes = list(graph.nodes)
        start = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == self.layer_name]
        if len(start) != 1:
            return
        chain, widths, previous = [], [layer.out_features], nodes[start[0]]
        for node in nodes[start[0] + 1 :]:
            tensors = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
            if tensors != [previous] or node.args[:1] != (previous,) or len(previous.users) != 1:
                return
            if node.op == "output":
                break
            step = self._chain_step(node)
            if step is None:
                return
            chain.append(step)
            if step[0] == "linear":
                widths.append(step[1][0].shape[1])
            previous = node
        else:
            return
        self.chain, self.chain_widths = chain, widths

    def _chain_step(self, node: torch.fx.Node) -> tuple[str, Any] | None:
        """What a traced node does on examples-last activations, or ``None`` where the chain cannot hold it."""
        if node.op == "call_module":
            module = self.model.get_submodule(node.target)
            if isinstance(module, nn.Linear):
                prefix = node.target + "."
                sources = [self.origin, *self.directions]
                stacks = []
                for part in ("weight", "bias"):
                    if getattr(module, part) is None:
                        stacks.append(None)
                        continue
                    base = self.origin[prefix + part]
                    stacks.append(torch.stack([src.get(prefix + part, torch.zeros_like(base)) for src in sources]))
                if len(node.args) != 1 or node.kwargs:
                    return None
                return ("linear", (stacks[0], stacks[1]))
            if isinstance(module, nn.ReLU):
                return ("relu", None)
            if isinstance(module, ELEMENTWISE_MODULES) and not any(True for _ in module.parameters()):
                if isinstance(module, nn.Dropout) and module.training:
                    return None
                return ("apply", module)
            return None
        if node.op == "call_function" and node.target in ELEMENTWISE_FUNCTIONS:
            if node.kwargs.get("inplace", False) or len(node.args) != 1:
                return None
            if node.target in (torch.relu, nn.functional.relu):
                return ("relu", None)
            kwargs = dict(node.kwargs)
            return ("apply", lambda z, fn=node.target, kw=kwargs: fn(z, **kw))
        if node.op == "call_method" and node.target in ELEMENTWISE_METHODS and len(node.args) == 1 and not node.kwargs:
            if node.target == "relu":
                return ("relu", None)
            return ("apply", lambda z, name=node.target: getattr(z, name)())
        return None

    def _agrees(self, plain: tuple[Tensor, Tensor], other: Callable[[], tuple[Tensor, Tensor]]) -> bool:
        """Whether ``other()`` (the probe evaluated another way) runs and equals ``plain`` to a loose tolerance."""
        try:
            result = other()
        except (RuntimeError, NotImplementedError, ValueError):
            return False
        dtype = next(iter(self.origin.values())).dtype
        tol = 1e-4 if dtype in (torch.float32, torch.float64) else 1e-2
        return all(torch.allclose(a, b, rtol=tol, atol=tol, equal_nan=True) for a, b in zip(result, plain, strict=True))

    @property
    def name(self) -> str:
        """The way points are evaluated (``"auto"`` until the first call has chosen)."""
        return {"vmap": self.vmap_name, "loop": self.loop_name}.get(self.strategy, "auto")

    def __call__(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and accuracy at every row of ``coords`` (shape ``(G, k)``), as float64 tensors of length ``G``."""
        if self.strategy == "auto":
            return self._calibrate(coords)
        return self._evaluate(self.strategy, coords)

    def _evaluate(self, strategy: str, coords: Tensor) -> tuple[Tensor, Tensor]:
        """All batches at ``coords`` by ``strategy`` (``"vmap"``: the chain where it applies; ``"loop"``)."""
        if strategy == "loop":
            return self._loop(coords, self.batches, use_trick=self.loop_trick, piece=self.piece, cache=True)
        return self._chunk(coords, self.batches, use_trick=self.vmap_trick, cache=True)

    def _calibrate(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """Evaluate the first points by ``vmap`` and as many more by the loop, timing both; the faster does the rest.

        Each way evaluates ``min(CALIBRATION_POINTS, G // 2)`` points of the first call on all batches, so nothing
        is computed only to be timed; a single point is evaluated by the loop (batching points cannot help it) and
        the choice waits for a call with two points or more.
        """
        count = min(CALIBRATION_POINTS, len(coords) // 2)
        if count == 0:
            return self._evaluate("loop", coords)
        device = next(iter(self.origin.values())).device
        results = []
        for k, strategy in enumerate(("vmap", "loop")):
            start = _clock(device)
            results.append(self._evaluate(strategy, coords[k * count : (k + 1) * count]))
            self.calibration[strategy] = (_clock(device) - start) / count
        self.strategy = min(self.calibration, key=self.calibration.__getitem__)
        for key in [key for key in self._parts if key[0] != self.strategy]:  # the other way's first-layer products
            self._parts_bytes -= self._parts.pop(key).nbytes
        if len(coords) > 2 * count:
            results.append(self(coords[2 * count :]))
        return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])

    def _loop(
        self, coords: Tensor, batches: Sequence[Batch], use_trick: bool, piece: int | None, cache: bool = False
    ) -> tuple[Tensor, Tensor]:
        """One point per forward pass by ``functional_call``; images and 4-D weights in channels-last layout.

        With ``piece``, a batch goes through the model ``piece`` examples at a time (its activations stay in cache)
        and the outputs are joined before the loss; with ``use_trick``, the first layer's output of each piece is
        the combination of its precomputed products (:meth:`_first_layer_parts`).
        """
        dtype = next(iter(self.origin.values())).dtype
        coords = coords.to(next(iter(self.origin.values())).device, dtype)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.channels_last:
            batches = [(channels_last(b[0]), *b[1:]) for b in batches]
        sizes = [batch_length(b, self.forward_fn) for b in batches]
        weights = self._weights(batches)
        loss = torch.zeros(len(coords), dtype=torch.float64)
        acc = torch.zeros(len(coords), dtype=torch.float64)
        parts = [
            self._first_layer_parts(b, ("loop", i) if cache else None, layout) if use_trick else None
            for i, b in enumerate(batches)
        ]
        current: list[Tensor] = []
        with torch.no_grad(), self._replaced_first_layer(lambda *_a, **_k: current[0], use_trick):
            for i, c in enumerate(coords):
                params = {
                    n: t.contiguous(memory_format=layout) if t.ndim == 4 else t
                    for n, t in combine(self.origin, self.directions, c).items()
                }
                for batch, size, batch_parts, (loss_weight, acc_weight) in zip(
                    batches, sizes, parts, weights, strict=True
                ):
                    if not (loss_weight or acc_weight):
                        continue
                    outputs, targets = [], []
                    for rows in _pieces(size, piece):
                        if batch_parts is not None:
                            current[:] = [mix(batch_parts if rows is None else batch_parts[:, rows], c)]
                        out, y = functional_run(self.model, params, _rows(batch, rows), self.forward_fn)
                        outputs.append(out)
                        targets.append(y)
                    out, y = (outputs[0], targets[0]) if len(outputs) == 1 else (torch.cat(outputs), torch.cat(targets))
                    if loss_weight:
                        loss[i] += float(self.loss_fn(out, y)) * loss_weight
                    if acc_weight:
                        acc[i] += float(self.accuracy_fn(out, y)) * acc_weight
        return loss, acc

    def _weights(self, batches: Sequence[Batch]) -> list[tuple[float, float]]:
        """Each batch's weights in the means of loss and accuracy (:func:`~landscape._evaluation.batch_fractions`)."""
        return list(
            zip(
                batch_fractions(batches, self.loss_fn, self.forward_fn),
                batch_fractions(batches, self.accuracy_fn, self.forward_fn),
                strict=True,
            )
        )

    @contextmanager
    def _replaced_first_layer(self, forward: Callable[..., Tensor], replace: bool = True) -> Iterator[None]:
        """Within the block, the first affine layer's ``forward`` is ``forward`` (put back afterwards)."""
        if not replace:
            yield
            return
        layer = self.model.get_submodule(self.layer_name)
        saved = layer.__dict__.get("forward")
        layer.forward = forward
        try:
            yield
        finally:
            if saved is None:
                del layer.forward
            else:
                layer.forward = saved

    def _chunk(
        self, coords: Tensor, batches: Sequence[Batch], use_trick: bool, cache: bool = False
    ) -> tuple[Tensor, Tensor]:
        dtype = next(iter(self.origin.values())).dtype
        device = next(iter(self.origin.values())).device
        coords = coords.to(device, dtype)
        loss = torch.zeros(len(coords), dtype=torch.float64)
        acc = torch.zeros(len(coords), dtype=torch.float64)
        with torch.no_grad():
            for i, (batch, (loss_weight, acc_weight)) in enumerate(zip(batches, self._weights(batches), strict=True)):
                if not (loss_weight or acc_weight):
                    continue
                if use_trick and self.chain is not None:
                    key = ("vmap", i, "transposed") if cache else None
                    batch_loss, batch_acc = self._batch_chain(coords, batch, key)
                elif use_trick:
                    batch_loss, batch_acc = self._batch_trick(coords, batch, ("vmap", i) if cache else None)
                else:
                    batch_loss, batch_acc = self._batch_plain(coords, batch)
                if loss_weight:
                    loss += batch_loss.double().cpu() * loss_weight
                if acc_weight:
                    acc += batch_acc.double().cpu() * acc_weight
        return loss, acc

    def _batch_chain(self, coords: Tensor, batch: Batch, key: Hashable | None) -> tuple[Tensor, Tensor]:
        r"""The layers after the first as batched matrix products, ``CHAIN_PASS_BYTES`` of activations per pass.

        Activations are kept examples-last, :math:`Z^{(g)} \in \mathbb{R}^{h \times B}` for point :math:`g`: the
        first layer's is the combination of its transposed products, a linear layer maps it to
        :math:`W^{(g)} Z^{(g)} + b^{(g)} \mathbf{1}^\top` with :math:`W^{(g)} = W_0 + \sum_k c_{gk} D_k` (the
        weights of every point of the chunk built by one small matrix product, one ``baddbmm`` per pass), an
        element-wise layer is applied as it is. The scores of the last layer, ``(points, C, B)``, are scored for the
        whole chunk at once as the ``(points, B, C)`` view the loss expects.
        """
        if key is not None and key in self._parts:
            parts = self._parts[key]
        else:
            parts = self._first_layer_parts(batch, None).transpose(1, 2).contiguous()
            if key is not None and self._parts_bytes + parts.nbytes <= PARTS_CACHE_BYTES:
                self._parts[key] = parts
                self._parts_bytes += parts.nbytes
        weights = torch.cat([torch.ones_like(coords[:, :1]), coords], dim=1)
        layers = []  # per chain step: the weights and biases of every point of the chunk (linear layers)
        for kind, what in self.chain:
            if kind == "linear":
                stacked_w, stacked_b = what
                w = torch.mm(weights, stacked_w.flatten(1)).view(len(coords), *stacked_w.shape[1:])
                b = None if stacked_b is None else torch.mm(weights, stacked_b)[:, :, None]
                layers.append((w, b))
            else:
                layers.append(None)
        step = max(1, CHAIN_PASS_BYTES // max(max(self.chain_widths) * parts.shape[2] * parts.element_size(), 1))
        examples = parts.shape[2]
        # buffers reused by every pass and call (fresh large allocations cost page faults on CPU), and every
        # per-pass slice made up front by one split (Python-level slicing in the loop costs microseconds a pass)
        final = self._scratch(-1, (len(coords), self.chain_widths[-1], examples), parts)  # all points, scored at once
        hidden = {
            slot: self._scratch(slot, (step, what[0].shape[1], examples), parts)
            for slot, (kind, what) in enumerate(self.chain[:-1], start=1)
            if kind == "linear"
        }
        split = [None if layer is None else [None if t is None else t.split(step) for t in layer] for layer in layers]
        first = self._scratch(0, (step, *parts.shape[1:]), parts)
        flat_parts = parts.reshape(len(parts), -1)
        origin = flat_parts[0].expand(step, -1)
        for p, (c, last) in enumerate(zip(coords.split(step), final.split(step), strict=True)):
            count = len(c)
            z = first if count == step else first[:count]
            # origin's part plus the coefficients times the directions' parts: a product of inner dimension 3 took
            # 17% longer for the MLP benchmark's 51 x 51 surface than this copy and product of inner dimension 2
            torch.addmm(origin if count == step else origin[:count], c, flat_parts[1:], out=z.view(count, -1))
            for slot, (kind, what) in enumerate(self.chain, start=1):
                if kind == "linear":
                    w, b = split[slot - 1]
                    out = last if slot == len(self.chain) else hidden[slot][:count]
                    z = torch.bmm(w[p], z, out=out) if b is None else torch.baddbmm(b[p], w[p], z, out=out)
                elif kind == "relu":
                    z = z.relu_()  # z is this pass's own buffer
                else:
                    z = what(z)
            if z.data_ptr() != last.data_ptr():
                last.copy_(z)
        work = (self._scratch(-2, final.shape, final), self._scratch(-3, final.shape, final))
        return self._score(final.transpose(1, 2), batch[1].expand(len(coords), *batch[1].shape), work, key)

    def _scratch(self, slot: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A reused buffer of ``shape`` (contents undefined) for intermediate ``slot`` of the chain."""
        size = math.prod(shape)
        buffer = self._scratch_buffers.get(slot)
        if buffer is None or buffer.numel() < size or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._scratch_buffers[slot] = torch.empty(size, dtype=like.dtype, device=like.device)
        return buffer[:size].view(shape)

    def _batch_plain(self, coords: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        def point(c: Tensor) -> tuple[Any, Tensor]:
            return functional_run(self.model, combine(self.origin, self.directions, c), batch, self.forward_fn)

        return self._score(*vmap(point)(coords))

    def _first_layer_parts(
        self, batch: Batch, key: Hashable | None, layout: torch.memory_format = torch.contiguous_format
    ) -> Tensor:
        r""":math:`f(x; W_0, b_0), f(x; D_1, e_1), \ldots` stacked, kept for later chunks while memory allows.

        With ``layout=torch.channels_last``, 4-D weights are used in that layout and each product keeps the layout
        the convolution gives it (stacked along a new leading dimension without changing it).
        """
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
                if params[n].ndim == 4:
                    params[n] = params[n].contiguous(memory_format=layout)
            outputs.append(functional_call(layer, params, (inp,)))
        parts = stack_keeping_layout(outputs)
        if key is not None and self._parts_bytes + parts.nbytes <= PARTS_CACHE_BYTES:
            self._parts[key] = parts
            self._parts_bytes += parts.nbytes
        return parts

    def _batch_trick(self, coords: Tensor, batch: Batch, key: Hashable | None) -> tuple[Tensor, Tensor]:
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
        rest = {n: t for n, t in self.origin.items() if not n.startswith(prefix)}
        current: list[Tensor] = []

        def precomputed(*_args: Tensor, **_kwargs: Tensor) -> Tensor:
            return current[0]

        def point(c: Tensor, z: Tensor) -> tuple[Any, Tensor]:
            current[:] = [z]
            return functional_run(self.model, combine(rest, self.directions, c), batch, self.forward_fn)

        with self._replaced_first_layer(precomputed):
            outputs, targets = vmap(point)(coords, first)
        return self._score(outputs, targets)

    def _score(
        self,
        outputs: Tensor,
        targets: Tensor,
        work: tuple[Tensor, Tensor] | None = None,
        key: Hashable | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Loss and accuracy of each point's outputs (stacked along the first dimension, as ``vmap`` returns them).

        The default loss and accuracy on ``(points, B, C)`` scores are computed for all points in one call
        (:func:`stacked_scores`; with ``key``, the targets are checked and prepared once and kept under it); other
        functions are called point by point, as the loop calls them (vmapped losses are slow). ``targets`` come out
        of ``vmap`` stacked per point (copies of the batch's targets).
        """
        if self.loss_fn is cross_entropy and self.accuracy_fn is top1_accuracy and _stackable(outputs, targets):
            prepared = self._targets.get(key)
            if prepared is None:
                prepared = ScoringTargets.of(outputs, targets)
                if key is not None:
                    self._targets[key] = prepared
            return stacked_scores(outputs, prepared, work)
        loss = torch.stack([self.loss_fn(out, y) for out, y in zip(outputs, targets, strict=True)])
        acc = torch.stack([self.accuracy_fn(out, y) for out, y in zip(outputs, targets, strict=True)])
        return loss, acc


def _stackable(outputs: Tensor, targets: Tensor) -> bool:
    """Whether ``outputs`` are ``(points, B, C)`` scores with ``(points, B)`` integer targets."""
    return (
        isinstance(outputs, Tensor)
        and isinstance(targets, Tensor)
        and outputs.dim() == 3
        and targets.shape == outputs.shape[:2]
        and not targets.is_floating_point()
        and not targets.is_complex()
        and targets.dtype != torch.bool
    )


def stacked_scores(
    outputs: Tensor, targets: Tensor, work: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    r""":func:`~landscape._evaluation.cross_entropy` and :func:`~landscape._evaluation.top1_accuracy` of many points.

    For scores :math:`z^{(g)} \in \mathbb{R}^{B \times C}` of point :math:`g` and targets :math:`y`, with
    :math:`V` the examples whose target is not :data:`~landscape._evaluation.IGNORE_INDEX` and
    :math:`m_i = \max_c z^{(g)}_{ic}`,

    .. math::
        L_g = \frac{1}{|V|} \sum_{i \in V} \Big(m_i + \log \sum_c e^{z^{(g)}_{ic} - m_i} - z^{(g)}_{i y_i}\Big),
        \qquad A_g = \frac{1}{|V|} \sum_{i \in V} [\arg\max_c z^{(g)}_{ic} = y_i],

    with the log-softmax :math:`z_{iy_i} - m_i - \log \sum_c e^{z_{ic} - m_i}` taken by torch's own kernel, over the
    classes of the ``(points, C, B)`` view (the reductions then run across contiguous examples, which CPUs
    vectorise), as :func:`~landscape._evaluation.cross_entropy` takes it. Accuracy needs no arg-max (slow over that
    dimension): example :math:`i` is a hit when :math:`z^{(g)}_{iy_i} = m_i` and no other class reaches :math:`m_i`;
    points with such a tie take torch's arg-max, which picks the first. Ties are counted exactly by the sign of
    :math:`z - m`, which is -1 only strictly below the maximum: 0 at the maxima, and 0 too where :math:`z - m` is NaN
    (a NaN or infinite score), so that such points also take torch's arg-max (which picks a NaN); their loss is NaN as
    torch's is. Half-precision scores get torch's half-precision log-softmax (computed in float32, each value rounded
    once). Equal to calling the two functions point by point up to the order of floating-point sums; targets out of
    range raise the same ``ValueError``.

    Args:
        outputs: ``(points, B, C)`` scores (fastest when their ``(points, C, B)`` transpose is contiguous).
        targets: ``(points, B)`` class indices, every row checked (when they are one row expanded, stride 0 along
            the points, or a single point's, the per-example work on them is done once), or :class:`ScoringTargets`
            prepared from them for scores with as many classes (checked and prepared once for many calls).
        work: two tensors of ``(points, C, B)`` elements (any shape) of the scores' dtype for the temporaries, e.g.
            buffers reused across calls (default: allocated here).
    """
    prepared = targets if isinstance(targets, ScoringTargets) else ScoringTargets.of(outputs, targets)
    points, classes = outputs.shape[0], outputs.shape[2]
    scores = outputs.transpose(1, 2).contiguous()
    log_probs, signs = work if work is not None else (torch.empty_like(scores), torch.empty_like(scores))
    log_probs, signs = log_probs.view(scores.shape), signs.view(scores.shape)
    picked = prepared.take(torch.log_softmax(scores, dim=1, out=log_probs))
    top = scores.amax(dim=1)
    hits = prepared.take(scores) == top
    torch.sub(scores, top[:, None], out=signs)  # < 0 below the maximum; 0 at it; NaN from a NaN or infinite score
    classes_at_top = torch.sign(signs, out=signs).sum(dim=1) + classes  # sign is -1 only below
    tied = (classes_at_top > 1).any(dim=1).nonzero()[:, 0]
    if len(tied):
        hits[tied] = scores[tied].argmax(dim=1) == prepared.targets.expand(points, -1)[tied]
    if prepared.all_valid:
        return -picked.mean(dim=1), fraction(hits.sum(dim=1), prepared.valid.shape[-1], outputs.dtype)
    valid = prepared.valid
    count = valid.sum(dim=-1)
    wide = torch.promote_types(outputs.dtype, torch.float32)  # a half-precision count is rounded from 256 on
    loss = -(torch.where(valid, picked, torch.zeros_like(picked)).sum(dim=1, dtype=wide) / count).to(outputs.dtype)
    return loss, fraction((hits & valid).sum(dim=1), count, outputs.dtype)


@dataclass(frozen=True)
class ScoringTargets:
    """Class indices checked and prepared once for :func:`stacked_scores` (e.g. one batch's, for every chunk).

    Attributes:
        targets: ``(B,)`` when one row serves every point, else ``(points, B)``.
        valid: where the target is not :data:`~landscape._evaluation.IGNORE_INDEX` (same shape).
        all_valid: whether every target is valid.
        index: each example's target entry: its offset :math:`y_i B + i` in the flattened ``(C, B)`` slice of a
            point for a shared row, else the targets as a ``(points, 1, B)`` index for ``gather``.
    """

    targets: Tensor
    valid: Tensor
    all_valid: bool
    index: Tensor

    @classmethod
    def of(cls, outputs: Tensor, targets: Tensor) -> ScoringTargets:
        """Checked against ``(points, B, C)`` scores (one ``ValueError`` for targets they cannot score)."""
        if targets.shape[0] == 1 or targets.stride(0) == 0:
            targets = targets[0]  # one row shared by every point; broadcast where used
        check_classification(outputs[0], targets.flatten())  # every row's targets
        valid = targets != IGNORE_INDEX
        index = targets.clamp_min(0).long()  # offsets y_i B + i overflow a small integer type
        if targets.dim() == 1:
            index = index * len(targets) + torch.arange(len(targets), device=targets.device)
        else:
            index = index[:, None, :]
        return cls(targets, valid, bool(valid.all()), index)

    def take(self, values: Tensor) -> Tensor:
        """The target entries ``(points, B)`` of ``(points, C, B)`` contiguous ``values``."""
        if self.targets.dim() == 1:
            return values.flatten(1).index_select(1, self.index)
        return values.gather(1, self.index)[:, 0]


def _clock(device: torch.device) -> float:
    """Seconds of this process's CPU time (insensitive to other processes' load); wall time after a sync on GPUs."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def _flattens(model: nn.Module, layer: nn.Module, batch: Batch) -> bool:
    """Whether ``layer`` receives the batch's inputs as ``(B, features)`` (e.g. after ``flatten(1)``)."""
    with torch.no_grad():
        inp = _layer_input(model, layer, head(batch, 2), None)
    return inp.dim() == 2


def channels_last(x: Tensor) -> Tensor:
    """``x`` (a 4-D batch) in channels-last layout, with channels-last strides even for one channel.

    ``contiguous(memory_format=torch.channels_last)`` leaves a one-channel batch with its usual strides (the same
    memory either way), and a convolution then returns its output in the usual layout; giving the channel dimension
    stride 1 makes the convolution keep channels-last from the first layer on.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    return x.as_strided(x.shape, (c * h * w, 1, w * c, c)) if c == 1 else x


def stack_keeping_layout(tensors: Sequence[Tensor]) -> Tensor:
    """``torch.stack(tensors)`` where each slice keeps the memory layout of the first tensor (e.g. channels-last)."""
    first = tensors[0]
    if first.dim() != 4 or first.is_contiguous() or not first.is_contiguous(memory_format=torch.channels_last):
        return torch.stack(tensors)
    n, c, h, w = first.shape
    out = torch.empty((len(tensors), n, h, w, c), dtype=first.dtype, device=first.device).permute(0, 1, 4, 2, 3)
    for slot, t in zip(out, tensors, strict=True):
        slot.copy_(t)
    return out


def mix(parts: Tensor, coords: Tensor) -> Tensor:
    r""":math:`P_0 + \sum_k c_k P_k` for stacked products ``parts`` (one point's first-layer output), layout kept."""
    out = torch.add(parts[0], parts[1], alpha=float(coords[0]))
    for k in range(1, len(coords)):
        out.add_(parts[k + 1], alpha=float(coords[k]))
    return out


def piece_size(model: nn.Module, batch: Batch, forward_fn: ForwardFn | None, budget: int) -> int | None:
    """Examples per piece so that the largest activation of one piece is about ``budget`` bytes.

    ``None`` where a batch cannot be cut (a ``forward_fn``, inputs that are not one tensor) or needs no cutting.
    """
    if forward_fn is not None or not isinstance(batch, (tuple, list)) or not isinstance(batch[0], Tensor):
        return None
    sample = head(batch, 2)
    largest = [0]

    def hook(_module: nn.Module, _args: tuple, output: Any) -> None:
        if isinstance(output, Tensor):
            largest[0] = max(largest[0], output.nbytes // max(len(sample[1]), 1))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            run_model(model, sample)
    finally:
        for h in handles:
            h.remove()
    piece = max(1, budget // max(largest[0], 1))
    return piece if piece < len(batch[1]) else None


def _pieces(size: int, piece: int | None) -> list[slice | None]:
    """Row ranges of ``size`` examples cut ``piece`` at a time (``[None]``: the whole batch at once)."""
    if piece is None or piece >= size:
        return [None]
    return [slice(i, min(i + piece, size)) for i in range(0, size, piece)]


def _rows(batch: Batch, rows: slice | None) -> Batch:
    """The examples ``rows`` of an ``(inputs, targets)`` batch (the batch itself for ``None``)."""
    return batch if rows is None else (batch[0][rows], batch[1][rows])
