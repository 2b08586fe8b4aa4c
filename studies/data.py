"""Data sets for the studies: embedded defaults (no download) and the classic image sets from a local folder.

Embedded, always available:

* ``digits`` — scikit-learn's ``load_digits``: 1797 real 8×8 handwritten digits (UCI), shipped inside scikit-learn.
  Fixed stratified split: 1347 train / 450 test (``random_state=0``).
* ``mnist1d`` — MNIST-1D (Greydanus 2020), generated locally by ``mnist1d.data.make_dataset`` with its default
  arguments (4000 train / 1000 test, 40 features). The generated arrays are cached under :func:`cache_dir`, keyed by
  a hash of the generator's arguments, with their SHA-256 in a sidecar; a damaged cache file is regenerated with a
  warning.

Read from files already on the machine, never downloaded. The search goes through these roots in order and takes
the first that holds every file (:func:`locate` says which; ``valley list`` prints it):

1. the ``data_dir`` argument (``--data-dir``), else the ``VALLEY_DATA`` environment variable;
2. valley's cache folder, ``<cache_dir()>/data``;
3. the folders where operating-system packages install data sets (:data:`SYSTEM_DATA_DIRS`: Debian and Ubuntu's
   ``dataset-fashion-mnist`` package puts the original IDX files in ``/usr/share/datasets/fashion-mnist/``).

Inside a root, each data set is looked for in valley's folder name, the hyphenated name the system packages use,
and torchvision's layout (:data:`LAYOUTS`):

* ``mnist`` and ``fashion_mnist`` — the IDX files as distributed (``train-images-idx3-ubyte[.gz]``, ...), in
  ``<root>/fashion_mnist/``, ``<root>/fashion-mnist/`` or torchvision's ``<root>/FashionMNIST/raw/``.
* ``cifar10`` — the *binary* version (``cifar-10-batches-bin/data_batch_1.bin`` … ``test_batch.bin``), read with
  numpy; the Python-pickle version is deliberately not supported (never unpickle a downloaded file).

Inputs are standardised with the training set's mean and standard deviation (per channel for images).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import stat
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import Tensor

from landscape.cache import read_verified, warn_damaged, write_verified
from studies.errors import UserError, one_line

EMBEDDED = ("digits", "mnist1d")
LOCAL = ("mnist", "fashion_mnist", "cifar10")
DATASETS = EMBEDDED + LOCAL

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = ("test_batch.bin",)
#: data set -> folders (relative to a search root) that may hold its files: valley's name, the hyphenated name of
#: the system packages, torchvision's layout.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST/raw"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw"),
    "cifar10": ("cifar-10-batches-bin", "cifar10/cifar-10-batches-bin", "cifar-10/cifar-10-batches-bin"),
}
#: Where operating-system packages install data sets (Debian/Ubuntu ``dataset-*`` packages).
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)
_LOCAL_CLASSES = 10  # MNIST, Fashion-MNIST and CIFAR-10 all have ten classes, labelled 0-9
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Dataset:
    """A classification data set held in memory: float32 inputs, int64 labels, fixed train/test split."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example, e.g. ``(1, 8, 8)`` for digits or ``(40,)`` for MNIST-1D."""
        return tuple(self.x_train.shape[1:])

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
        """A seeded random subset (stratification is not attempted); ``None`` keeps a split whole."""
        g = torch.Generator().manual_seed(seed)

        def pick(x: Tensor, y: Tensor, n: int | None) -> tuple[Tensor, Tensor]:
            if n is None or n >= len(y):
                return x, y
            if n < 1:
                raise ValueError(f"Invalid subset size: {n}")
            idx = torch.randperm(len(y), generator=g)[:n]
            return x[idx], y[idx]

        x_tr, y_tr = pick(self.x_train, self.y_train, n_train)
        x_te, y_te = pick(self.x_test, self.y_test, n_test)
        return Dataset(self.name, x_tr, y_tr, x_te, y_te, self.num_classes)


def cache_dir() -> Path:
    """Where generated data is cached: ``$VALLEY_CACHE``, else ``$XDG_CACHE_HOME/valley``, else ``~/.cache/valley``."""
    if "VALLEY_CACHE" in os.environ:
        return Path(os.environ["VALLEY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "valley"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The folder holding local data sets: the argument, else ``$VALLEY_DATA``, else ``None``."""
    value = data_dir if data_dir is not None else os.environ.get("VALLEY_DATA")
    return Path(value) if value else None


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name (one of :data:`DATASETS`), standardised with training statistics.

    Raises:
        ValueError: for an unknown name.
        FileNotFoundError: for a local data set whose files are absent, saying which files to put where.
        UserError: (a ``ValueError``) for a damaged data file: not a regular file, truncated, not gzip or not IDX,
            images and labels of different counts or shapes, a label outside 0–9 (the message names the file).

    Example:
        >>> ds = load_dataset("digits")
        >>> ds.input_shape, len(ds.y_train), len(ds.y_test), ds.num_classes
        ((1, 8, 8), 1347, 450, 10)
    """
    if name == "digits":
        x_tr, y_tr, x_te, y_te = _digits()
    elif name == "mnist1d":
        x_tr, y_tr, x_te, y_te = _mnist1d()
    elif name in ("mnist", "fashion_mnist"):
        folder = _require(name, data_dir)
        x_tr, y_tr = (read_idx(_idx_path(folder, f)) for f in _IDX_FILES["train"])
        x_te, y_te = (read_idx(_idx_path(folder, f)) for f in _IDX_FILES["test"])
        _check_idx_split(folder, "train", x_tr, y_tr)
        _check_idx_split(folder, "test", x_te, y_te)
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise UserError(f"{folder}: training images are {x_tr.shape[1:]}, test images {x_te.shape[1:]}")
        x_tr, x_te = x_tr[:, None], x_te[:, None]
    elif name == "cifar10":
        folder = _require(name, data_dir)
        batches = {f: read_cifar_binary(folder / f) for f in _CIFAR_TRAIN + _CIFAR_TEST}
        counts = {f: len(labels) for f, (_, labels) in batches.items()}
        if len(set(counts.values())) > 1:  # a batch cut at a record boundary reads as a shorter batch
            listed = ", ".join(f"{f} {n}" for f, n in counts.items())
            raise UserError(f"{folder}: the CIFAR-10 batches hold different numbers of records ({listed}); one is cut")
        x_tr, y_tr = _concat([batches[f] for f in _CIFAR_TRAIN])
        x_te, y_te = batches[_CIFAR_TEST[0]]
    else:
        raise ValueError(f"Unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    x_tr, x_te = _standardise(np.asarray(x_tr, np.float32), np.asarray(x_te, np.float32))
    num_classes = _LOCAL_CLASSES  # every data set here has ten, also where some class is absent from the labels
    return Dataset(
        name,
        torch.from_numpy(x_tr),
        torch.from_numpy(np.asarray(y_tr, np.int64)),
        torch.from_numpy(x_te),
        torch.from_numpy(np.asarray(y_te, np.int64)),
        num_classes,
    )


def why_unavailable(name: str, data_dir: str | os.PathLike | None = None) -> str | None:
    """``None`` if ``load_dataset(name, data_dir)`` can find its files, else the message saying where to put them."""
    if name in EMBEDDED:
        return None
    try:
        _require(name, data_dir)
    except FileNotFoundError as err:
        return str(err)
    return None


def require_dataset(name: str, data_dir: str | os.PathLike | None = None) -> None:
    """Raise ``FileNotFoundError`` (saying where to put the files) unless ``name`` can be loaded."""
    if (reason := why_unavailable(name, data_dir)) is not None:
        raise FileNotFoundError(reason)


def search_roots(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for local data sets, in order: ``data_dir`` (or ``$VALLEY_DATA``), the cache, the system."""
    explicit = resolve_data_dir(data_dir)
    return ([explicit] if explicit is not None else []) + [cache_dir() / "data", *SYSTEM_DATA_DIRS]


def locate(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder holding every file of the local data set ``name`` (first match over :func:`search_roots`), or None.

    Example:
        >>> locate("digits") is None  # embedded: no folder
        True
    """
    if name not in LAYOUTS:
        return None
    for root in search_roots(data_dir):
        for layout in LAYOUTS[name]:
            if _complete(name, root / layout):
                return root / layout
    return None


def available(name: str, data_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``load_dataset(name, data_dir)`` can find its files (always true for embedded sets)."""
    return why_unavailable(name, data_dir) is None


def data_fingerprint(name: str, data_dir: str | os.PathLike | None = None) -> dict[str, object] | None:
    """What identifies the files a local data set is read from: the resolved folder and each file's size and mtime.

    Part of the key of every cached run on that data set, so another folder (or a file replaced in place) gives
    another key. ``None`` for the embedded sets and names that are no local data set (nothing outside valley).

    Raises:
        FileNotFoundError: the data set's files are absent (as :func:`load_dataset` would).
    """
    if name not in LAYOUTS:
        return None
    folder = _require(name, data_dir)
    files = [folder / f for f in _files(name)] if name == "cifar10" else [_idx_path(folder, s) for s in _files(name)]
    stats = [(f.name, f.stat()) for f in files]
    listed = [[file, st.st_size, st.st_mtime_ns] for file, st in stats]
    return {"dataset": name, "folder": str(folder.resolve()), "files": listed}


def batches(
    x: Tensor, y: Tensor, batch_size: int, *, generator: torch.Generator | None = None, shuffle: bool = True
) -> list[tuple[Tensor, Tensor]]:
    """Split ``(x, y)`` into mini-batches, in a random order drawn from ``generator`` when ``shuffle``.

    Example:
        >>> x, y = torch.arange(5.0), torch.arange(5)
        >>> [b[1].tolist() for b in batches(x, y, 2, shuffle=False)]
        [[0, 1], [2, 3], [4]]
    """
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size}")
    order = torch.randperm(len(y), generator=generator, device="cpu") if shuffle else torch.arange(len(y))
    order = order.to(y.device)
    return [(x[idx], y[idx]) for idx in order.split(batch_size)]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not (recognised by its first bytes).

    Layout: two zero bytes, a type code, the number of dimensions n, n big-endian int32 sizes, then the data. The
    header is checked against the file's size (or, compressed, against what decompresses) before the data is read,
    and a path that is not a regular file (a folder, a FIFO) is refused without being opened.

    Raises:
        FileNotFoundError: the file does not exist.
        UserError: (a ``ValueError``) the file is not a regular file, not gzip though compressed, truncated, or not
            an IDX file; the message names the file.
    """
    path = Path(path)
    size = _regular_file(path, "an IDX file")
    with open(path, "rb") as file:
        compressed = file.read(2) == b"\x1f\x8b"
        file.seek(0)
        stream = gzip.GzipFile(fileobj=file, mode="rb") if compressed else file
        try:
            return _read_idx_stream(path, stream, None if compressed else size)
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f"{path}: damaged gzip file ({one_line(str(error))})") from None


def _read_idx_stream(path: Path, stream: BinaryIO, size: int | None) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES or head[3] == 0:
        raise UserError(f"{path} is not an IDX file (magic bytes {head!r}; expected 00 00 <type> <dimensions>)")
    ndim = head[3]
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise UserError(f"{path}: truncated IDX header ({ndim} dimensions announced)")
    shape = tuple(int(n) for n in np.frombuffer(dims, ">i4"))
    if min(shape) < 0:
        raise UserError(f"{path}: IDX header gives a negative size in shape {shape}")
    dtype = np.dtype(_IDX_DTYPES[head[2]])
    data_bytes = math.prod(shape) * dtype.itemsize
    expected = 4 + 4 * ndim + data_bytes
    if size is not None and size != expected:
        raise UserError(f"{path}: header says shape {shape} ({expected} bytes) but the file has {size} bytes")
    if data_bytes > _memory_bytes():
        raise UserError(f"{path}: header says shape {shape} ({data_bytes} bytes), more than this machine's memory")
    raw = stream.read(data_bytes + 1)
    if len(raw) != data_bytes:
        found = f"{len(raw)}" if len(raw) <= data_bytes else "more"
        raise UserError(f"{path}: header says shape {shape} ({data_bytes} bytes of data) but the file holds {found}")
    return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_cifar_binary(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (3×32×32, channel-major).

    Raises:
        FileNotFoundError: the file does not exist.
        UserError: (a ``ValueError``) not a regular file, not a whole number of records, or a label outside 0–9.
    """
    path = Path(path)
    size = _regular_file(path, "a CIFAR-10 batch")
    if size == 0 or size % 3073:
        raise UserError(f"{path}: size {size} bytes is not a whole number of 3073-byte CIFAR-10 records")
    records = np.fromfile(path, np.uint8).reshape(-1, 3073)
    labels = records[:, 0].astype(np.int64)
    _check_labels(path, labels)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _regular_file(path: Path, what: str) -> int:
    """The size of ``path`` after checking (with ``os.stat``, never opening it) that it is a regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (expected {what})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: expected {what}, found a folder")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: expected {what}, found a special file (FIFO, socket or device); not opened")
    return info.st_size


def _check_labels(path: Path | str, labels: np.ndarray) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= _LOCAL_CLASSES):
        bad = labels[(labels < 0) | (labels >= _LOCAL_CLASSES)][0]
        raise UserError(f"{path}: label {bad} is outside 0–{_LOCAL_CLASSES - 1}")


def _check_idx_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """An IDX split must be n ≥ 1 finite (H, W) images and n integer labels in 0–9."""
    image_file, label_file = (_idx_path(folder, stem) for stem in _IDX_FILES[split])
    if images.ndim != 3:
        raise UserError(f"{image_file}: expected images of shape (n, height, width), found shape {images.shape}")
    if labels.ndim != 1:
        raise UserError(f"{label_file}: expected labels of shape (n,), found shape {labels.shape}")
    if len(images) != len(labels):
        raise UserError(f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels")
    if not len(images):
        raise UserError(f"{image_file} holds no image")
    if not np.issubdtype(labels.dtype, np.integer):  # float labels were truncated to classes: 1.9 read as 1
        raise UserError(f"{label_file}: labels of type {labels.dtype}, not integers (class indices 0–9)")
    if not np.isfinite(images).all():
        raise UserError(f"{image_file}: holds NaN or infinite pixel values")
    _check_labels(label_file, labels)


def _memory_bytes() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images[:, None].astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, bunch.target, test_size=450, random_state=0, stratify=bunch.target)
    return x_tr, y_tr, x_te, y_te


def _mnist1d() -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = vars(get_dataset_args())
    key = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_dir() / f"mnist1d-{key}.npz"
    raw = read_verified(path)
    if raw is not None:
        try:
            with np.load(io.BytesIO(raw)) as d:
                return d["x"], d["y"], d["x_test"], d["y_test"]
        except (OSError, ValueError, KeyError) as error:  # recorded as written, yet unreadable
            warn_damaged(path, f"it cannot be read as the MNIST-1D arrays ({error})", "regenerating it")
    d = make_dataset(get_dataset_args())
    buffer = io.BytesIO()
    np.savez(buffer, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
    write_verified(path, buffer.getvalue(), generator_args=key)
    return d["x"], d["y"], d["x_test"], d["y_test"]


def _standardise(x_tr: np.ndarray, x_te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    axes = (0, 2, 3) if x_tr.ndim == 4 else tuple(range(x_tr.ndim))
    mean = x_tr.mean(axis=axes, keepdims=True)
    std = x_tr.std(axis=axes, keepdims=True) + 1e-8
    return (x_tr - mean) / std, (x_te - mean) / std


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _idx_path(folder: Path, stem: str) -> Path:
    return folder / stem if (folder / stem).exists() else folder / f"{stem}.gz"


def _files(name: str) -> tuple[str, ...]:
    if name == "cifar10":
        return _CIFAR_TRAIN + _CIFAR_TEST
    return _IDX_FILES["train"] + _IDX_FILES["test"]


def _complete(name: str, folder: Path) -> bool:
    if name == "cifar10":
        return all((folder / f).exists() for f in _files(name))
    return all(_idx_path(folder, stem).exists() for stem in _files(name))


def _require(name: str, data_dir: str | os.PathLike | None) -> Path:
    folder = locate(name, data_dir)
    if folder is not None:
        if data_dir is not None and not folder.is_relative_to(Path(data_dir)):  # named, yet another copy is read
            warnings.warn(
                f"{name}: --data-dir {data_dir} holds no complete {LAYOUTS[name][0]}/; reading the copy in {folder}",
                RuntimeWarning,
                stacklevel=3,
            )
        return folder
    places = ", ".join(str(root / LAYOUTS[name][0]) for root in search_roots(data_dir))
    if name == "cifar10":
        what = f"the binary version of CIFAR-10 (cifar-10-binary.tar.gz: {', '.join(_files(name))})"
    else:
        what = f"{', '.join(s + '.gz' for s in _files(name))} (gzip or uncompressed)"
    hint = " (Debian/Ubuntu: `make data` installs the dataset-fashion-mnist package)" if name == "fashion_mnist" else ""
    raise FileNotFoundError(
        f"{name} not found. valley never downloads data: put {what} in one of {places}, or pass --data-dir "
        f"(or set VALLEY_DATA) to a folder holding {LAYOUTS[name][0]}/{hint}."
    )
