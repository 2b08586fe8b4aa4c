r"""Trajectory measures as training-runner callbacks: weight norms, step sizes, checkpoint distances, gradient norm.

Each measure is a small unit with a schedule (cockpit's quantity design): it runs at the steps its schedule names
(``every=k``, or explicit steps such as :func:`log_steps`) and writes tidy rows through ``state.log(quantity, value,
**keys)``. The runner calls whichever of ``on_train_begin``, ``on_step_end``, ``on_epoch_end``, ``on_train_end`` a
measure defines; ``state`` follows :class:`TrainState`. In one's own training loop, :class:`Tracker` plays the
runner's part: build it before the first step, call :meth:`Tracker.step` after every optimizer step and read
:meth:`Tracker.frame`. Rows carry ``param`` (a parameter name, or ``"all"`` for the
whole model) and, for checkpoint distances, ``checkpoint``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from landscape._data import named_parameters

__all__ = [
    "CheckpointDistances",
    "EffectiveStepSize",
    "GradientNorm",
    "Measure",
    "TrainState",
    "Tracker",
    "WeightNorms",
    "log_steps",
]


class TrainState(Protocol):
    """What the training runner hands to a callback (duck-typed; ``studies.train.TrainState`` is one)."""

    model: nn.Module
    optimizer: Any
    step: int
    epoch: int

    loss: float

    def log(self, quantity: str, value: float, **keys: Any) -> None:
        """Append one tidy row ``{step, epoch, quantity, value, **keys}`` to the run's metrics."""


def log_steps(end: int, per_decade: int = 10, start: int = 1) -> list[int]:
    """Integer steps spaced evenly in log scale from ``start`` to ``end`` (cockpit's ``logarithmic`` schedule).

    Example:
        >>> log_steps(100, per_decade=3)
        [1, 2, 5, 10, 22, 46, 100]
    """
    if start < 1 or end < start:
        raise ValueError(f"Invalid range: start={start}, end={end}")
    if per_decade < 1:
        raise ValueError(f"Invalid per_decade: {per_decade}")
    num = max(int(math.ceil(per_decade * math.log10(end / start))) + 1, 1)
    return sorted({int(round(s)) for s in np.logspace(math.log10(start), math.log10(end), num)})


class Measure:
    """Schedule shared by all measures: run after step ``t`` when ``t % every == 0`` or ``t`` is in ``at``.

    Args:
        every: run every ``every`` optimizer steps (``None``: only at ``at``).
        at: explicit steps to run at (e.g. :func:`log_steps`).
    """

    def __init__(self, every: int | None = 1, at: Iterable[int] | None = None) -> None:
        if every is not None and every < 1:
            raise ValueError(f"Invalid every: {every}")
        self.every = every
        self.at = frozenset(int(s) for s in at) if at is not None else frozenset()
        if every is None and not self.at:
            raise ValueError("A measure needs a schedule: every=k or at=[steps]")

    def due(self, step: int) -> bool:
        """Whether the measure runs after optimizer step ``step``."""
        return step in self.at or (self.every is not None and step % self.every == 0)


def _vectors(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().reshape(-1).double() for name, p in named_parameters(model).items()}


def _norm(tensor: Tensor) -> float:
    return float(torch.linalg.vector_norm(tensor))


class WeightNorms(Measure):
    r"""Weight norms per parameter and of the whole model, and their growth since the start of training.

    Logs ``weight_norm`` :math:`\lVert\theta_t\rVert` and ``weight_norm_growth``
    :math:`\lVert\theta_t\rVert / \lVert\theta_0\rVert` for every trainable parameter (``param=name``; frozen
    ones, ``requires_grad=False``, are left out of both) and for the
    concatenation of all (``param="all"``), at step 0 (``on_train_begin``) and at scheduled steps.
    Arguments as :class:`Measure`; ``per_param=False`` logs only ``"all"``.
    """

    def __init__(self, every: int | None = 1, at: Iterable[int] | None = None, per_param: bool = True) -> None:
        super().__init__(every, at)
        self.per_param = per_param
        self.initial: dict[str, float] | None = None

    def _norms(self, model: nn.Module) -> dict[str, float]:
        vectors = _vectors(model)
        norms = {name: _norm(v) for name, v in vectors.items()} if self.per_param else {}
        norms["all"] = math.sqrt(sum(_norm(v) ** 2 for v in vectors.values()))
        return norms

    def _log(self, state: TrainState) -> None:
        norms = self._norms(state.model)
        if self.initial is None:
            self.initial = norms
        for name, value in norms.items():
            state.log("weight_norm", value, param=name)
            start = self.initial[name]
            state.log("weight_norm_growth", value / start if start > 0 else math.nan, param=name)

    def on_train_begin(self, state: TrainState) -> None:
        self.initial = None
        self._log(state)

    def on_step_end(self, state: TrainState) -> None:
        if self.due(state.step):
            self._log(state)


class EffectiveStepSize(Measure):
    r"""Effective step size: the relative step, and :math:`\gamma/\lVert w\rVert^2` for scale-invariant weights.

    ``effective_step`` is :math:`\lVert\theta_t - \theta_{t-1}\rVert / \lVert\theta_{t-1}\rVert`.

    It is logged per parameter and for ``"all"``. For the weights named in ``scale_invariant`` (those
    followed by a normalisation layer, whose function depends on :math:`w/\lVert w\rVert` only) it also logs
    ``effective_lr`` :math:`\gamma/\lVert w_t\rVert^2`, the learning rate of the direction :math:`w/\lVert w\rVert`
    (van Laarhoven 2017, eq. 12; Heo et al. 2021, Section 2), with :math:`\gamma` the parameter group's ``lr``.
    :math:`\theta_{t-1}` is copied after step :math:`t-1` only when step :math:`t` is scheduled.

    Args:
        every: see :class:`Measure`.
        at: see :class:`Measure`.
        scale_invariant: parameter names for ``effective_lr``.
        per_param: log every parameter as well as ``"all"``.
    """

    def __init__(
        self,
        every: int | None = 1,
        at: Iterable[int] | None = None,
        scale_invariant: Iterable[str] = (),
        per_param: bool = True,
    ) -> None:
        super().__init__(every, at)
        self.scale_invariant = tuple(scale_invariant)
        self.per_param = per_param
        self.previous: dict[str, Tensor] | None = None

    def _snapshot(self, state: TrainState) -> None:
        self.previous = {n: v.clone() for n, v in _vectors(state.model).items()} if self.due(state.step + 1) else None

    def on_train_begin(self, state: TrainState) -> None:
        unknown = set(self.scale_invariant) - set(named_parameters(state.model))
        if unknown:
            raise ValueError(f"scale_invariant names no parameter of the model: {sorted(unknown)}")
        self._snapshot(state)

    def on_step_end(self, state: TrainState) -> None:
        if self.previous is not None and self.due(state.step):
            current = _vectors(state.model)
            deltas = {n: _norm(current[n] - self.previous[n]) for n in current}
            before = {n: _norm(self.previous[n]) for n in current}
            rows = {n: deltas[n] / before[n] if before[n] > 0 else math.nan for n in current} if self.per_param else {}
            total = math.sqrt(sum(before[n] ** 2 for n in current))
            rows["all"] = math.sqrt(sum(d**2 for d in deltas.values())) / total if total > 0 else math.nan
            for name, value in rows.items():
                state.log("effective_step", value, param=name)
            lrs = {id(p): g["lr"] for g in state.optimizer.param_groups for p in g["params"]}
            params = named_parameters(state.model)
            for name in self.scale_invariant:
                norm2 = _norm(current[name]) ** 2
                state.log("effective_lr", float(lrs[id(params[name])]) / norm2 if norm2 > 0 else math.nan, param=name)
        self._snapshot(state)


class CheckpointDistances(Measure):
    r"""Distance of the weights from each saved checkpoint over training ("checkpoint-distance curves").

    With :math:`d^2 = \sum_i (\theta_i - \theta_{c,i})^2` over all trainable parameters, logs for every checkpoint
    :math:`c` (key ``checkpoint``): ``distance`` :math:`d`, ``relative_distance`` :math:`d/\lVert\theta_c\rVert`,
    ``cosine`` :math:`\theta^\top\theta_c / (\lVert\theta\rVert\lVert\theta_c\rVert)` and ``kernel``
    :math:`\exp(-d^2/(2\sigma^2))`, the Gaussian kernel of the checkpoint-repulsion regulariser
    (``optim.CheckpointRepulsion``; SPEC: squared distance inside the kernel). Checkpoints are taken at the end of the
    epochs in ``at_epochs`` (0: the initial weights, at ``on_train_begin``) or by :meth:`add`.

    Args:
        every: see :class:`Measure`.
        at: see :class:`Measure`.
        at_epochs: epochs after which a checkpoint named ``"epoch{e}"`` is saved.
        sigma: kernel width :math:`\sigma`.
    """

    def __init__(
        self, every: int | None = 1, at: Iterable[int] | None = None, at_epochs: Iterable[int] = (), sigma: float = 1.0
    ) -> None:
        super().__init__(every, at)
        if sigma <= 0:
            raise ValueError(f"Invalid sigma: {sigma}")
        self.at_epochs = frozenset(int(e) for e in at_epochs)
        self.sigma = sigma
        self.checkpoints: dict[str, Tensor] = {}

    def add(self, model: nn.Module, name: str) -> None:
        """Save the model's current trainable parameters as checkpoint ``name`` (a detached float64 copy)."""
        if name in self.checkpoints:
            raise ValueError(f"Checkpoint name already used: {name!r}")
        self.checkpoints[name] = torch.cat(list(_vectors(model).values())).clone()

    def distances(self, model: nn.Module) -> dict[str, dict[str, float]]:
        """The four quantities for every checkpoint, computed for ``model``'s current parameters."""
        theta = torch.cat(list(_vectors(model).values()))
        result = {}
        for name, anchor in self.checkpoints.items():
            d2 = float(torch.sum((theta - anchor) ** 2))
            anchor_norm, theta_norm = _norm(anchor), _norm(theta)
            denominator = anchor_norm * theta_norm
            result[name] = {
                "distance": math.sqrt(d2),
                "relative_distance": math.sqrt(d2) / anchor_norm if anchor_norm > 0 else math.nan,
                "cosine": float(theta @ anchor) / denominator if denominator > 0 else math.nan,
                "kernel": math.exp(-d2 / (2 * self.sigma**2)),
            }
        return result

    def on_train_begin(self, state: TrainState) -> None:
        if 0 in self.at_epochs:
            self.add(state.model, "epoch0")

    def on_step_end(self, state: TrainState) -> None:
        if self.due(state.step):
            for name, values in self.distances(state.model).items():
                for quantity, value in values.items():
                    state.log(quantity, value, checkpoint=name)

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch in self.at_epochs:
            self.add(state.model, f"epoch{state.epoch}")


class GradientNorm(Measure):
    r"""Norm of the last mini-batch gradient :math:`\lVert g_t\rVert` (``grad_norm``), read from ``.grad``.

    Logs ``param="all"`` and, with ``per_param=True``, every parameter. Parameters without a gradient count as zero.
    With a wrapper such as SAM, ``.grad`` holds the last gradient the wrapper computed. Arguments as :class:`Measure`.
    """

    def __init__(self, every: int | None = 1, at: Iterable[int] | None = None, per_param: bool = False) -> None:
        super().__init__(every, at)
        self.per_param = per_param

    def on_step_end(self, state: TrainState) -> None:
        if not self.due(state.step):
            return
        norms = {
            name: _norm(p.grad.detach().double()) if p.grad is not None else 0.0
            for name, p in named_parameters(state.model).items()
        }
        if self.per_param:
            for name, value in norms.items():
                state.log("grad_norm", value, param=name)
        state.log("grad_norm", math.sqrt(sum(v**2 for v in norms.values())), param="all")


class _LoopState:
    """The :class:`TrainState` a :class:`Tracker` hands to the measures."""

    def __init__(self, model: nn.Module, optimizer: Any) -> None:
        self.model, self.optimizer = model, optimizer
        self.step, self.epoch, self.loss = 0, 0, math.nan
        self.records: list[dict[str, Any]] = []

    def log(self, quantity: str, value: float, **keys: Any) -> None:
        self.records.append({"step": self.step, "epoch": self.epoch, "quantity": quantity, "value": value, **keys})


class Tracker:
    """Trajectory measures in one's own training loop: the runner's bookkeeping in a small object.

    Build it when the model is at its starting point (it calls the measures' ``on_train_begin``), call
    :meth:`step` after every ``optimizer.step()`` (it calls ``on_step_end``), :meth:`epoch_end` after every epoch
    and :meth:`end` after training if a measure needs those hooks; :meth:`frame` returns the tidy rows ``step,
    epoch, quantity, value, param, ...`` logged so far (with ``train_loss`` when :meth:`step` is given the loss).
    Epochs are numbered as the runner (:mod:`studies.train`) numbers them: 0 for the starting point, 1 for the
    steps of the first epoch and its end, and so on.

    Args:
        model: the network being trained.
        optimizer: its optimizer (``EffectiveStepSize`` reads the learning rates).
        measures: e.g. ``[WeightNorms(), EffectiveStepSize(), GradientNorm()]``, or one's own objects with any of
            the hooks ``on_train_begin, on_step_end, on_epoch_end, on_train_end`` taking a :class:`TrainState`.

    Example:
        >>> model = nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> tracker = Tracker(model, opt, [WeightNorms(per_param=False), GradientNorm()])
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     loss = model(torch.ones(4, 2)).pow(2).mean()
        ...     loss.backward()
        ...     opt.step()
        ...     tracker.step(loss)
        >>> frame = tracker.frame()
        >>> sorted(frame["quantity"].unique()), int(frame["step"].max()), len(frame.query("quantity == 'grad_norm'"))
        (['grad_norm', 'train_loss', 'weight_norm', 'weight_norm_growth'], 3, 3)
    """

    def __init__(self, model: nn.Module, optimizer: Any, measures: Iterable[object]) -> None:
        self.state = _LoopState(model, optimizer)
        self.measures = list(measures)
        self._call("on_train_begin")
        self.state.epoch = 1  # the starting point's rows are epoch 0, the first epoch's steps epoch 1

    def _call(self, hook: str) -> None:
        for measure in self.measures:
            if hasattr(measure, hook):
                getattr(measure, hook)(self.state)

    def step(self, loss: Tensor | float | None = None) -> None:
        """Record one optimizer step (and its mini-batch loss, when given) and run the measures due at it."""
        self.state.step += 1
        if loss is not None:
            self.state.loss = float(loss.detach() if isinstance(loss, Tensor) else loss)
            self.state.log("train_loss", self.state.loss)
        self._call("on_step_end")

    def epoch_end(self) -> None:
        """Close the current epoch (the measures' ``on_epoch_end``); later steps count in the next one."""
        self._call("on_epoch_end")
        self.state.epoch += 1

    def end(self) -> None:
        """Finish (the measures' ``on_train_end``)."""
        self._call("on_train_end")

    def frame(self) -> pd.DataFrame:
        """The rows logged so far, as a tidy frame."""
        return pd.DataFrame.from_records(self.state.records)
