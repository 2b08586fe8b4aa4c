"""What the analysis commands are pointed at: a model, its weights, data and a loss, each named on the command line.

* ``--model``: a built-in architecture (``mlp``, ``lenet5``, ``adam_cnn``, ``resnet``; sized from the data) or
  ``pkg.module:factory`` (or ``pkg.module.factory``), an importable callable returning an ``nn.Module``, called
  with ``--model-kwargs`` (a JSON object) as keyword arguments. The module is imported as Python imports it (the
  current folder and ``PYTHONPATH``).
* ``--checkpoint``: a plain ``state_dict``; a dict holding one under ``model``, ``state_dict`` or
  ``model_state_dict`` (valley's own checkpoints keep it under ``model``); always read with
  ``torch.load(weights_only=True)``, so a file holding other pickled objects is refused, never executed.
* ``--data``: a built-in data set name; a ``.pt`` file (read with ``weights_only=True``) or an ``.npz`` file (read
  with ``allow_pickle=False``) of tensors; or ``pkg.module:fn`` returning a pair ``(inputs, targets)``, an iterable
  of batches or a ``DataLoader``. A file holds ``x``/``y`` (or ``inputs``/``targets``), or ``x_train``/``y_train``
  and ``x_test``/``y_test`` for two splits; a ``.pt`` file may also hold one pair ``(x, y)``, and ``inputs`` may be
  a dict of tensors (in an ``.npz``: keys ``inputs.NAME`` or ``x.NAME``) that the model receives as keyword
  arguments.
* ``--loss``: ``cross_entropy``, ``mse``, ``l1``, ``smooth_l1``, ``huber``, ``nll``, ``bce_with_logits``, ``bce``,
  or ``pkg.module:fn`` with ``fn(outputs, targets)`` the mean loss of a batch.
* ``--forward``: optional ``pkg.module:fn`` with ``fn(model, batch) -> (outputs, targets)`` for models with their
  own calling convention (the batches are then passed to it untouched).

Every user mistake raises ``ValueError`` or ``FileNotFoundError`` with one message naming the problem.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from landscape._data import Batch, ForwardFn, as_batches, batch_length, batch_to, head, run_model
from landscape._evaluation import cross_entropy, evaluation_mode
from studies.errors import UserError, one_line

MODELS = ("mlp", "lenet5", "adam_cnn", "resnet")
DATASETS = ("digits", "mnist1d", "mnist", "fashion_mnist", "cifar10")
STATE_KEYS = ("model", "state_dict", "model_state_dict")
LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": cross_entropy,  # the measures' default: F.cross_entropy's value, faster on CPU
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "smooth_l1": F.smooth_l1_loss,
    "huber": F.huber_loss,
    "nll": F.nll_loss,
    "bce_with_logits": F.binary_cross_entropy_with_logits,
    "bce": F.binary_cross_entropy,
}


def resolve_callable(spec: str, what: str) -> Callable:
    """The object named by ``pkg.module:attr`` (``attr`` may be dotted) or ``pkg.module.attr``, checked callable.

    Raises:
        ValueError: if ``spec`` is not of that form, the module cannot be imported or has no such callable.
    """
    module_name, sep, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r} is neither a built-in name nor of the form pkg.module:function")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as error:  # the user's module: missing, or raising (a SyntaxError, a failing import) on import
        raise UserError(f"{what} {spec!r}: cannot import {module_name!r} ({type(error).__name__}: {error})") from error
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{what} {spec!r} is not callable")
    return obj


def resolve_loss(spec: str) -> Callable[[Tensor, Tensor], Tensor]:
    """A loss by name (see :data:`LOSSES`) or ``pkg.module:fn``."""
    if spec in LOSSES:
        return LOSSES[spec]
    if ":" not in spec and "." not in spec:
        raise ValueError(f"--loss {spec!r} is unknown: use one of {', '.join(LOSSES)} or pkg.module:function")
    return resolve_callable(spec, "--loss")


def resolve_forward(spec: str | None) -> ForwardFn | None:
    """The ``forward_fn`` hook named by ``pkg.module:fn`` (``None`` stays ``None``)."""
    return None if spec is None else resolve_callable(spec, "--forward")


def state_dict_of(payload: object, path: str | Path) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint: the payload itself, or under ``model``/``state_dict``/...

    Raises:
        ValueError: if no dict of tensors is found.
    """

    def is_state(obj: object) -> bool:
        return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())

    if is_state(payload):
        return dict(payload)
    if isinstance(payload, Mapping):
        for key in STATE_KEYS:
            if is_state(payload.get(key)):
                return dict(payload[key])
    keys = f" (its keys: {', '.join(map(str, list(payload)[:6]))})" if isinstance(payload, Mapping) else ""
    raise ValueError(
        f"checkpoint {str(path)!r} holds no state dict of tensors{keys}: expected a plain state_dict or one under "
        f"{', '.join(repr(k) for k in STATE_KEYS)}"
    )


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file safely and return its state dict (see :func:`state_dict_of`).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        UserError: (a ``ValueError``) if it is not a regular file, is empty, is no PyTorch checkpoint or a damaged
            one, holds pickled objects other than tensors and plain containers (refused, never run), holds no state
            dict of tensors, or holds meta tensors (shapes without values).
    """
    import os
    import re
    import stat

    from studies.train import load_checkpoint

    path = Path(path)
    name = f"checkpoint {str(path)!r}"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a special file (FIFO, socket or device)"
        raise UserError(f"{name} is {kind}, not a checkpoint file; nothing was read")
    if info.st_size == 0:
        raise UserError(f"{name} is empty")
    try:
        payload = load_checkpoint(path)
    except Exception as error:  # a damaged file makes torch.load raise RuntimeError, EOFError, KeyError, ...
        text = one_line(str(error))
        if found := re.search(r"GLOBAL (\S+)", text):  # torch's weights_only unpickler refused an object
            raise UserError(
                f"{name} was refused: it holds a pickled object other than tensors and plain containers "
                f"({found.group(1)}); valley loads only those (torch.load with weights_only=True) and never runs "
                "code from a checkpoint"
            ) from None
        with open(path, "rb") as file:
            start = file.read(4)
        if not start.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or a legacy pickle
            raise UserError(f"{name} is not a PyTorch checkpoint (it starts with {start!r})") from None
        reason = f"{type(error).__name__}: {text}"[:200]
        raise UserError(f"{name} is a damaged PyTorch checkpoint (truncated?): {reason}") from None
    state = state_dict_of(payload, path)
    if meta := [k for k, v in state.items() if v.is_meta]:
        raise UserError(f"{name} holds meta tensors (shapes without values), e.g. {meta[0]!r}")
    counts = {
        key: int(value.isfinite().logical_not().sum()) for key, value in state.items() if value.is_floating_point()
    }
    if bad := {key: count for key, count in counts.items() if count}:
        first = next(iter(bad))
        warnings.warn(
            f"{name} holds {sum(bad.values())} NaN or infinite values in {len(bad)} tensor(s), e.g. {bad[first]} in "
            f"{first!r}: every loss computed through them is NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    return state


def load_weights(model: nn.Module, state: Mapping[str, Tensor], what: str) -> nn.Module:
    """Load ``state`` into ``model`` after checking that every key and shape fits; returns the model in eval mode.

    Raises:
        ValueError: naming the first missing, unexpected or mis-shaped key (``what`` names checkpoint and model).
    """
    expected = model.state_dict()
    if missing := [k for k in expected if k not in state]:
        raise ValueError(f"{what}: the model's {missing[0]!r} is missing ({len(missing)} keys missing)")
    if unexpected := [k for k in state if k not in expected]:
        raise ValueError(f"{what}: the checkpoint's {unexpected[0]!r} is not in the model ({len(unexpected)} keys)")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            shapes = f"{tuple(state[key].shape)} in the checkpoint, {tuple(tensor.shape)} in the model"
            raise ValueError(f"{what}: {key!r} has shape {shapes}")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(f"{what}: {one_line(str(error))}") from None
    return model.eval()


def build_model(spec: str, kwargs: Mapping[str, Any], sizing: Sizing | None = None) -> nn.Module:
    """A built-in architecture sized by ``sizing``, or the module returned by the factory ``pkg.module:fn``.

    Raises:
        ValueError: if the factory fails or returns no ``nn.Module``, or a built-in model has no sizing.
    """
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"--model-kwargs must be a JSON object, got {kwargs!r}")
    if spec in MODELS:
        from studies.models import make_model

        if sizing is None:
            raise ValueError(f"the built-in model {spec!r} is sized from the data; its inputs and classes are unknown")
        return make_model(spec, sizing.input_shape, sizing.num_classes, **kwargs)
    factory = resolve_callable(spec, "--model")
    try:
        model = factory(**kwargs)
    except Exception as error:  # the user's factory failed
        raise UserError(
            f"--model {spec!r} with --model-kwargs {json.dumps(dict(kwargs))}: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@dataclass(frozen=True)
class Sizing:
    """Input shape (without the batch dimension) and number of classes, for built-in architectures."""

    input_shape: tuple[int, ...]
    num_classes: int


@dataclass
class Target:
    """A model with its weights, the data and loss to analyse it on, and how they were chosen.

    Attributes:
        model: the network in eval mode, on the analysis device.
        batches: the evaluation batches, on that device.
        loss_fn: mean loss of a batch.
        forward_fn: the calling hook (``None``: the model on each batch's inputs).
        n_examples: examples in ``batches``.
        sizing: the data's input shape and classes where known (``None`` for batches only a hook understands).
        record: every choice in words and numbers (model, checkpoint, data, split, loss...), for the JSON sidecar.
    """

    model: nn.Module
    batches: list[Batch]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    forward_fn: ForwardFn | None
    n_examples: int
    sizing: Sizing | None
    record: dict[str, Any] = field(default_factory=dict)


def _tensor(value: object, name: str, where: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(f"{where}: {name!r} is a {type(value).__name__}, not an array of numbers")


def _inputs(value: object, name: str, where: str) -> Tensor | dict[str, Tensor]:
    if isinstance(value, Mapping):
        return {str(k): _tensor(v, f"{name}.{k}", where) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_tensor(v, f"{name}[{i}]", where) for i, v in enumerate(value))
    return _tensor(value, name, where)


def _split_from_mapping(content: Mapping[str, Any], split: str, where: str) -> tuple[Any, Tensor]:
    """``(inputs, targets)`` of a split from a mapping of arrays (keys described in the module docstring)."""
    grouped: dict[str, Any] = {}
    for key, value in content.items():
        prefix, dot, rest = str(key).partition(".")
        if dot:
            grouped.setdefault(prefix, {})[rest] = value
        else:
            grouped[prefix] = value
    if f"x_{split}" in grouped and f"y_{split}" in grouped:
        return _inputs(grouped[f"x_{split}"], f"x_{split}", where), _tensor(grouped[f"y_{split}"], f"y_{split}", where)
    has_splits = any(k.startswith(("x_train", "x_test")) for k in grouped)
    for x_key, y_key in (("x", "y"), ("inputs", "targets")):
        if x_key in grouped and y_key in grouped and not has_splits:
            return _inputs(grouped[x_key], x_key, where), _tensor(grouped[y_key], y_key, where)
    raise ValueError(
        f"{where} holds {', '.join(sorted(grouped))}; expected x/y, inputs/targets or x_{split}/y_{split} "
        f"for --split {split}"
    )


def read_data_file(path: str | Path, split: str = "train") -> tuple[Any, Tensor]:
    """``(inputs, targets)`` of one split from a ``.pt`` or ``.npz`` file, read without unpickling objects.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if its suffix, content or keys are not understood.
    """
    path = Path(path)
    where = f"data file {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                content = {k: arrays[k] for k in arrays.files}
        except ValueError as error:
            raise ValueError(f"{where} cannot be read without unpickling objects ({error})") from error
        return _split_from_mapping(content, split, where)
    if path.suffix in (".pt", ".pth"):
        from studies.store import safe_torch_load

        content = safe_torch_load(path)
        if isinstance(content, (tuple, list)) and len(content) == 2:
            return _inputs(content[0], "inputs", where), _tensor(content[1], "targets", where)
        if isinstance(content, Mapping):
            return _split_from_mapping(content, split, where)
        raise ValueError(f"{where} holds a {type(content).__name__}; expected a dict of tensors or a pair (x, y)")
    raise ValueError(f"{where}: expected a .pt or .npz file of tensors, or a pkg.module:function")


def _sizing_of(inputs: object, targets: Tensor) -> Sizing | None:
    if not isinstance(inputs, Tensor) or not len(targets):
        return None
    classes = int(targets.max()) + 1 if not targets.is_floating_point() and targets.dim() == 1 else 0
    return Sizing(tuple(inputs.shape[1:]), classes)


def first_examples(batches: Sequence[Batch], samples: int | None, forward_fn: ForwardFn | None) -> list[Batch]:
    """The first ``samples`` examples of a list of batches (the last one cut where needed)."""
    if samples is None:
        return list(batches)
    out, left = [], samples
    for batch in batches:
        if left <= 0:
            break
        n = batch_length(batch, forward_fn)
        out.append(batch if n <= left else head(batch, left))
        left -= n
    return out


def load_data(
    spec: str,
    split: str = "train",
    samples: int | None = None,
    batch_size: int | None = None,
    data_dir: str | None = None,
    forward_fn: ForwardFn | None = None,
) -> tuple[list[Batch], Sizing | None, dict[str, Any]]:
    """The batches named by ``--data`` (first ``samples`` examples), the data's sizing and a record of the choice."""
    if samples is not None and samples < 1:
        raise ValueError(f"Invalid --samples: {samples}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"Invalid --batch-size: {batch_size}")
    record: dict[str, Any] = {"data": spec, "split": split, "samples": samples, "batch_size": batch_size}
    if spec in DATASETS:
        from studies import data

        dataset = data.load_dataset(spec, data_dir)
        x, y = (dataset.x_train, dataset.y_train) if split == "train" else (dataset.x_test, dataset.y_test)
        pair = (x[:samples], y[:samples])
        sizing = Sizing(tuple(dataset.input_shape), dataset.num_classes)
        record["kind"] = "built-in"
    elif Path(spec).suffix in (".pt", ".pth", ".npz") or Path(spec).exists():
        inputs, targets = read_data_file(spec, split)
        pair = (
            _sliced(inputs, samples),
            targets[:samples],
        )
        sizing = _sizing_of(inputs, targets)
        record["kind"] = "file"
    else:
        try:
            source = resolve_callable(spec, "--data")()
        except UserError:
            raise
        except Exception as error:  # the user's data function failed
            raise UserError(f"--data {spec!r}: {type(error).__name__}: {error}") from error
        record["kind"] = "function"
        if isinstance(source, (tuple, list)) and len(source) == 2 and isinstance(source[1], Tensor):
            pair = (_inputs(source[0], "inputs", f"--data {spec!r}"), source[1])
            pair = (_sliced(pair[0], samples), pair[1][:samples])
            sizing = _sizing_of(*pair)
        elif isinstance(source, Iterable):
            try:
                batches = first_examples(as_batches(source, forward_fn=forward_fn), samples, forward_fn)
            except TypeError as error:
                raise ValueError(f"--data {spec!r}: {error}") from error
            first = batches[0]
            sizing = None if forward_fn is not None else _sizing_of(first[0], first[1])
            record["n_batches_given"] = len(batches)
            return batches, sizing, record
        else:
            raise ValueError(f"--data {spec!r} returned a {type(source).__name__}, not batches or a DataLoader")
    if not len(pair[1]):
        raise ValueError(f"--data {spec!r} holds no example for --split {split}")
    return as_batches(pair, batch_size), sizing, record


def _sliced(inputs: Any, samples: int | None) -> Any:
    if isinstance(inputs, Mapping):
        return {k: v[:samples] for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(v[:samples] for v in inputs)
    return inputs[:samples]


def load_target(
    model: str,
    checkpoint: str | Path,
    data: str,
    model_kwargs: Mapping[str, Any] | None = None,
    loss: str = "cross_entropy",
    forward: str | None = None,
    split: str = "train",
    samples: int | None = None,
    batch_size: int | None = None,
    data_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> Target:
    """Everything an analysis command needs, resolved from its command-line words (see the module docstring)."""
    model_kwargs = {} if model_kwargs is None else model_kwargs
    if not isinstance(model_kwargs, Mapping):
        raise ValueError(f"--model-kwargs must be a JSON object, got {model_kwargs!r}")
    loss_fn = resolve_loss(loss)
    forward_fn = resolve_forward(forward)
    state = read_state_dict(checkpoint)  # a damaged checkpoint is refused before the data is loaded
    batches, sizing, record = load_data(data, split, samples, batch_size, data_dir, forward_fn)
    net = build_model(model, model_kwargs, sizing)
    net = load_weights(net, state, f"checkpoint {str(checkpoint)!r} does not fit {model} {json.dumps(model_kwargs)}")
    device = torch.device(device)
    batches = [batch_to(b, device) for b in batches]
    net = net.to(device)
    n = sum(batch_length(b, forward_fn) for b in batches)
    if not math.isfinite(float(n)) or n < 1:
        raise ValueError(f"--data {data!r} holds no example")
    check_runs(net, batches[0], loss_fn, forward_fn, f"--model {model} on --data {data} with --loss {loss}")
    record |= {
        "model": model,
        "model_kwargs": dict(model_kwargs),
        "checkpoint": str(checkpoint),
        "loss": loss,
        "forward": forward,
        "n_examples": n,
        "n_batches": len(batches),
        "n_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
    }
    return Target(net, batches, loss_fn, forward_fn, n, sizing, record)


def check_runs(net: nn.Module, batch: Batch, loss_fn: Callable, forward_fn: ForwardFn | None, what: str) -> None:
    """One forward pass and loss on the first examples of ``batch``, before any work.

    In eval mode (the model's modes are put back), so that a model that cannot run on the data, or a loss that does
    not fit its outputs, is the user's mistake named in one line, not an error from deep inside torch halfway
    through. With gradients on, as the measures run it (a model may differentiate inside its forward); on the first
    two examples of an ``(inputs, targets)`` batch, on the whole first batch under a ``forward_fn`` (whose batch may
    not be cut by rows: a graph's edges index its nodes).
    """
    try:
        with warnings.catch_warnings(), evaluation_mode(net, "eval"):
            warnings.filterwarnings("error", message="Using a target size", category=UserWarning)  # mse broadcast
            outputs, targets = run_model(net, batch if forward_fn is not None else head(batch, 2), forward_fn)
            value = loss_fn(outputs, targets)
    except Exception as error:
        raise UserError(
            f"{what}: a forward pass and loss on the first examples failed: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise UserError(f"{what}: the loss returned {shape}, not one number (the mean over the batch)")


def load_second(target: Target, checkpoint: str | Path, model: str, model_kwargs: Mapping[str, Any]) -> nn.Module:
    """A second checkpoint of the same architecture (the end of an interpolation), on the target's device."""
    net = build_model(model, model_kwargs, target.sizing)
    state = read_state_dict(checkpoint)
    what = f"checkpoint {str(checkpoint)!r} does not fit {model} {json.dumps(dict(model_kwargs))}"
    device = next(iter(target.model.parameters())).device
    return load_weights(net, state, what).to(device)
