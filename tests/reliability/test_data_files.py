"""Damaged data files give one clear error naming the file; a folder or FIFO in a file's place is never opened."""

import gzip
import os
import signal
import struct

import numpy as np
import pytest

from studies import data
from studies.errors import UserError

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


class _Hung(BaseException):
    """Raised by the alarm: passes every ``except Exception`` and fails the test."""


@pytest.fixture(autouse=True)
def no_hang():
    """Fail, rather than hang, if a reader opens a FIFO (opening one waits for a writer forever)."""

    def hung(*_):
        raise _Hung("the reader blocked (it opened a FIFO?)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def idx_bytes(array, code=0x08, magic=None):
    array = np.asarray(array)
    header = magic if magic is not None else bytes([0, 0, code, array.ndim])
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0D: ">f4"}[code]
    return header + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(dtype).tobytes()


def mnist(root, **replace):
    """An 8×8 MNIST in ``root/mnist``: 20 training and 10 test examples; ``replace`` maps a stem to its bytes."""
    folder = root / "mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        STEMS[0]: rng.integers(0, 256, (20, 8, 8)),
        STEMS[1]: np.arange(20) % 10,
        STEMS[2]: rng.integers(0, 256, (10, 8, 8)),
        STEMS[3]: np.arange(10) % 10,
    }
    for stem, array in arrays.items():
        content = replace.get(stem, gzip.compress(idx_bytes(array)))
        if callable(content):
            content(folder / f"{stem}.gz")
        else:
            (folder / f"{stem}.gz").write_bytes(content)
    return folder


def refused(root, *words, dataset="mnist"):
    with pytest.raises(UserError) as error:
        data.load_dataset(dataset, root)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_a_valid_small_mnist_loads(tmp_path):
    mnist(tmp_path)
    ds = data.load_dataset("mnist", tmp_path)
    assert ds.input_shape == (1, 8, 8) and len(ds.y_train) == 20 and ds.num_classes == 10


def test_truncated_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((20, 8, 8))))
    folder = mnist(tmp_path, **{STEMS[0]: good[: len(good) // 2]})
    refused(tmp_path, f"{folder / STEMS[0]}.gz: damaged gzip file")


def test_gzip_name_without_gzip_content(tmp_path):
    folder = mnist(tmp_path, **{STEMS[0]: b"\x1f\x8b" + b"not really gzip" * 4})
    refused(tmp_path, f"{folder / STEMS[0]}.gz: damaged gzip file")


def test_wrong_magic(tmp_path):
    folder = mnist(tmp_path, **{STEMS[1]: gzip.compress(idx_bytes(np.zeros(20), magic=b"\x12\x34\x08\x01"))})
    refused(tmp_path, f"{folder / STEMS[1]}.gz is not an IDX file")


def test_uncompressed_file_shorter_than_its_header_says(tmp_path):
    folder = mnist(tmp_path)
    raw = idx_bytes(np.zeros((20, 8, 8)))
    (folder / STEMS[0]).write_bytes(raw[:-5])  # the uncompressed file is preferred over the .gz
    refused(tmp_path, f"{folder / STEMS[0]}: header says shape (20, 8, 8)", f"{len(raw) - 5} bytes")


def test_compressed_file_longer_than_its_header_says(tmp_path):
    folder = mnist(tmp_path, **{STEMS[2]: gzip.compress(idx_bytes(np.zeros((10, 8, 8))) + b"extra")})
    refused(tmp_path, f"{folder / STEMS[2]}.gz: header says shape (10, 8, 8)", "holds more")


def test_a_header_claiming_more_than_memory_is_refused_before_decompressing(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3i", 2**31 - 1, 2**15, 2**15)
    folder = mnist(tmp_path, **{STEMS[0]: gzip.compress(header + bytes(64))})
    refused(tmp_path, f"{folder / STEMS[0]}.gz", "more than this machine's memory")


def test_wrong_dimensions(tmp_path):
    folder = mnist(tmp_path, **{STEMS[0]: gzip.compress(idx_bytes(np.zeros((20, 64))))})
    refused(tmp_path, f"{folder / STEMS[0]}.gz: expected images of shape (n, height, width)", "(20, 64)")


def test_image_and_label_counts_differ(tmp_path):
    folder = mnist(tmp_path, **{STEMS[3]: gzip.compress(idx_bytes(np.arange(9) % 10))})
    refused(tmp_path, "holds 10 images but", f"{folder / STEMS[3]}.gz holds 9 labels")


def test_train_and_test_images_differ_in_size(tmp_path):
    mnist(tmp_path, **{STEMS[2]: gzip.compress(idx_bytes(np.zeros((10, 9, 9))))})
    refused(tmp_path, "training images are (8, 8), test images (9, 9)")


@pytest.mark.parametrize(("labels", "code", "bad"), [([3, 200], 0x08, "200"), ([3, -1], 0x09, "-1")])
def test_labels_out_of_range(tmp_path, labels, code, bad):
    folder = mnist(tmp_path, **{STEMS[1]: gzip.compress(idx_bytes(np.resize(labels, 20), code=code))})
    refused(tmp_path, f"{folder / STEMS[1]}.gz: label {bad} is outside 0–9")


def test_float_labels_are_refused_not_truncated(tmp_path):
    """Float labels (IDX type 0x0D) were cast to int64: 1.9 read as class 1, and a study ran on them."""
    labels = np.resize([0.5, 1.9, 2.5, 9.99], 20)
    folder = mnist(tmp_path, **{STEMS[1]: gzip.compress(idx_bytes(labels, code=0x0D))})
    refused(tmp_path, f"{folder / STEMS[1]}.gz: labels of type float32, not integers")


def test_an_empty_split_and_nan_pixels_are_refused(tmp_path):
    """An IDX split of 0 examples ended in numpy's "zero-size array to reduction operation" (an internal error)."""
    folder = mnist(
        tmp_path / "a",
        **{STEMS[2]: gzip.compress(idx_bytes(np.zeros((0, 8, 8)))), STEMS[3]: gzip.compress(idx_bytes(np.zeros(0)))},
    )
    refused(tmp_path / "a", f"{folder / STEMS[2]}.gz holds no image")
    pixels = np.full((20, 8, 8), np.nan)
    folder = mnist(tmp_path / "b", **{STEMS[0]: gzip.compress(idx_bytes(pixels, code=0x0D))})
    refused(tmp_path / "b", f"{folder / STEMS[0]}.gz: holds NaN or infinite pixel values")


@pytest.mark.parametrize(("make", "kind"), [(os.mkdir, "a folder"), (os.mkfifo, "a special file")])
def test_a_folder_or_fifo_in_place_of_a_file_is_not_opened(tmp_path, make, kind):
    folder = mnist(tmp_path, **{STEMS[0]: make})
    refused(tmp_path, f"{folder / STEMS[0]}.gz: expected an IDX file, found {kind}")


def cifar(root, **replace):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    records = np.zeros((4, 3073), np.uint8)
    records[:, 0] = [0, 1, 2, 9]
    for name in CIFAR:
        content = replace.get(name, records.tobytes())
        content(folder / name) if callable(content) else (folder / name).write_bytes(content)
    return folder


def test_a_valid_small_cifar_loads(tmp_path):
    cifar(tmp_path)
    ds = data.load_dataset("cifar10", tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds.y_train) == 20 and ds.y_train.max() == 9


def test_cifar_truncated(tmp_path):
    folder = cifar(tmp_path, **{"data_batch_2.bin": bytes(3073 * 2 - 7)})
    refused(tmp_path, f"{folder}/data_batch_2.bin: size 6139 bytes", dataset="cifar10")


def test_a_cifar_batch_cut_at_a_record_boundary_is_refused(tmp_path):
    """Only the record size was checked: data_batch_3 cut from 4 records to 2 loaded as 18 training examples."""
    folder = cifar(tmp_path, **{"data_batch_3.bin": np.zeros((2, 3073), np.uint8).tobytes()})
    refused(
        tmp_path,
        f"{folder}: the CIFAR-10 batches hold different numbers of records",
        "data_batch_3.bin 2",
        dataset="cifar10",
    )


def test_cifar_label_out_of_range(tmp_path):
    record = np.zeros(3073, np.uint8)
    record[0] = 10
    folder = cifar(tmp_path, **{"test_batch.bin": record.tobytes()})
    refused(tmp_path, f"{folder}/test_batch.bin: label 10 is outside 0–9", dataset="cifar10")


@pytest.mark.parametrize(("make", "kind"), [(os.mkdir, "a folder"), (os.mkfifo, "a special file")])
def test_cifar_folder_or_fifo_in_place_of_a_batch(tmp_path, make, kind):
    folder = cifar(tmp_path, **{"test_batch.bin": make})
    refused(tmp_path, f"{folder}/test_batch.bin: expected a CIFAR-10 batch, found {kind}", dataset="cifar10")
