"""The results store: one verified folder per study run, keyed by everything that changes its result.

Layout: ``<root>/<study>/<key>/`` holds ``metrics.csv`` (the run's tidy DataFrame), any other file the run wrote
there (checkpoints, surface chunks) and ``meta.json``, the completion marker: the config, the data it read, library
versions, device, wall time, the row count of ``metrics.csv``, the size and SHA-256 of every file of the folder and
the SHA-256 of every shared artifact (e.g. a saved initialisation) the run used. Files are written through
:mod:`landscape.files` (atomic, ordinary permissions), ``meta.json`` last, so a folder without it is an unfinished run
and is recomputed.

Reading a run verifies it: a ``meta.json`` that does not parse or belongs to another config, a file that is missing,
truncated, emptied, edited, swapped or replaced, a row count that differs, or a shared artifact that changed since
the run used it each give a :class:`landscape.cache.CacheWarning` naming the file, and the run is recomputed.

The key (:meth:`RunStore.run_dir`) is the SHA-256 of the config's canonical JSON, the study and store versions and,
for a config whose ``dataset`` names a data set read from a local folder, that folder (resolved) and the size and
modification time of each of its files (:func:`studies.data.data_fingerprint`): another copy of MNIST is another
key. A config must be plain JSON (strings, numbers, booleans, ``None``, lists/tuples, dicts with string keys); any
other value is refused rather than keyed by its ``repr``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import platform
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from landscape.cache import check_bytes, file_record, read_file, read_verified, warn_damaged, write_verified
from landscape.files import atomic_write, publish
from studies.data import data_fingerprint

#: Bump when a change to the runner or the store makes earlier cached results invalid.
STORE_VERSION = "3"  # 3: a non-finite test loss after an epoch is divergence (train)

_MARKER = "meta.json"
_METRICS = "metrics.csv"


def frame_csv(frame: pd.DataFrame) -> str:
    """The CSV text valley writes for a DataFrame (no index)."""
    return frame.to_csv(index=False)


# pandas before 3.0 parses floats in a CSV to within an ulp unless asked for round-trip parsing; 3.0 and later parse
# them exactly by default (and deprecate the option).
_EXACT_FLOATS: dict[str, Any] = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def read_frame(data: bytes, **read_csv: Any) -> pd.DataFrame:
    """The DataFrame of CSV bytes written by :func:`frame_csv`, every float bit for bit as written."""
    return pd.read_csv(io.BytesIO(data), **{**_EXACT_FLOATS, **read_csv})


def installed_version() -> str:
    """Valley's installed version, or a note that it runs from a source tree that was not installed."""
    try:
        return metadata.version("valley")
    except metadata.PackageNotFoundError:
        return "not installed (run from a source tree)"


def write_frame(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV through :func:`landscape.files.atomic_write`."""
    atomic_write(path, frame_csv(frame))


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` into bytes (written with :mod:`landscape.files` by the caller)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def cached_table(
    path: str | os.PathLike, make: Callable[[], pd.DataFrame], force: bool = False, **read_csv: Any
) -> tuple[pd.DataFrame, bool]:
    """A DataFrame cached as a verified CSV at ``path`` (see :func:`landscape.cache.write_verified`).

    Returns ``(frame, True)`` when read from an intact cache; otherwise (absent, damaged — with a warning naming the
    file —, or ``force``) calls ``make``, caches its result and returns ``(frame, False)``. ``read_csv`` are the
    :func:`pandas.read_csv` options that read the CSV back as ``make`` returned it.
    """
    data = None if force else read_verified(path)
    if data is not None:
        try:
            return read_frame(data, **read_csv), True
        except (ValueError, UnicodeDecodeError) as error:  # recorded as written, yet unreadable
            warn_damaged(path, f"it cannot be parsed as CSV ({error})")
    frame = make()
    write_verified(path, frame_csv(frame).encode(), rows=len(frame))
    return frame, False


def safe_torch_load(
    path: str | os.PathLike | io.BytesIO, map_location: str | torch.device | None = "cpu", name: str | None = None
) -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only.

    Args:
        path: a file, or the bytes of one in a ``BytesIO``.
        map_location: where tensors are put.
        name: the file's name in the message when ``path`` is a ``BytesIO``.

    Raises:
        ValueError: if the file holds any other pickled object (it is refused, never executed).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"Refusing to load {name or path}: it holds objects other than tensors and plain data ({err})"
        ) from err


def check_json_config(value: object, where: str = "config") -> None:
    """Refuse any value that is not plain JSON, so a key never depends on a ``repr`` or a memory address.

    Raises:
        TypeError: naming the entry and its type.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_json_config(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the key {key!r} of type {type(key).__name__}; keys must be strings")
            check_json_config(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which is not plain JSON; cached runs "
        "are keyed by their config, so give a string, number, boolean, None, list or dict instead"
    )


def canonical_json(config: object) -> str:
    """The config as canonical JSON (sorted keys, no spaces); refuses non-JSON values (:func:`check_json_config`)."""
    check_json_config(config)
    return json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=True)


def config_hash(config: dict[str, Any], version: str = "", extra: object = None) -> str:
    """A 12-hex-digit key for a config: SHA-256 of its canonical JSON, the study and store versions and ``extra``.

    Every value takes part: ``True`` and ``1``, ``1`` and ``1.0``, ``[1, 2]`` and ``[2, 1]`` are different keys.

    Example:
        >>> config_hash({"lr": 0.1, "opt": "sgd"}) == config_hash({"opt": "sgd", "lr": 0.1})
        True
        >>> config_hash({"lr": 1}) == config_hash({"lr": 1.0})
        False
    """
    text = f"{canonical_json(config)}|{version}|{STORE_VERSION}"
    if extra is not None:
        text += f"|{canonical_json(extra)}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def environment(device: str | torch.device = "cpu") -> dict[str, str]:
    """Library versions and device, recorded beside every result."""
    import numpy
    import scipy

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


class RunStore:
    """The cached runs of one study under ``<root>/<study>/``.

    Args:
        root: the runs folder.
        study: the study's name (its subfolder).
        version: the study's version (part of every key).
        data_dir: the local data folder the study reads (part of the key of every config naming a local data set).
    """

    def __init__(
        self, root: str | os.PathLike, study: str, version: str = "1", data_dir: str | os.PathLike | None = None
    ) -> None:
        self.root = Path(root) / study
        self.version = version
        self.data_dir = data_dir
        self._used: dict[str, str] | None = None  # artifacts read by the run in progress
        self._data: dict[str, Any] | None = None  # data fingerprint of the run in progress

    def data(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """The fingerprint of the local data a config reads (``None`` for embedded data or no ``dataset`` entry)."""
        dataset = config.get("dataset") if isinstance(config, dict) else None
        return data_fingerprint(dataset, self.data_dir) if isinstance(dataset, str) else None

    def run_dir(self, config: dict[str, Any]) -> Path:
        """The folder of the run with this config (the key covers the config, versions and the data's fingerprint)."""
        return self.root / config_hash(config, self.version, self.data(config))

    def load(self, config: dict[str, Any]) -> pd.DataFrame | None:
        """The finished run's verified metrics; ``None`` if not finished or found damaged (then with a warning)."""
        folder = self.run_dir(config)
        marker = folder / _MARKER
        if not os.path.lexists(marker):
            return None
        meta, problem = _read_marker(marker)
        if problem is None and meta.get("config_json") != canonical_json(config):
            problem = "it records another config (a folder copied or swapped from another run)"
        if problem is not None:
            warn_damaged(marker, problem, "recomputing the run")
            return None
        for name, record in meta["files"].items():
            data, problem = read_file(folder / name)
            if data is not None:
                problem = check_bytes(data, record)
            if problem is None and name == _METRICS:
                metrics = data
            elif problem is not None:
                warn_damaged(folder / name, problem, "recomputing the run")
                return None
        for name, digest in meta["artifacts"].items():
            if (problem := self._artifact_problem(name, digest)) is not None:
                warn_damaged(self._artifact_path(name), problem, f"recomputing the run {folder.name} that used it")
                return None
        if meta["rows"] == 0 and not metrics.strip():
            return pd.DataFrame()  # a run that returned an empty frame
        try:
            frame = read_frame(metrics)
        except (ValueError, UnicodeDecodeError) as error:  # recorded as written, yet unreadable
            warn_damaged(folder / _METRICS, f"it cannot be parsed ({error})", "recomputing the run")
            return None
        if len(frame) != meta["rows"]:
            warn_damaged(folder / _METRICS, f"it has {len(frame)} rows where {meta['rows']} were written")
            return None
        return frame

    @contextlib.contextmanager
    def recording(self, config: dict[str, Any]) -> Iterator[None]:
        """Within the block, the artifacts a run reads are recorded (and keyed by its data) for :meth:`save`."""
        self._used, self._data = {}, self.data(config)
        try:
            yield
        finally:
            self._used, self._data = None, None

    def save(self, config: dict[str, Any], frame: pd.DataFrame, device: str, seconds: float) -> Path:
        """Write a finished run: metrics first, then ``meta.json`` (the completion marker) recording every file."""
        folder = self.run_dir(config)
        csv = frame_csv(frame).encode()
        files = {_METRICS: file_record(csv)}
        if folder.is_dir():
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
                name = path.relative_to(folder).as_posix()
                if name not in (_METRICS, _MARKER):
                    files[name] = file_record(path.read_bytes())
        meta = {
            "config": config,
            "config_json": canonical_json(config),
            "data": self.data(config),
            "version": self.version,
            "store_version": STORE_VERSION,
            "environment": environment(device),
            "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "rows": len(frame),
            "files": files,
            "artifacts": dict(self._used or {}),
        }
        publish({folder / _METRICS: csv, folder / _MARKER: json.dumps(meta, indent=2, allow_nan=True)})
        return folder

    def _artifact_path(self, name: str) -> Path:
        return self.root / "artifacts" / f"{name}.pt"

    def _artifact_problem(self, name: str, digest: str) -> str | None:
        data = read_verified(self._artifact_path(name))
        if data is None:
            return "it is missing or damaged"
        return None if hashlib.sha256(data).hexdigest() == digest else "it changed since the run used it"

    def artifact(self, name: str, make: Callable[[], Any]) -> Any:
        """A tensor artifact shared by the study's runs (e.g. one saved initialisation), made once, then loaded.

        The file is verified on every read (a damaged one is remade with a warning). Made during a run on local data,
        the artifact's name gets that data's fingerprint, and the run's ``meta.json`` records the artifact's SHA-256,
        so a changed artifact invalidates the runs that used it.
        """
        if self._data is not None:
            name = f"{name}-{config_hash(self._data)}"
        path = self._artifact_path(name)
        data = read_verified(path)
        if data is not None:
            try:
                value = safe_torch_load(io.BytesIO(data), name=path)
            except (RuntimeError, EOFError) as error:  # recorded as written, yet unreadable
                warn_damaged(path, f"it cannot be loaded ({error})", "making it again")
                data = None
        if data is None:
            value = make()
            data = torch_bytes(value)
            write_verified(path, data)
            value = safe_torch_load(io.BytesIO(data), name=path)  # what later runs load, bit for bit
        if self._used is not None:
            self._used[name] = hashlib.sha256(data).hexdigest()
        return value


def _read_marker(marker: Path) -> tuple[dict[str, Any], str | None]:
    raw, problem = read_file(marker)
    if raw is None:
        return {}, problem
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return {}, "it is not valid JSON"
    required = {"config_json": str, "files": dict, "artifacts": dict, "rows": int}
    if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t) for k, t in required.items()):
        return {}, "it lacks the record of the run's files (written by another version of valley, or edited)"
    if _METRICS not in meta["files"]:
        return {}, f"it does not record {_METRICS}"
    return meta, None
