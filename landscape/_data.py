"""Shared conventions of the analysis layer: what ``data`` is and how a model's parameters are addressed.

``data`` is either a pair ``(inputs, targets)`` of tensors, or any iterable of such pairs (a list of batches, a
``torch.utils.data.DataLoader``). Losses are means over examples, so a data set split into batches is averaged with
batch-size weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
Data = Batch | Iterable[Batch]


def as_batches(data: Data, batch_size: int | None = None) -> list[Batch]:
    """Return ``data`` as a list of ``(inputs, targets)`` batches.

    Args:
        data: a pair of tensors, or an iterable of pairs.
        batch_size: when ``data`` is a single pair, split it into batches of this size (``None``: one batch).

    Raises:
        TypeError: if ``data`` is neither a pair of tensors nor an iterable of pairs.
        ValueError: if ``batch_size`` is not positive, a pair's lengths differ, or there is no example.

    Example:
        >>> x, y = torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)
        >>> [len(b[0]) for b in as_batches((x, y), batch_size=2)]
        [2, 2, 1]
    """
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size}")
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        inputs, targets = data
        if len(inputs) != len(targets):
            raise ValueError(f"inputs and targets differ in length: {len(inputs)} != {len(targets)}")
        size = batch_size or max(len(inputs), 1)
        batches = [(inputs[i : i + size], targets[i : i + size]) for i in range(0, len(inputs), size)]
    elif isinstance(data, Iterable):
        batches = []
        for batch in data:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise TypeError(f"Each batch must be a pair (inputs, targets), got {type(batch).__name__}")
            batches.append((batch[0], batch[1]))
    else:
        raise TypeError(f"data must be a pair of tensors or an iterable of pairs, got {type(data).__name__}")
    if not batches or sum(len(b[1]) for b in batches) == 0:
        raise ValueError("data holds no example")
    return batches


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
