"""Caches that verify themselves: every cached file is recorded (size and SHA-256) when written and checked when read.

A cache entry is only used when its bytes are exactly those recorded when it was finished; a file that is missing,
truncated, emptied, edited, swapped with another or replaced by garbage is reported with a :class:`CacheWarning`
naming the file, and the caller recomputes the entry. Nothing is ever used silently, and a damaged cache never
raises.

Two layers:

* :func:`file_record` / :func:`check_bytes` for callers that keep the records in their own completion marker (the run
  store's ``meta.json``, the surface chunks' records);
* :func:`write_verified` / :func:`read_verified` for a single cached file with its record in a sidecar
  ``<name>.meta.json`` (shared initialisations, the MNIST-1D arrays, the theory table). Both files are published
  together through :func:`landscape.files.publish`, the sidecar last, so the sidecar is the completion marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

from landscape.files import publish

__all__ = [
    "CacheWarning",
    "check_bytes",
    "file_record",
    "marker_path",
    "read_file",
    "read_verified",
    "sha256",
    "warn_damaged",
    "write_verified",
]


class CacheWarning(UserWarning):
    """A cached file was found damaged (or its record was); it is recomputed. The message names the file."""


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_record(data: bytes) -> dict[str, Any]:
    """What a completion marker stores about one file: its size in bytes and the SHA-256 of its content.

    Example:
        >>> file_record(b"abc")["bytes"], file_record(b"abc")["sha256"][:12]
        (3, 'ba7816bf8f01')
    """
    return {"bytes": len(data), "sha256": sha256(data)}


def check_bytes(data: bytes, record: object) -> str | None:
    """``None`` when ``data`` is what ``record`` (from :func:`file_record`) describes, else what differs."""
    if not isinstance(record, dict) or not {"bytes", "sha256"} <= record.keys():
        return "its record in the completion marker is malformed"
    if len(data) != record["bytes"]:
        return f"it holds {len(data)} bytes where {record['bytes']} were written"
    if sha256(data) != record["sha256"]:
        return "its content differs from what was written (SHA-256 mismatch)"
    return None


def read_file(path: Path) -> tuple[bytes | None, str | None]:
    """``(bytes, None)``, or ``(None, why)`` when ``path`` is missing, not a regular file or unreadable."""
    try:
        if not path.is_file():
            return None, "it is missing" if not os.path.lexists(path) else "it is not a regular file"
        return path.read_bytes(), None
    except OSError as error:
        return None, f"it cannot be read ({error.strerror})"


def warn_damaged(path: str | os.PathLike, problem: str, action: str = "recomputing it") -> None:
    """Warn (:class:`CacheWarning`) that the cached file ``path`` is damaged and what is done about it."""
    warnings.warn(f"damaged cache file {os.fspath(path)}: {problem}; {action}", CacheWarning, stacklevel=3)


def marker_path(path: str | os.PathLike) -> Path:
    """The sidecar record of a verified file: ``<name>.meta.json`` beside it (never equal to ``path``)."""
    path = Path(path)
    return path.with_name(f"{path.name}.meta.json")


def write_verified(path: str | os.PathLike, data: bytes, **info: Any) -> None:
    """Publish ``data`` at ``path`` and its record (plus the JSON-able ``info``) in :func:`marker_path`."""
    marker = {"file": Path(path).name, **file_record(data), **info}
    publish({path: data, marker_path(path): json.dumps(marker, indent=1, sort_keys=True)})


def read_verified(path: str | os.PathLike) -> bytes | None:
    """The bytes written by :func:`write_verified`, or ``None`` when absent or damaged (then with a warning).

    An entry without its sidecar is an unfinished write and is ``None`` without a warning; a sidecar whose file is
    missing or differs from the record warns naming the file.
    """
    path = Path(path)
    marker = marker_path(path)
    if not os.path.lexists(marker):
        return None
    raw, problem = read_file(marker)
    record = None
    if raw is not None:
        try:
            record = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            problem = "it is not valid JSON"
    if record is None or not isinstance(record, dict):
        warn_damaged(marker, problem or "it is not a JSON object")
        return None
    data, problem = read_file(path)
    if data is not None:
        problem = check_bytes(data, record)
    if problem is not None:
        warn_damaged(path, problem)
        return None
    return data
