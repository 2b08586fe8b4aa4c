"""The results store: atomic writes, config hashing and one folder per study run.

Layout: ``<root>/<study>/<config-hash>/`` holds ``metrics.csv`` (the run's tidy DataFrame) and ``meta.json`` (the
config, library versions, device, wall time). ``meta.json`` is written last, so a folder without it is an
unfinished run and is recomputed. Every file is written to a temporary name in the same folder and renamed into
place (``os.replace`` is atomic on POSIX), so a killed process never leaves a half-written result.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

#: Bump when a change to the runner makes earlier cached results invalid.
STORE_VERSION = "1"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def write_frame(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a DataFrame as CSV atomically."""
    atomic_write_text(path, frame.to_csv(index=False))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers only.

    Raises:
        ValueError: if the file holds any other pickled object (it is refused, never executed).
    """
    import pickle

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"Refusing to load {path}: it holds objects other than tensors and plain data ({err})"
        ) from err


def config_hash(config: dict[str, Any], version: str = "") -> str:
    """A 12-hex-digit key for a config: SHA-256 of its canonical JSON plus the study and store versions.

    Example:
        >>> config_hash({"lr": 0.1, "opt": "sgd"}) == config_hash({"opt": "sgd", "lr": 0.1})
        True
    """
    canonical = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(f"{canonical}|{version}|{STORE_VERSION}".encode()).hexdigest()[:12]


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
    """The cached runs of one study under ``<root>/<study>/``."""

    def __init__(self, root: str | os.PathLike, study: str, version: str = "1") -> None:
        self.root = Path(root) / study
        self.version = version

    def run_dir(self, config: dict[str, Any]) -> Path:
        """The folder of the run with this config."""
        return self.root / config_hash(config, self.version)

    def load(self, config: dict[str, Any]) -> pd.DataFrame | None:
        """The finished run's metrics, or ``None`` if this config has not finished."""
        folder = self.run_dir(config)
        if not (folder / "meta.json").exists():
            return None
        return pd.read_csv(folder / "metrics.csv")

    def save(self, config: dict[str, Any], frame: pd.DataFrame, device: str, seconds: float) -> Path:
        """Write a finished run: metrics first, then ``meta.json`` (the completion marker)."""
        folder = self.run_dir(config)
        write_frame(folder / "metrics.csv", frame)
        meta = {
            "config": config,
            "version": self.version,
            "environment": environment(device),
            "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2, default=str))
        return folder

    def artifact(self, name: str, make: Callable[[], Any]) -> Any:
        """A tensor artifact shared by the study's runs (e.g. one saved initialisation), made once, then loaded."""
        path = self.root / "artifacts" / f"{name}.pt"
        if not path.exists():
            atomic_torch_save(make(), path)
        return safe_torch_load(path)
