"""Safe file output shared by every writer in valley (surfaces, chunk caches, the run store, figures, the CLI).

Three rules, each enforced here so no caller re-implements it:

1. **Atomic.** Bytes go to a temporary file in the destination's folder, are flushed to disk and moved over the
   destination with ``os.replace``; a killed process leaves either the old file or the new one, never half of one.
   Several files of one result are published together under an exclusive lock on their folder
   (:func:`publish`), so two processes writing the same paths never leave a CSV from one run beside the sidecar
   of another.
2. **Ordinary permissions.** A published file gets ``0o666`` masked by the process umask, as ``open()`` would give
   it (``tempfile.mkstemp`` alone would leave it readable by its owner only).
3. **Only regular files are replaced.** An existing output path that is a symlink, FIFO, socket, device node or
   folder is refused with :class:`OutputPathError` before anything is written; callers check their outputs with
   :func:`check_output_file` / :func:`check_output_dir` *before* the expensive work starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

__all__ = [
    "OutputPathError",
    "atomic_write",
    "check_output_dir",
    "check_output_file",
    "file_mode",
    "publish",
]


class OutputPathError(ValueError):
    """An output path that valley refuses to write (the message names the path and the reason)."""


def file_mode() -> int:
    """Permission bits ``open()`` gives a new file: ``0o666`` without the bits of the current umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISLNK: "a symbolic link",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISDIR: "a folder",
        stat.S_ISREG: "a file",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _check_name(path: Path) -> None:
    parent = path.parent if path.parent.exists() else Path(".")
    limit = os.pathconf(parent, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise OutputPathError(f"{path}: the name {part[:40]!r}... is longer than {limit} bytes")


def check_output_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` as a folder valley may write into, creating it if needed; refuse anything else.

    Raises:
        OutputPathError: the path (or a parent) is a file or special file, cannot be created, or is not writable.
    """
    path = Path(path)
    _check_name(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path}: expected a folder, found {_kind(os.stat(path).st_mode)}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(f"{path}: cannot create the folder: a parent is not a folder") from None
    except OSError as error:
        raise OutputPathError(f"{path}: cannot create the folder: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputPathError(f"{path}: the folder is not writable")
    try:  # os.access says yes to root everywhere and knows nothing of read-only or pseudo file systems: try it
        with tempfile.NamedTemporaryFile(dir=path, prefix=".valley-probe."):
            pass
    except OSError as error:
        raise OutputPathError(f"{path}: the folder is not writable ({error.strerror})") from None
    return path


def check_output_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a file valley may (re)place: absent or a regular file, in a writable folder.

    Raises:
        OutputPathError: the path is a folder, symlink, FIFO, socket or device, or its folder is not writable.
    """
    path = Path(path)
    _check_name(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        raise OutputPathError(f"{path}: a parent of this path is a file, not a folder") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputPathError(f"{path}: refusing to replace {_kind(mode)}; give the path of a regular file")
    check_output_dir(path.parent if str(path.parent) else Path("."))
    return path


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[Path]:
    # ends as the destination does: np.savez appends ".npz" to a path that does not end so, and wrote elsewhere
    # the name cut so that a destination name near the file system's limit still leaves room for the temporary's
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=f".tmp{path.suffix[:20]}")
    os.close(fd)
    try:
        yield Path(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finish(tmp: Path) -> None:
    os.chmod(tmp, file_mode())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


Writer = bytes | str | Callable[[Path], None]


def _write(tmp: Path, content: Writer) -> None:
    if isinstance(content, str):
        content = content.encode()
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        content(tmp)


def publish(files: Mapping[str | os.PathLike, Writer]) -> list[Path]:
    """Write several files and move them into place together, under an exclusive lock on each folder.

    Args:
        files: destination path → its content: ``bytes``, ``str`` (written as UTF-8) or a callable that writes the
            temporary path it is given (e.g. ``lambda p: np.savez(p, ...)`` or ``lambda p: torch.save(obj, p)``;
            it must write exactly that path).

    Returns:
        The destination paths, in the order given.

    Raises:
        OutputPathError: a destination is not a regular file or absent, or its folder is not writable.
    """
    paths = [check_output_file(p) for p in files]
    with contextlib.ExitStack() as stack:
        temps = []
        for path, content in zip(paths, files.values(), strict=True):
            tmp = stack.enter_context(_temporary(path))
            _write(tmp, content)
            if callable(content) and tmp.stat().st_size == 0:
                raise RuntimeError(f"{path}: the writer wrote nothing at the temporary path it was given")
            _finish(tmp)
            temps.append(tmp)
        for folder in sorted({p.parent.resolve() for p in paths}):
            stack.enter_context(_folder_lock(folder))
        for path in paths:  # all checked before the first is replaced: all or nothing
            if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
                raise OutputPathError(f"{path}: became a special file while valley was writing; nothing replaced")
        for path, tmp in zip(paths, temps, strict=True):
            os.replace(tmp, path)
    return paths


def atomic_write(path: str | os.PathLike, content: Writer) -> Path:
    """Write one file atomically with ordinary permissions (see :func:`publish`)."""
    return publish({path: content})[0]
