"""Chunked, resumable evaluation of a model on a grid of points in a plane (or line) of parameter space.

A :class:`SurfaceJob` fixes everything a surface depends on — model state, origin, directions, grid, data, loss,
BatchNorm policy, chunking — and hashes it into a key. Points are split into chunks of ``chunk_size`` consecutive
points (row major over the grid). :meth:`SurfaceJob.evaluate` computes a given list of chunk ids and, with a
``cache_dir``, writes each finished chunk atomically (temporary file + ``os.replace``) under ``cache_dir/<key>/``; a
later job with the same key loads finished chunks instead of computing them. :meth:`SurfaceJob.assemble` joins chunk
results into the grid. Keeping the two steps apart lets ranks of a distributed run evaluate disjoint chunk ids
(e.g. ``ids[rank::world_size]``) and gather the results before assembling.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from landscape._data import Data, as_batches, model_device, named_parameters
from landscape._evaluation import (
    AccuracyFn,
    LoopEvaluator,
    LossFn,
    batches_to,
    cross_entropy,
    function_name,
    preserved_state,
    top1_accuracy,
)
from landscape._fast import FastEvaluator

CACHE_FORMAT = 1
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


class SurfaceJob:
    """Everything one surface depends on, split into chunks that can be evaluated, cached and assembled.

    Args:
        model: the network; left exactly as found (parameters, buffers, modes, flags, device).
        data: evaluation data, a pair ``(inputs, targets)`` or an iterable of pairs.
        origin: parameters at the grid origin by name (default: the model's trainable parameters).
        directions: one or two directions (dicts by trainable parameter name; absent names are not moved).
        coords: ``(N, k)`` grid coordinates, ``k = len(directions)``.
        loss_fn: mean loss of a batch (default cross-entropy).
        accuracy_fn: mean accuracy of a batch (default top-1, NaN for non-classification outputs).
        method: ``"fast"`` (batched, :class:`landscape._fast.FastEvaluator`) or ``"loop"`` (the reference).
        bn: ``"saved"`` (running statistics as stored, default) or ``"recompute"`` (re-estimated at every point on
            ``bn_data``; always evaluated with the loop, recorded in the config).
        bn_data: data for ``bn="recompute"`` (default: ``data``); its first ``bn_batches`` batches are used.
        bn_batches: number of batches for re-estimation (default 4).
        batch_size: split a single ``(inputs, targets)`` pair into batches of this size.
        chunk_size: points per chunk (default 64).
        cache_dir: folder for finished chunks (``None``: nothing written). The key covers parameter and buffer values,
            origin, directions, grid, data, BatchNorm data, chunking and method; loss and accuracy functions enter it
            by qualified name only, so two different functions of one name must not share a folder.
        first_layer_trick: allow the first-affine-layer shortcut on the fast path.
        progress: show a progress bar over chunks.
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
        batch_size: int | None = None,
        chunk_size: int = 64,
        cache_dir: str | os.PathLike | None = None,
        first_layer_trick: bool = True,
        progress: bool = True,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"Invalid method: {method!r} (expected one of {METHODS})")
        if bn not in BN_POLICIES:
            raise ValueError(f"Invalid bn: {bn!r} (expected one of {BN_POLICIES})")
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
        params = named_parameters(model)
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
        self.batches = batches_to(as_batches(data, batch_size), device)
        self.bn_batches = None
        if bn == "recompute":
            source = as_batches(bn_data, batch_size) if bn_data is not None else self.batches
            self.bn_batches = batches_to(source[:bn_batches], device)
        self.loss_fn = loss_fn if loss_fn is not None else cross_entropy
        self.accuracy_fn = accuracy_fn if accuracy_fn is not None else top1_accuracy
        self.method = "loop" if bn == "recompute" else method
        self.first_layer_trick, self.chunk_size, self.progress = first_layer_trick, chunk_size, progress
        self.config = {
            "method": self.method,
            "method_requested": method,
            "bn": bn,
            "bn_batches": bn_batches if bn == "recompute" else 0,
            "chunk_size": chunk_size,
            "n_points": len(coords),
            "n_chunks": self.n_chunks,
            "n_examples": sum(len(y) for _, y in self.batches),
            "loss_fn": function_name(self.loss_fn),
            "accuracy_fn": function_name(self.accuracy_fn),
            "model": type(model).__qualname__,
            "dtype": str(next(iter(self.origin.values())).dtype),
            "device": str(device),
            "torch": torch.__version__,
            "numpy": np.__version__,
        }
        state = {"params": dict(model.named_parameters()), "buffers": dict(model.named_buffers())}
        self.key = config_key(
            [
                CACHE_FORMAT,
                {k: v for k, v in self.config.items() if k not in ("device", "torch", "numpy")},
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

    def _load(self, chunk_id: int) -> ChunkResult | None:
        if self.cache is None or not self._path(chunk_id).exists():
            return None
        n = len(range(*self.chunk_slice(chunk_id).indices(len(self.coords))))
        with np.load(self._path(chunk_id)) as f:
            loss, acc = f["loss"], f["accuracy"]
        return (loss, acc) if loss.shape == acc.shape == (n,) else None

    def _save(self, chunk_id: int, result: ChunkResult) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        config = self.cache / "config.json"
        if not config.exists():
            _atomic_write(config, json.dumps(self.config, indent=1).encode())
        fd, tmp = tempfile.mkstemp(prefix=f".chunk_{chunk_id:06d}.", suffix=".tmp", dir=self.cache)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, loss=result[0], accuracy=result[1])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path(chunk_id))

    def evaluate(self, chunk_ids: Iterable[int] | None = None) -> dict[int, ChunkResult]:
        """Loss and accuracy arrays of the given chunks (default: all), loading finished ones from the cache.

        The model is put in eval mode while points are evaluated, and restored exactly afterwards. Chunk ids
        computed here and reused from the cache are listed in :attr:`computed` and :attr:`reused`.
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
                    self.model.eval()
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
            return LoopEvaluator(*args, bn_batches=self.bn_batches)
        try:
            return FastEvaluator(*args, first_layer_trick=self.first_layer_trick)
        except (RuntimeError, NotImplementedError) as error:  # vmap cannot handle this model: use the loop
            warnings.warn(f"batched evaluation failed ({error}); falling back to the loop", stacklevel=3)
            return LoopEvaluator(*args)

    def assemble(self, results: Mapping[int, ChunkResult]) -> tuple[np.ndarray, np.ndarray]:
        """Join chunk results (from one or many :meth:`evaluate` calls) into loss and accuracy over all points."""
        missing = [i for i in range(self.n_chunks) if i not in results]
        if missing:
            raise ValueError(f"results lack chunks {missing[:10]}{'...' if len(missing) > 10 else ''}")
        loss = np.concatenate([np.asarray(results[i][0], dtype=np.float64) for i in range(self.n_chunks)])
        acc = np.concatenate([np.asarray(results[i][1], dtype=np.float64) for i in range(self.n_chunks)])
        return loss, acc


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
