"""Private helpers of surfaces and sharpness: loss and accuracy at given parameters, and an untouched caller's model.

Every public function that evaluates a model at other parameters runs inside :func:`preserved_state`, which puts back
parameter values (bit for bit, in the same ``Parameter`` objects), gradients, ``requires_grad`` flags, buffers, the
train/eval mode of every submodule and the BatchNorm momenta. Nothing here moves the model between devices: data are
moved to the model instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from landscape._data import Batch, ForwardFn, batch_length, batch_to, run_model

LossFn = Callable[[Tensor, Tensor], Tensor]
AccuracyFn = Callable[[Tensor, Tensor], Tensor]
ParamDict = dict[str, Tensor]


IGNORE_INDEX = -100
"""A target equal to this is left out of the default loss and accuracy (torch's ``ignore_index``)."""

MODES = ("eval", "train")
"""Modes a measure can evaluate the model in: ``"eval"`` (default: BatchNorm running statistics, no dropout) or
``"train"`` (batch statistics, dropout active)."""


def top1_accuracy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Fraction of examples whose arg-max over dimension 1 equals the integer target; NaN where that does not apply.

    Targets equal to :data:`IGNORE_INDEX` are left out (NaN if every target is).

    Example:
        >>> top1_accuracy(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([1, 1])).item()
        0.5
        >>> top1_accuracy(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([1, -100])).item()
        1.0
    """
    classification = (
        outputs.dim() >= 2
        and not targets.is_floating_point()
        and outputs.shape[0] == targets.shape[0]
        and outputs.shape[2:] == targets.shape[1:]
    )
    if classification:  # arg-max over the leading dimension: several times faster on CPU for few classes
        valid = targets != IGNORE_INDEX
        hits = (outputs.movedim(1, 0).argmax(dim=0) == targets) & valid
        return fraction(hits.sum(), valid.sum(), outputs.dtype)
    return torch.full((), float("nan"), dtype=outputs.dtype, device=outputs.device)


def fraction(count: Tensor, total: Tensor | int, dtype: torch.dtype) -> Tensor:
    """``count / total`` of integer counts, divided in float32 (float64 for float64) and then rounded to ``dtype``.

    Counts cast to a half-precision dtype before the division would be rounded (bfloat16 holds integers exactly only
    up to 256), and the fraction would be a rounding step or more off.
    """
    wide = torch.promote_types(dtype, torch.float32)
    return (count.to(wide) / total).to(dtype)


def check_classification(outputs: Tensor, targets: Tensor) -> None:
    """Raise ``ValueError`` unless ``outputs`` are class scores and ``targets`` class indices, as cross-entropy needs.

    Outputs must have shape ``(B, C, ...)`` with ``C >= 2``; targets must be integers in ``[0, C)`` or
    :data:`IGNORE_INDEX`. A regression model (one output column, or float targets) gets an error asking for
    ``loss_fn`` instead of a loss that is zero (one column) or means something else (soft labels).
    """
    hint = "pass loss_fn= (e.g. torch.nn.functional.mse_loss for regression)"
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"the default loss is cross-entropy on class indices, got {targets.dtype} targets; {hint}")
    if outputs.dim() < 2 or outputs.shape[1] < 2:
        raise ValueError(
            f"the default loss is cross-entropy on class scores, got outputs of shape {tuple(outputs.shape)} "
            f"(needs (batch, classes >= 2, ...)); {hint}"
        )
    classes = outputs.shape[1]
    bad = ((targets < 0) | (targets >= classes)) & (targets != IGNORE_INDEX)
    if bool(bad.any()):
        wrong = targets[bad]
        raise ValueError(
            f"targets out of range for {classes} classes: {int(bad.sum())} targets in [{int(wrong.min())}, "
            f"{int(wrong.max())}], expected class indices in [0, {classes}) or {IGNORE_INDEX} (ignored)"
        )


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy, as ``torch.nn.functional.cross_entropy`` with its defaults (the default loss).

    Refuses what it cannot mean (:func:`check_classification`): outputs with one column, float targets, targets out
    of range. Targets equal to :data:`IGNORE_INDEX` are left out of the mean, as torch does, but the sum and count of
    the others are divided in float32 at least (torch counts in the outputs' dtype, which in bfloat16 rounds counts
    from 256 on); the measures count ignored targets (:func:`count_ignored`), warn and record the count. For
    ``(B, C)`` scores and integer targets the log-softmax is taken over the leading dimension of the transpose, which
    on CPU is several times faster than over a short last dimension; other inputs go to torch's function.

    Example:
        >>> out, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
        >>> round(cross_entropy(out, y).item(), 6) == round(nn.functional.cross_entropy(out, y).item(), 6)
        True
    """
    check_classification(outputs, targets)
    if targets.shape != (outputs.shape[0], *outputs.shape[2:]):
        raise ValueError(
            f"targets of shape {_per_example(targets.shape[1:])} for outputs of shape {_per_example(outputs.shape[1:])}"
            f": the default loss needs one class index per example, targets of shape {_per_example(outputs.shape[2:])}"
            if targets.dim() and len(targets) == len(outputs)
            else f"targets of shape {tuple(targets.shape)} for {len(outputs)} examples"
        )
    targets = targets.long()  # torch's kernels index with int64 (uint8 targets were refused by gather)
    valid = targets != IGNORE_INDEX
    fast = outputs.dim() == 2 and len(targets) == len(outputs)
    if not fast:
        if bool(valid.all()):
            return nn.functional.cross_entropy(outputs, targets)
        terms = nn.functional.cross_entropy(outputs, targets, reduction="none")  # 0 where ignored
    elif bool(valid.all()):
        return -outputs.t().log_softmax(dim=0).gather(0, targets[None]).mean()
    else:
        terms = -outputs.t().log_softmax(dim=0).gather(0, targets.where(valid, 0)[None])[0].where(valid, 0)
    wide = torch.promote_types(outputs.dtype, torch.float32)  # torch counts in the outputs' dtype: bfloat16 rounds 257
    return (terms.sum(dtype=wide) / valid.sum()).to(outputs.dtype)


def batch_weights(batches: Sequence[Batch], fn: LossFn | AccuracyFn, forward_fn: ForwardFn | None = None) -> list[int]:
    """Each batch's weight in the mean of ``fn`` (a loss or an accuracy, itself a mean per batch) over batches.

    The default loss and accuracy (and torch's cross-entropy) average over the target entries that are not
    :data:`IGNORE_INDEX`, so a batch weighs as many as it has: the mean over batches is then the mean over every
    such entry of the data, as one batch of all of them gives, and a batch of ignored targets only (whose own mean is
    NaN) weighs nothing and is left out. Any other function, and targets that ``forward_fn`` makes, weigh a batch by
    its examples.
    """
    if fn not in (cross_entropy, nn.functional.cross_entropy, top1_accuracy) or forward_fn is not None:
        return [batch_length(b, forward_fn) for b in batches]
    return [int((b[1] != IGNORE_INDEX).sum()) for b in batches]


def batch_fractions(
    batches: Sequence[Batch], fn: LossFn | AccuracyFn, forward_fn: ForwardFn | None = None
) -> list[float]:
    """:func:`batch_weights` divided by their sum.

    When no batch weighs anything (every target ignored), each batch's share of the examples: the mean is then NaN,
    as each batch's is.
    """
    weights = batch_weights(batches, fn, forward_fn)
    if not sum(weights):
        weights = [batch_length(b, forward_fn) for b in batches]
    total = sum(weights)
    return [w / total for w in weights]


def _per_example(shape: torch.Size) -> str:
    """A batch's shape with N examples and ``shape`` per example, as text: ``(N, 3)``, ``(N,)``."""
    return f"(N, {', '.join(map(str, shape))})" if shape else "(N,)"


def count_ignored(batches: Sequence[Batch], loss_fn: LossFn, what: str, forward_fn: object = None) -> int | None:
    """Count the targets the default loss ignores; warn naming the count when there are any.

    Returns 0 for any other loss function (its handling of targets is its own), and ``None`` (not counted) when a
    ``forward_fn`` produces the targets, which are then only known inside the forward pass.
    """
    if loss_fn is not cross_entropy:
        return 0
    if forward_fn is not None:
        return None
    ignored = sum(int((y == IGNORE_INDEX).sum()) for _, y in batches if not y.is_floating_point())
    if ignored:
        total = sum(y.numel() for _, y in batches)
        warnings.warn(
            f"{what}: {ignored} of {total} targets are {IGNORE_INDEX} (ignore_index); the default cross-entropy and "
            "accuracy leave them out (counted in the config as n_ignored_targets)",
            RuntimeWarning,
            stacklevel=3,
        )
    return ignored


@contextmanager
def evaluation_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Put ``model`` in eval or train mode (``mode`` in :data:`MODES`) within the block, each submodule's after.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with evaluation_mode(net, "eval"):
        ...     inside = net[1].training
        >>> inside, net[1].training
        (False, True)
    """
    if mode not in MODES:
        raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
    modes = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def function_name(fn: Callable) -> str:
    """A stable, readable name of a loss or accuracy function (recorded in configs and cache keys)."""
    if hasattr(fn, "__qualname__"):
        return f"{getattr(fn, '__module__', '')}.{fn.__qualname__}"
    return repr(fn)


def batches_to(batches: Sequence[Batch], device: torch.device) -> list[Batch]:
    """The batches with every tensor moved to ``device``."""
    return [batch_to(b, device) for b in batches]


def batchnorm_modules(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run a block that may change ``model`` in place, then put every parameter, buffer, flag and mode back."""
    params = [(p, p.detach().clone(), p.requires_grad, p.grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in batchnorm_modules(model)]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value, requires_grad, grad in params:
                p.copy_(value)
                p.requires_grad_(requires_grad)
                p.grad = grad
            for b, value in buffers:
                b.copy_(value)
        for m, training in modes:
            m.training = training
        for m, momentum in momenta:
            m.momentum = momentum


def combine(origin: Mapping[str, Tensor], directions: Sequence[Mapping[str, Tensor]], coords: Tensor) -> ParamDict:
    r"""Parameters :math:`\theta_0 + \sum_k c_k d_k` for one point ``coords`` (a vector of length ``len(directions)``).

    Names absent from a direction are not moved along it. The loop and the batched path both call this, so they
    perturb parameters with the same floating-point operations.
    """
    out = {}
    for name, theta in origin.items():
        value = theta
        for k, direction in enumerate(directions):
            if name in direction:
                value = value + coords[k] * direction[name]
        out[name] = value
    return out


def recompute_batchnorm(model: nn.Module, batches: Sequence[Batch], forward_fn: ForwardFn | None = None) -> None:
    """Re-estimate BatchNorm running statistics at the model's current parameters on ``batches``.

    Statistics are reset and accumulated as a cumulative average (``momentum=None``) with only the BatchNorm layers in
    training mode, so dropout and other train-time behaviour do not disturb the estimate. The caller restores modes.
    """
    layers = batchnorm_modules(model)
    if not layers:
        return
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for batch in batches:
            run_model(model, batch, forward_fn)
    for m in layers:
        m.eval()


class LoopEvaluator:
    """The reference: set each grid point's parameters in place, then run the model batch by batch.

    Args:
        model: the network, already in eval mode inside :func:`preserved_state`.
        origin: parameters at the grid origin, by name.
        directions: one or two directions (dicts by parameter name).
        batches: evaluation batches, on the model's device.
        loss_fn: mean loss of a batch, ``loss_fn(outputs, targets)``.
        accuracy_fn: mean accuracy of a batch.
        bn_batches: when given, BatchNorm statistics are re-estimated on them at every point.
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)`` (default: the model on the batch's inputs).
    """

    name = "loop"

    def __init__(
        self,
        model: nn.Module,
        origin: Mapping[str, Tensor],
        directions: Sequence[Mapping[str, Tensor]],
        batches: Sequence[Batch],
        loss_fn: LossFn,
        accuracy_fn: AccuracyFn,
        bn_batches: Sequence[Batch] | None = None,
        forward_fn: ForwardFn | None = None,
    ) -> None:
        self.model, self.origin, self.directions, self.forward_fn = model, origin, directions, forward_fn
        self.batches, self.loss_fn, self.accuracy_fn, self.bn_batches = batches, loss_fn, accuracy_fn, bn_batches
        self.params = dict(model.named_parameters())

    def __call__(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and accuracy at every row of ``coords`` (shape ``(G, k)``), as float64 tensors of length ``G``."""
        losses, accs = torch.empty(len(coords), dtype=torch.float64), torch.empty(len(coords), dtype=torch.float64)
        for i, point in enumerate(coords):
            with torch.no_grad():
                for name, value in combine(self.origin, self.directions, point).items():
                    self.params[name].copy_(value)
            if self.bn_batches is not None:
                recompute_batchnorm(self.model, self.bn_batches, self.forward_fn)
            losses[i], accs[i] = evaluate_batches(
                self.model, self.batches, self.loss_fn, self.accuracy_fn, self.forward_fn
            )
        return losses, accs


def evaluate_batches(
    model: nn.Module,
    batches: Sequence[Batch],
    loss_fn: LossFn,
    accuracy_fn: AccuracyFn,
    forward_fn: ForwardFn | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``batches``, each batch weighted by :func:`batch_fractions`."""
    loss, acc = 0.0, 0.0
    loss_weights = batch_fractions(batches, loss_fn, forward_fn)
    weights = zip(loss_weights, batch_fractions(batches, accuracy_fn, forward_fn), strict=True)
    with torch.no_grad():
        for batch, (loss_weight, acc_weight) in zip(batches, weights, strict=True):
            if not (loss_weight or acc_weight):
                continue
            out, y = run_model(model, batch, forward_fn)
            if loss_weight:
                loss += float(loss_fn(out, y)) * loss_weight
            if acc_weight:
                acc += float(accuracy_fn(out, y)) * acc_weight
    return loss, acc


def flatten(tensors: Mapping[str, Tensor]) -> Tensor:
    """All tensors of a dict concatenated into one vector, in the dict's order."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> ParamDict:
    """Split ``vector`` into tensors shaped like the values of ``like`` (inverse of :func:`flatten`)."""
    out, start = {}, 0
    for name, t in like.items():
        out[name] = vector[start : start + t.numel()].view_as(t)
        start += t.numel()
    if start != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, the parameters {start}")
    return out
