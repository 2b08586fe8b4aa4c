"""Chunked, resumable evaluation of a model on a grid of points in a plane (or line) of parameter space.

A :class:`SurfaceJob` fixes everything a surface depends on — model state, origin, directions, grid, data, loss,
BatchNorm policy, chunking — and hashes it into a key. Points are split into chunks of ``chunk_size`` consecutive
points (row major over the grid). :meth:`SurfaceJob.evaluate` computes a given list of chunk ids and, with a
``cache_dir``, writes each finished chunk under ``cache_dir/<key>/`` through :func:`landscape.files.publish`: the
arrays (``chunk_000007.npz``), then its record (``chunk_000007.json``: shape, size and SHA-256 of the file, number of
non-finite values), the completion marker. A later job with the same key loads finished chunks instead of computing
them, after verifying each against its record: a chunk file that is missing, truncated, edited, replaced by garbage,
or holds non-finite values where its record says finite is reported with a :class:`landscape.cache.CacheWarning`
naming the file and computed again. :meth:`SurfaceJob.assemble` joins chunk
results into the grid. Keeping the two steps apart lets ranks of a distributed run evaluate disjoint chunk ids
(e.g. ``ids[rank::world_size]``) and gather the results before assembling.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import json
import os
import sys
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from landscape._data import Data, ForwardFn, as_batches, batch_length, model_device, trainable_parameters
from landscape._evaluation import (
    MODES,
    AccuracyFn,
    LoopEvaluator,
    LossFn,
    batches_to,
    count_ignored,
    cross_entropy,
    function_name,
    preserved_state,
    top1_accuracy,
)
from landscape._fast import FastEvaluator
from landscape.cache import check_bytes, file_record, read_file, warn_damaged
from landscape.files import atomic_write, publish

CACHE_FORMAT = 3  # 3: batches weigh their valid targets (chunks cached before averaged ignored targets in);
# records name their key and chunk; the key holds the model's code and the forward function
METHODS = ("fast", "loop")
BN_POLICIES = ("saved", "recompute")
ChunkResult = tuple[np.ndarray, np.ndarray]


def _hash_update(h: hashlib._Hash, obj: object) -> None:
    """Feed ``obj`` (tensors, arrays, mappings, sequences, scalars, strings) into ``h`` unambiguously."""
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"M{len(obj)}".encode())
        for k in obj:
            _hash_update(h, str(k))
            _hash_update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _hash_update(h, item)
    else:
        h.update(f"S{type(obj).__name__}:{obj!r};".encode())


def config_key(parts: object) -> str:
    """SHA-256 (first 20 hex digits) of a nest of tensors, arrays, mappings, sequences and scalars."""
    h = hashlib.sha256()
    _hash_update(h, parts)
    return h.hexdigest()[:20]


def function_key(fn: object, role: str = "function") -> str:
    """What identifies a loss or accuracy function in a cache key: its importable name and the hash of its source.

    A function that cannot be found again by name — a lambda, a function defined inside another, a callable object
    — might compute anything under one name, so it is refused rather than keyed by a name it shares with others.
    ``functools.partial`` of a keyed function with plain JSON arguments is keyed by the function and the arguments.

    Raises:
        TypeError: ``fn`` cannot be keyed (the message says what to pass instead).
    """
    if isinstance(fn, functools.partial):
        try:
            bound = json.dumps([fn.args, fn.keywords], sort_keys=True)
        except (TypeError, ValueError):
            raise TypeError(
                f"{role}: a functools.partial with arguments other than plain JSON cannot key a cache"
            ) from None
        return f"partial({function_key(fn.func, role)}, {bound})"
    module, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    advice = "define it at module level (or pass cache_dir=None to evaluate without a cache)"
    if not (inspect.isfunction(fn) or inspect.isbuiltin(fn)) or module is None or name is None:
        raise TypeError(f"{role}={fn!r} is not a plain function and cannot key a surface cache; {advice}")
    if "<lambda>" in name or "<locals>" in name:
        raise TypeError(
            f"{role}={module}.{name} is a lambda or a local function: two of them can share this name and compute "
            f"different things, so its results cannot be cached; {advice}"
        )
    found = sys.modules.get(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    if found is not fn:
        raise TypeError(f"{role}={module}.{name} cannot be found again by that name; {advice}")
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # a builtin: its name is its identity
        source = ""
    return f"{module}.{name}:{hashlib.sha256(source.encode()).hexdigest()[:16]}"


def model_key(model: nn.Module) -> list[list[object]]:
    """What identifies a model's function beyond its tensors: each submodule's class and plain attributes.

    Per submodule (``named_modules``): its name, its class by importable name and the hash of the class's source
    (:func:`class_source_hash`; a model's own ``forward`` edited is another key), and its public attributes that
    are plain values (strings, numbers, booleans, ``None`` and tuples or lists of them: an activation chosen by a
    string, a kernel size). Other attributes (closures, tensors kept outside the state) are not seen.
    """
    parts: list[list[object]] = []
    for name, module in model.named_modules():
        cls = type(module)
        attributes = {
            k: v for k, v in sorted(vars(module).items()) if not k.startswith("_") and k != "training" and _plain(v)
        }
        parts.append([name, f"{cls.__module__}.{cls.__qualname__}", class_source_hash(cls), attributes])
    return parts


def _plain(value: object) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


@functools.cache
def class_source_hash(cls: type) -> str:
    """SHA-256 (16 hex digits) of the source of ``cls`` and of its bases up to ``nn.Module``.

    A class whose source is not available (made at run time) adds an empty source: its name then stands for it.
    """
    sources = []
    for base in cls.__mro__:
        if base is nn.Module or not issubclass(base, nn.Module):
            continue
        try:
            sources.append(inspect.getsource(base))
        except (OSError, TypeError):
            sources.append("")
    return hashlib.sha256("\0".join(sources).encode()).hexdigest()[:16]


def run_only_key(fn: object, role: str) -> str:
    """:func:`function_key` of ``fn``, or a key of this run only for a function that cannot be found again.

    That is a lambda, a local function or a callable object; a warning says its cached results will not be reused.
    For the forward function, which valley keyed by name before it keyed functions by source: refusing it would
    break runs that worked, and a name alone would let an edited function reuse stale results.
    """
    try:
        return function_key(fn, role)
    except TypeError as error:
        warnings.warn(
            f"{error}; its results are cached under a key of this run only and are not reused by later runs",
            RuntimeWarning,
            stacklevel=3,
        )
        return f"run-only:{uuid.uuid4().hex}"


def _nonfinite(values: np.ndarray) -> int:
    return int((~np.isfinite(values)).sum())


class SurfaceJob:
    """Everything one surface depends on, split into chunks that can be evaluated, cached and assembled.

    Args:
        model: the network; left exactly as found (parameters, buffers, modes, flags, device).
        data: evaluation data, a pair ``(inputs, targets)`` or an iterable of pairs.
        origin: parameters at the grid origin by name (default: the model's trainable parameters).
        directions: one or two directions (dicts by trainable parameter name; absent names are not moved).
        coords: ``(N, k)`` grid coordinates, ``k = len(directions)``.
        loss_fn: mean loss of a batch (default cross-entropy on class indices; it refuses one-column outputs, float
            targets and targets out of range, and targets of -100 are counted, warned about and left out).
        accuracy_fn: mean accuracy of a batch (default top-1, NaN for non-classification outputs).
        mode: ``"eval"`` (default: BatchNorm running statistics, no dropout) or ``"train"`` (batch statistics and
            dropout; always evaluated with the loop); recorded in the config.
        method: ``"fast"`` (batched, :class:`landscape._fast.FastEvaluator`) or ``"loop"`` (the reference).
        bn: ``"saved"`` (running statistics as stored, default) or ``"recompute"`` (re-estimated at every point on
            ``bn_data``; always evaluated with the loop, recorded in the config).
        bn_data: data for ``bn="recompute"`` (default: ``data``); its first ``bn_batches`` batches are used.
        bn_batches: number of batches for re-estimation (default 4).
        batch_size: split a single ``(inputs, targets)`` pair into batches of this size.
        chunk_size: points per chunk (default 64).
        cache_dir: folder for finished chunks (``None``: nothing written). The key covers parameter and buffer values,
            origin, directions, grid, data, BatchNorm data, chunking and method, the model's code and plain
            attributes (:func:`model_key`), and the loss, accuracy and forward functions by name and source
            (:func:`function_key`; with a cache, a lambda or local loss or accuracy function is refused, and such a
            forward function keys this run only, with a warning: :func:`run_only_key`). Each chunk's record names
            its key and chunk id, so a file copied in from elsewhere is not taken for this one.
        first_layer_trick: allow the first-affine-layer shortcut on the fast path.
        progress: show a progress bar over chunks.
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)`` for models with their own calling convention
            (default: ``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)``); enters the key by name and
            source.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        directions: Sequence[Mapping[str, Tensor]],
        coords: np.ndarray,
        origin: Mapping[str, Tensor] | None = None,
        loss_fn: LossFn | None = None,
        accuracy_fn: AccuracyFn | None = None,
        method: str = "fast",
        bn: str = "saved",
        bn_data: Data | None = None,
        bn_batches: int = 4,
        mode: str = "eval",
        batch_size: int | None = None,
        chunk_size: int = 64,
        cache_dir: str | os.PathLike | None = None,
        first_layer_trick: bool = True,
        progress: bool = True,
        forward_fn: ForwardFn | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"Invalid method: {method!r} (expected one of {METHODS})")
        if mode not in MODES:
            raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
        if bn not in BN_POLICIES:
            raise ValueError(f"Invalid bn: {bn!r} (expected one of {BN_POLICIES})")
        if bn == "recompute" and mode == "train":
            raise ValueError("bn='recompute' re-estimates running statistics for eval mode; it needs mode='eval'")
        if chunk_size < 1:
            raise ValueError(f"Invalid chunk_size: {chunk_size}")
        if bn_batches < 1:
            raise ValueError(f"Invalid bn_batches: {bn_batches}")
        if not 1 <= len(directions) <= 2:
            raise ValueError(f"Expected one or two directions, got {len(directions)}")
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != len(directions) or len(coords) == 0:
            raise ValueError(f"coords must have shape (N, {len(directions)}) with N >= 1, got {coords.shape}")
        self.model = model
        device = model_device(model)
        params = trainable_parameters(model)
        origin = dict(origin) if origin is not None else {n: p.detach() for n, p in params.items()}
        if origin.keys() != params.keys():
            raise ValueError(f"origin must hold every trainable parameter; differs in {sorted(origin.keys() ^ params)}")
        self.origin = {n: origin[n].detach().to(device, params[n].dtype).clone() for n in params}
        self.directions = []
        for k, d in enumerate(directions):
            for name, t in d.items():
                if name not in params:
                    raise ValueError(f"direction {k} has a tensor {name!r} that is no trainable parameter")
                if t.shape != params[name].shape:
                    raise ValueError(f"direction {k}, {name!r}: shape {tuple(t.shape)} != {tuple(params[name].shape)}")
            self.directions.append({n: t.detach().to(device, params[n].dtype).clone() for n, t in d.items()})
        self.coords = coords
        self.forward_fn = forward_fn
        self.batches = batches_to(as_batches(data, batch_size, forward_fn), device)
        self.bn_batches = None
        if bn == "recompute":
            source = as_batches(bn_data, batch_size, forward_fn) if bn_data is not None else self.batches
            self.bn_batches = batches_to(source[:bn_batches], device)
        self.loss_fn = loss_fn if loss_fn is not None else cross_entropy
        self.accuracy_fn = accuracy_fn if accuracy_fn is not None else top1_accuracy
        self.method = "loop" if bn == "recompute" or mode == "train" else method
        self.mode = mode
        self.first_layer_trick, self.chunk_size, self.progress = first_layer_trick, chunk_size, progress
        self.config = {
            "method": self.method,
            "method_requested": method,
            "bn": bn,
            "bn_batches": bn_batches if bn == "recompute" else 0,
            "mode": mode,
            "n_ignored_targets": count_ignored(self.batches, self.loss_fn, "surface", forward_fn),
            "chunk_size": chunk_size,
            "n_points": len(coords),
            "n_chunks": self.n_chunks,
            "n_examples": sum(batch_length(b, forward_fn) for b in self.batches),
            "loss_fn": function_name(self.loss_fn),
            "accuracy_fn": function_name(self.accuracy_fn),
            "forward_fn": function_name(forward_fn) if forward_fn is not None else None,
            "model": type(model).__qualname__,
            "dtype": str(next(iter(self.origin.values())).dtype),
            "device": str(device),
            "torch": torch.__version__,
            "numpy": np.__version__,
        }
        state = {"params": dict(model.named_parameters()), "buffers": dict(model.named_buffers())}
        functions = {}
        if forward_fn is not None:
            functions["forward_fn"] = (
                run_only_key(forward_fn, "forward_fn") if cache_dir is not None else function_name(forward_fn)
            )
        for role, fn in (("loss_fn", self.loss_fn), ("accuracy_fn", self.accuracy_fn)):
            try:
                functions[role] = function_key(fn, role)
            except TypeError:
                if cache_dir is not None:
                    raise
                functions[role] = function_name(fn)  # no cache: the key only labels the result
        self.key = config_key(
            [
                CACHE_FORMAT,
                {k: v for k, v in self.config.items() if k not in ("device", "torch", "numpy")},
                functions,
                model_key(model),
                state,
                self.origin,
                self.directions,
                coords,
                self.batches,
                self.bn_batches or [],
                first_layer_trick,
            ]
        )
        self.config["key"] = self.key
        self.cache = Path(cache_dir) / self.key if cache_dir is not None else None
        self.computed: list[int] = []
        self.reused: list[int] = []
        self.evaluator_name: str | None = None
        self.evaluator_calibration: dict[str, float] = {}  # seconds per point of each way timed, if any

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return -(-len(self.coords) // self.chunk_size)

    def chunk_slice(self, chunk_id: int) -> slice:
        """The points (rows of ``coords``) of a chunk."""
        if not 0 <= chunk_id < self.n_chunks:
            raise ValueError(f"Invalid chunk id: {chunk_id} (job has {self.n_chunks} chunks)")
        return slice(chunk_id * self.chunk_size, min((chunk_id + 1) * self.chunk_size, len(self.coords)))

    def _path(self, chunk_id: int) -> Path:
        return self.cache / f"chunk_{chunk_id:06d}.npz"

    def _record_path(self, chunk_id: int) -> Path:
        return self.cache / f"chunk_{chunk_id:06d}.json"

    def _load(self, chunk_id: int) -> ChunkResult | None:
        """A finished chunk verified against its record; ``None`` if unfinished or damaged (then with a warning)."""
        if self.cache is None or not os.path.lexists(self._record_path(chunk_id)):
            return None  # never finished (a chunk file without its record was interrupted while being written)
        n = len(range(*self.chunk_slice(chunk_id).indices(len(self.coords))))
        path, record = self._path(chunk_id), None
        raw, problem = read_file(self._record_path(chunk_id))
        if raw is not None:
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                problem = "it is not valid JSON"
        if not isinstance(record, dict) or record.get("shape") != [n] or not isinstance(record.get("nonfinite"), dict):
            warn_damaged(self._record_path(chunk_id), problem or f"it is not the record of a chunk of {n} points")
            return None
        if record.get("key") != self.key or record.get("chunk") != chunk_id:  # copied in from another place
            found = f"chunk {record.get('chunk')!r} of surface {record.get('key')!r}"
            warn_damaged(self._record_path(chunk_id), f"it is the record of {found}, not of chunk {chunk_id} here")
            return None
        data, problem = read_file(path)
        if data is not None:
            problem = check_bytes(data, record)
        if problem is None:
            try:
                with np.load(io.BytesIO(data)) as f:
                    loss, acc = f["loss"], f["accuracy"]
            except (OSError, ValueError, KeyError, EOFError) as error:
                problem = f"it cannot be read as a chunk ({error})"
        if problem is None and not loss.shape == acc.shape == (n,):
            problem = f"it holds arrays of shapes {loss.shape} and {acc.shape} where ({n},) was written"
        if problem is None:
            for name, values in (("loss", loss), ("accuracy", acc)):
                count, written = _nonfinite(values), record["nonfinite"].get(name)
                if count != written:
                    problem = f"its {name} holds {count} non-finite values where {written} were written"
                    break
        if problem is not None:
            warn_damaged(path, problem, "computing the chunk again")
            return None
        return loss, acc

    def _save(self, chunk_id: int, result: ChunkResult) -> None:
        config = self.cache / "config.json"
        if not config.exists():
            atomic_write(config, json.dumps(self.config, indent=1))
        loss, acc = (np.asarray(a) for a in result)
        buffer = io.BytesIO()
        np.savez(buffer, loss=loss, accuracy=acc)
        data = buffer.getvalue()
        record = {
            "key": self.key,
            "chunk": chunk_id,
            "shape": list(loss.shape),
            **file_record(data),
            "nonfinite": {"loss": _nonfinite(loss), "accuracy": _nonfinite(acc)},
        }
        publish({self._path(chunk_id): data, self._record_path(chunk_id): json.dumps(record)})

    def evaluate(self, chunk_ids: Iterable[int] | None = None) -> dict[int, ChunkResult]:
        """Loss and accuracy arrays of the given chunks (default: all), loading finished ones from the cache.

        The model is put in the job's mode (eval by default) while points are evaluated, and restored exactly
        afterwards. Chunk ids computed here and reused from the cache are listed in :attr:`computed` and
        :attr:`reused`.
        """
        ids = list(range(self.n_chunks)) if chunk_ids is None else [int(i) for i in chunk_ids]
        for i in ids:
            self.chunk_slice(i)
        results: dict[int, ChunkResult] = {}
        self.computed, self.reused = [], []
        evaluator = None
        with preserved_state(self.model):
            for chunk_id in tqdm(ids, desc="surface chunks", disable=not self.progress, leave=False):
                cached = self._load(chunk_id)
                if cached is not None:
                    results[chunk_id] = cached
                    self.reused.append(chunk_id)
                    continue
                if evaluator is None:
                    self.model.train(self.mode == "train")
                    evaluator = self._evaluator()
                    self.evaluator_name = evaluator.name
                coords = torch.from_numpy(self.coords[self.chunk_slice(chunk_id)])
                loss, acc = evaluator(coords)
                self.evaluator_name = evaluator.name  # a calibrating evaluator has chosen by now
                self.evaluator_calibration = dict(getattr(evaluator, "calibration", {}))
                results[chunk_id] = (loss.numpy(), acc.numpy())
                if self.cache is not None:
                    self._save(chunk_id, results[chunk_id])
                self.computed.append(chunk_id)
        return results

    def _evaluator(self) -> LoopEvaluator | FastEvaluator:
        args = (self.model, self.origin, self.directions, self.batches, self.loss_fn, self.accuracy_fn)
        if self.method == "loop":
            return LoopEvaluator(*args, bn_batches=self.bn_batches, forward_fn=self.forward_fn)
        try:
            return FastEvaluator(*args, first_layer_trick=self.first_layer_trick, forward_fn=self.forward_fn)
        except (RuntimeError, NotImplementedError) as error:  # vmap cannot handle this model: use the loop
            warnings.warn(f"batched evaluation failed ({error}); falling back to the loop", stacklevel=3)
            return LoopEvaluator(*args, forward_fn=self.forward_fn)

    def assemble(self, results: Mapping[int, ChunkResult]) -> tuple[np.ndarray, np.ndarray]:
        """Join chunk results (from one or many :meth:`evaluate` calls) into loss and accuracy over all points."""
        missing = [i for i in range(self.n_chunks) if i not in results]
        if missing:
            raise ValueError(f"results lack chunks {missing[:10]}{'...' if len(missing) > 10 else ''}")
        loss = np.concatenate([np.asarray(results[i][0], dtype=np.float64) for i in range(self.n_chunks)])
        acc = np.concatenate([np.asarray(results[i][1], dtype=np.float64) for i in range(self.n_chunks)])
        return loss, acc
