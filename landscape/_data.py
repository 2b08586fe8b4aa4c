"""Shared conventions of the analysis layer: what ``data`` is, how a batch reaches the model, how parameters are named.

``data`` is either one pair ``(inputs, targets)`` or any iterable of such pairs (a list of batches, a
``torch.utils.data.DataLoader``). ``inputs`` may be a tensor (``model(inputs)``), a tuple or list of tensors
(``model(*inputs)``) or a mapping of tensors (``model(**inputs)``); ``targets`` is a tensor. A model with its own
calling convention is served by a hook ``forward_fn(model, batch) -> (outputs, targets)``: batches are then passed to
it untouched and may be anything it understands (a dict, a custom object holding tensors...). Losses are means over
examples, so a data set split into batches is averaged with batch-size weights; a batch's size is the length of its
targets, or under a ``forward_fn`` the leading dimension of the first tensor found in the batch.

Every measure that evaluates a model on data (surfaces, curvature operators, sharpness) goes through
:func:`as_batches`, :func:`batch_to`, :func:`run_model` and :func:`functional_run` below, so all accept the same
``data`` and ``forward_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

Batch = Any  # (inputs, targets) by default; anything a forward_fn understands otherwise
Data = Batch | Iterable[Batch]
ForwardFn = Callable[[nn.Module, Any], tuple[Tensor, Tensor]]


def _is_inputs(obj: object) -> bool:
    """Whether ``obj`` is model inputs valley can call a model with: a tensor, a tuple/list or a mapping of tensors."""
    if isinstance(obj, Tensor):
        return True
    if isinstance(obj, (tuple, list)):
        return len(obj) > 0 and all(isinstance(t, Tensor) for t in obj)
    if isinstance(obj, Mapping):
        return len(obj) > 0 and all(isinstance(k, str) and isinstance(t, Tensor) for k, t in obj.items())
    return False


def _is_pair(obj: object) -> bool:
    return isinstance(obj, (tuple, list)) and len(obj) == 2 and _is_inputs(obj[0]) and isinstance(obj[1], Tensor)


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply ``fn`` to every tensor inside nested tuples, lists and mappings; other leaves are kept as they are."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        mapped = [map_tensors(v, fn) for v in obj]
        return mapped if isinstance(obj, list) else tuple(mapped)
    return obj


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for v in values:
        found = _first_tensor(v)
        if found is not None:
            return found
    return None


def batch_length(batch: Batch, forward_fn: ForwardFn | None = None) -> int:
    """Number of examples in a batch: ``len(targets)``, or under a ``forward_fn`` the first tensor's leading size."""
    if forward_fn is None:
        return len(batch[1])
    first = _first_tensor(batch)
    if first is None or first.dim() == 0:
        raise ValueError(f"cannot count the examples of a {type(batch).__name__} batch: it holds no batched tensor")
    return len(first)


def batch_to(batch: Batch, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
    """The batch with every tensor moved to ``device`` (floating-point ones also cast to ``dtype`` when given)."""

    def move(t: Tensor) -> Tensor:
        t = t.to(device)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    return map_tensors(batch, move)


def head(batch: Batch, n: int) -> Batch:
    """The first ``n`` examples of a batch (every tensor with a leading dimension cut to ``n``)."""
    return map_tensors(batch, lambda t: t[:n] if t.dim() > 0 else t)


def as_batches(data: Data, batch_size: int | None = None, forward_fn: ForwardFn | None = None) -> list[Batch]:
    """Return ``data`` as a list of batches.

    Args:
        data: a pair ``(inputs, targets)`` or an iterable of pairs (of anything ``forward_fn`` takes, when given).
        batch_size: when ``data`` is a single pair, split it into batches of this size (``None``: one batch).
        forward_fn: the caller's hook; with it, batches of an iterable are kept as they are.

    Raises:
        TypeError: if ``data`` is neither a pair nor an iterable of pairs (without a ``forward_fn``).
        ValueError: if ``batch_size`` is not positive, a pair's lengths differ, or there is no example.

    Example:
        >>> x, y = torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)
        >>> [len(b[1]) for b in as_batches((x, y), batch_size=2)]
        [2, 2, 1]
        >>> [sorted(b[0]) for b in as_batches(({"a": x, "b": x}, y))]
        [['a', 'b']]
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size}")
    if isinstance(data, tuple) and _is_pair(data):
        inputs, targets = data
        for t in [inputs] if isinstance(inputs, Tensor) else list(_leaves(inputs)):
            if len(t) != len(targets):
                raise ValueError(f"inputs and targets differ in length: {len(t)} != {len(targets)}")
        size = batch_size or max(len(targets), 1)
        batches = [
            (map_tensors(inputs, lambda t, i=i: t[i : i + size]), targets[i : i + size])
            for i in range(0, len(targets), size)
        ]
    elif isinstance(data, Iterable) and not isinstance(data, (Tensor, Mapping, str)):
        batches = []
        for batch in data:
            if forward_fn is not None:
                batches.append(batch)
                continue
            if not _is_pair(batch):
                raise TypeError(
                    f"Each batch must be a pair (inputs, targets) with inputs a tensor, a tuple or a mapping of "
                    f"tensors, got {type(batch).__name__}; pass forward_fn=... for other batches"
                )
            batches.append((batch[0], batch[1]))
    else:
        raise TypeError(f"data must be a pair (inputs, targets) or an iterable of pairs, got {type(data).__name__}")
    if not batches or sum(batch_length(b, forward_fn) for b in batches) == 0:
        raise ValueError("data holds no example")
    return batches


def _leaves(obj: Any) -> Iterable[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list, Mapping)):
        for v in obj.values() if isinstance(obj, Mapping) else obj:
            yield from _leaves(v)


def call_arguments(inputs: Any) -> tuple[tuple, dict]:
    """Positional and keyword arguments for ``model``: ``(x,)``, ``(*inputs,)`` or ``**inputs``."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def run_model(model: nn.Module, batch: Batch, forward_fn: ForwardFn | None = None) -> tuple[Any, Tensor]:
    """``(outputs, targets)`` of one batch: ``forward_fn(model, batch)``, or ``model`` called on the batch's inputs."""
    if forward_fn is not None:
        return forward_fn(model, batch)
    inputs, targets = batch
    args, kwargs = call_arguments(inputs)
    return model(*args, **kwargs), targets


class _Hooked(nn.Module):
    """``forward_fn`` as a module around ``model``, so that ``functional_call`` can substitute its parameters."""

    def __init__(self, model: nn.Module, forward_fn: ForwardFn) -> None:
        super().__init__()
        self.model = model
        self.forward_fn = forward_fn

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.forward_fn(self.model, batch)


def functional_run(
    model: nn.Module,
    tensors: Mapping[str, Tensor] | tuple[Mapping[str, Tensor], ...],
    batch: Batch,
    forward_fn: ForwardFn | None = None,
) -> tuple[Any, Tensor]:
    """:func:`run_model` with the model's parameters (and buffers) replaced by ``tensors`` (``functional_call``)."""
    if forward_fn is None:
        inputs, targets = batch
        args, kwargs = call_arguments(inputs)
        return functional_call(model, tensors, args, kwargs), targets
    groups = tensors if isinstance(tensors, tuple) else (tensors,)
    renamed = tuple({f"model.{k}": v for k, v in group.items()} for group in groups)
    return functional_call(_Hooked(model, forward_fn), renamed, (batch,))


def named_parameters(model: nn.Module, trainable_only: bool = True) -> dict[str, Tensor]:
    """The model's parameters by name, in registration order (only those with ``requires_grad`` by default)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad or not trainable_only}


def trainable_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The model's trainable parameters by name; ``ValueError`` when it has none (nothing to perturb or measure)."""
    params = named_parameters(model)
    if not params:
        raise ValueError(
            f"{type(model).__name__} has no trainable parameter (none, or all with requires_grad=False): "
            "there is nothing to perturb or measure"
        )
    return params


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free model)."""
    return next(iter(model.parameters()), torch.empty(0)).device
