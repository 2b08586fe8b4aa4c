r"""The training runner: one model, one optimizer, one data set, recorded as a tidy DataFrame.

Every step calls ``optimizer.step(closure)``; the closure zeroes the gradients, runs forward and backward and returns
the loss, so wrappers that evaluate the loss more than once (SAM, XGrad, extragradient) work unchanged. The closure
minimises :math:`L_B(\theta) + R(\theta)`: the mini-batch loss plus an optional regulariser
:math:`R` (``regularizer``, e.g. a repulsion from checkpoints); test loss and accuracy never include :math:`R`.
The values logged for a step are those of the closure's first call (at the current weights, the point whose loss
SAM, extragradient and torch's optimizers return).

The hot loop never waits for the device: per-step losses (and penalties) stay on the device and are moved to the
host once per epoch, together with the divergence check.

Mixed precision (``amp=True``) runs the forward pass of the training closure under ``torch.autocast`` with bfloat16
on CPU and CUDA alike, without a gradient scaler: bfloat16 keeps float32's 8-bit exponent, so gradients do not
underflow and need no loss scaling (the reason float16 needs ``torch.amp.GradScaler``), and a scaler would not
compose with closure-based wrappers (``GradScaler.step`` refuses closures). Parameters, gradients and optimizer state
stay in float32, the backward pass runs outside the autocast region (as torch recommends), the regulariser is
evaluated in full precision, and evaluation (and everything in :mod:`landscape`) never runs under autocast.
``amp=None`` (the default) follows :func:`mixed_precision`, which :func:`studies.runner.run_study` sets from its
``amp`` argument, so every study's training obeys ``--amp`` without passing it along.

Metrics are rows ``step, epoch, quantity, value`` (plus any key a callback adds, e.g. ``param``):

* ``train_loss`` at every step (the mini-batch data loss before the step, without any regulariser);
* ``regularizer`` at every step when :func:`train` is given one (the penalty R(θ) before the step);
* per epoch (``epoch = 0`` is the initial model): ``epoch_train_loss`` (mean mini-batch loss of the epoch),
  ``test_loss``, ``test_accuracy`` and ``seconds`` (wall time of the epoch's training steps, evaluation excluded);
* ``diverged = 1`` at the first non-finite training loss (NaN, +inf or -inf, or a non-finite regulariser), found at
  the end of its epoch (the hot loop does not wait for the device), or at the epoch's last step when only the test
  loss after it is not finite (the last steps took the weights there); training stops at the end of that epoch and
  the run is a result, not an error. A non-finite test loss is logged with a NaN test accuracy (an arg-max over NaN
  outputs is no accuracy).

Callbacks are objects with any of ``on_train_begin(state)``, ``on_step_end(state)``, ``on_epoch_end(state)`` and
``on_train_end(state)``; ``state`` is a :class:`TrainState` whose ``log`` appends rows to the metrics.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from landscape.files import OutputPathError, atomic_write, check_output_dir, check_output_file
from studies.data import Dataset, batches
from studies.store import safe_torch_load, torch_bytes

LossFn = Callable[[Tensor, Tensor], Tensor]
Regularizer = Callable[[nn.Module], Tensor]

#: The default of ``train(amp=None)``: set for a block by :func:`mixed_precision`.
_AMP: ContextVar[bool] = ContextVar("valley_amp", default=False)


@contextmanager
def mixed_precision(enabled: bool) -> Iterator[None]:
    """Within the block, :func:`train` called with ``amp=None`` trains with (or without) bfloat16 autocast.

    Example:
        >>> with mixed_precision(True):
        ...     amp_default()
        True
        >>> amp_default()
        False
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    token = _AMP.set(enabled)
    try:
        yield
    finally:
        _AMP.reset(token)


def amp_default() -> bool:
    """Whether ``train(amp=None)`` uses mixed precision here (set by :func:`mixed_precision`; default ``False``)."""
    return _AMP.get()


@dataclass
class TrainState:
    """What callbacks see: the live model and optimizer, counters, and the metrics log."""

    model: nn.Module
    optimizer: Any
    step: int = 0
    epoch: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)
    _loss: Tensor | None = None

    @property
    def loss(self) -> float:
        """The last mini-batch training loss (NaN before the first step); reading it synchronises the device."""
        return math.nan if self._loss is None else float(self._loss)

    def log(self, quantity: str, value: float, **keys: Any) -> None:
        """Append one tidy row ``{step, epoch, quantity, value, **keys}``."""
        self.records.append({"step": self.step, "epoch": self.epoch, "quantity": quantity, "value": value, **keys})


class Callback(Protocol):
    """Any subset of these hooks; the runner calls those an object defines."""

    def on_step_end(self, state: TrainState) -> None: ...


@dataclass
class TrainResult:
    """A finished run: the tidy metrics, whether it diverged, and the final model weights."""

    metrics: pd.DataFrame
    diverged: bool
    state_dict: dict[str, Tensor]


def evaluate(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn = F.cross_entropy, batch_size: int = 1000):
    """Mean loss and accuracy of ``model`` on ``(x, y)`` in eval mode, without gradients.

    Returns:
        ``(loss, accuracy)`` as 0-dim tensors on the model's device (no host synchronisation).
    """
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=x.device)  # promoted to the loss's dtype (float64 for a float64 model)
    correct = torch.zeros((), device=x.device)
    with torch.no_grad():
        for xb, yb in batches(x, y, batch_size, shuffle=False):
            out = model(xb)
            total_loss = total_loss + loss_fn(out, yb) * len(yb)
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    return total_loss / len(y), correct / len(y)


def train(
    model_factory: Callable[[], nn.Module],
    optimizer_factory: Callable[[nn.Module], Any],
    data: Dataset,
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    init_state: dict[str, Tensor] | None = None,
    callbacks: Sequence[object] = (),
    loss_fn: LossFn = F.cross_entropy,
    regularizer: Regularizer | None = None,
    amp: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_epochs: Sequence[int] = (),
    progress: bool = True,
    desc: str | None = None,
    channels_last: bool = False,
) -> TrainResult:
    """Train a fresh model from ``init_state`` (or from ``seed``) and record its metrics.

    Args:
        model_factory: builds the model (called after seeding, so its initialisation depends on ``seed`` alone).
        optimizer_factory: builds the optimizer from the model already on ``device``.
        data: training and test tensors; moved to ``device`` once.
        epochs: number of passes over the training set.
        batch_size: mini-batch size (the last batch of an epoch may be smaller).
        seed: fixes the initialisation (when ``init_state`` is ``None``), dropout and the batch order.
        device: where to train.
        init_state: a state dict loaded before training, so several optimizers start from the same weights.
        callbacks: objects with any of the hooks named in the module docstring.
        loss_fn: mean loss over a batch (training and evaluation).
        regularizer: ``R(model)``, a differentiable scalar added to every mini-batch loss in the training closure
            (logged per step as ``regularizer``; never part of ``train_loss``, ``test_loss`` or the evaluation).
        amp: train with bfloat16 autocast (see the module docstring); ``None`` follows :func:`mixed_precision`.
        checkpoint_dir: folder for checkpoints (``epoch0003.pt``: model, optimizer, step, epoch).
        checkpoint_epochs: epochs after which to checkpoint (0 = before training); with ``checkpoint_dir`` alone,
            the last epoch.
        progress: show a progress bar.
        desc: the progress bar's label.
        channels_last: keep the model's 4-d weights and the image batches in channels-last memory order (the same
            numbers up to float rounding; LeNet-5 on Fashion-MNIST trains 1.45× faster on one CPU thread).

    Returns:
        A :class:`TrainResult`; a non-finite loss ends the run early with ``diverged=True``.
    """
    if epochs < 0:
        raise ValueError(f"Invalid number of epochs: {epochs}")
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size}")
    if checkpoint_epochs and checkpoint_dir is None:
        raise ValueError(f"checkpoint_epochs={list(checkpoint_epochs)} needs a checkpoint_dir")
    if checkpoint_dir is not None and not checkpoint_epochs:
        checkpoint_epochs = (epochs,)
    if checkpoint_dir is not None:
        check_checkpoints(checkpoint_dir, checkpoint_epochs)
    if regularizer is not None and not callable(regularizer):
        raise TypeError(f"regularizer must be callable, got {type(regularizer).__name__}")
    amp = amp_default() if amp is None else amp
    if not isinstance(amp, bool):
        raise TypeError(f"amp must be a bool or None, got {type(amp).__name__}")
    device = torch.device(device)
    if amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"amp=True needs bfloat16 support, which {device} lacks")
    torch.manual_seed(seed)
    model = model_factory()
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device).train()
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    x_te, y_te = data.x_test.to(device), data.y_test.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x_tr, x_te = (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in (x_tr, x_te))
    optimizer = optimizer_factory(model)
    order = torch.Generator().manual_seed(seed)
    state = TrainState(model, optimizer)
    hooks = {name: [getattr(c, name) for c in callbacks if hasattr(c, name)] for name in _HOOKS}

    def log_epoch(seconds: float, losses: list[Tensor]) -> bool:
        """Log the epoch's rows; whether the test loss is finite."""
        test_loss, test_acc = evaluate(model, x_te, y_te, loss_fn)
        finite = math.isfinite(float(test_loss))
        if losses:
            state.log("epoch_train_loss", float(torch.stack(losses).mean()))
        state.log("test_loss", float(test_loss))
        state.log("test_accuracy", float(test_acc) if finite else math.nan)
        if seconds:
            state.log("seconds", seconds)
        return finite

    def checkpoint() -> None:
        if state.epoch in checkpoint_epochs:
            payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            payload |= {"step": state.step, "epoch": state.epoch}
            atomic_write(Path(checkpoint_dir) / f"epoch{state.epoch:04d}.pt", torch_bytes(payload))

    for hook in hooks["on_train_begin"]:
        hook(state)
    log_epoch(0.0, [])
    checkpoint()
    steps_per_epoch = math.ceil(len(y_tr) / batch_size)
    diverged = False
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False, unit="step")
    for epoch in range(1, epochs + 1):
        state.epoch = epoch
        losses: list[Tensor] = []
        penalties: list[Tensor] = []
        start = time.perf_counter()
        for xb, yb in batches(x_tr, y_tr, batch_size, generator=order):
            first: list[Tensor] = []  # data loss (and penalty) of the closure's first call in this step

            def closure(xb: Tensor = xb, yb: Tensor = yb, first: list[Tensor] = first) -> Tensor:
                optimizer.zero_grad()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = loss_fn(model(xb), yb)
                penalty = None if regularizer is None else regularizer(model)  # full precision
                if not first:
                    first.append(loss.detach())
                    if penalty is not None:
                        first.append(penalty.detach())
                total = loss if penalty is None else loss + penalty
                total.backward()
                return total

            optimizer.step(closure)
            if not first:
                raise RuntimeError(f"{type(optimizer).__name__}.step(closure) did not call the closure")
            state.step += 1
            state._loss = first[0]
            losses.append(first[0])
            penalties.extend(first[1:])
            for hook in hooks["on_step_end"]:
                hook(state)
            bar.update()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        step_losses = torch.stack(losses).double().cpu()  # the epoch's one transfer (two with a regulariser)
        first_step = state.step - len(losses) + 1
        state.records.extend(
            {"step": first_step + i, "epoch": epoch, "quantity": "train_loss", "value": v}
            for i, v in enumerate(step_losses.tolist())
        )
        if penalties:
            step_penalties = torch.stack(penalties).double().cpu()
            state.records.extend(
                {"step": first_step + i, "epoch": epoch, "quantity": "regularizer", "value": v}
                for i, v in enumerate(step_penalties.tolist())
            )
        objective = step_losses + step_penalties if penalties else step_losses  # a non-finite penalty diverges too
        bad = (~torch.isfinite(objective)).nonzero()
        if len(bad):
            state.records.append(
                {"step": first_step + int(bad[0]), "epoch": epoch, "quantity": "diverged", "value": 1.0}
            )
            diverged = True
            break
        if not log_epoch(seconds, losses):  # the epoch's last steps made the weights or outputs non-finite
            state.records.append({"step": state.step, "epoch": epoch, "quantity": "diverged", "value": 1.0})
            diverged = True
            break
        bar.set_postfix(loss=f"{float(step_losses.mean()):.4g}")
        for hook in hooks["on_epoch_end"]:
            hook(state)
        checkpoint()
    bar.close()
    for hook in hooks["on_train_end"]:
        hook(state)
    metrics = pd.DataFrame.from_records(state.records).sort_values(["step", "epoch"], kind="stable")
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return TrainResult(metrics.reset_index(drop=True), diverged, state_dict)


CHECKPOINT_KEYS = frozenset({"model", "optimizer", "step", "epoch"})
"""The keys of a checkpoint :func:`train` writes."""


def check_checkpoints(checkpoint_dir: str | os.PathLike, epochs: Sequence[int]) -> None:
    """Check, before any training, that :func:`train` may write its checkpoints into ``checkpoint_dir``.

    The folder must be writable, and each ``epochNNNN.pt`` it would replace a checkpoint :func:`train` wrote (a
    user's own file there was replaced without a word).

    Raises:
        OutputPathError: the folder or one of the files cannot be written, or a file is not a checkpoint of train's.
    """
    folder = check_output_dir(checkpoint_dir)
    for epoch in sorted(set(epochs)):
        path = check_output_file(folder / f"epoch{epoch:04d}.pt")
        if path.exists():
            try:
                ours = CHECKPOINT_KEYS <= set(safe_torch_load(path, "cpu"))
            except Exception:  # not a checkpoint torch can read safely, or not a mapping
                ours = False
            if not ours:
                raise OutputPathError(f"{path}: exists and is not a checkpoint valley wrote; move it away")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`train` (``weights_only=True``: arbitrary pickled objects are refused)."""
    return safe_torch_load(path, map_location)


_HOOKS = ("on_train_begin", "on_step_end", "on_epoch_end", "on_train_end")
