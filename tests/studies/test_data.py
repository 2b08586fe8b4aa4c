import gzip
import struct

import numpy as np
import pytest
import torch

from studies import cli, data


def _write_idx(path, array, compress=True):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def _write_mnist(folder, n_train=12, n_test=6, compress=True):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = np.arange(n) % 10
        _write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


def test_digits_shapes_split_and_standardisation():
    ds = data.load_dataset("digits")
    assert ds.input_shape == (1, 8, 8)
    assert (len(ds.y_train), len(ds.y_test), ds.num_classes) == (1347, 450, 10)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert abs(float(ds.x_train.mean())) < 1e-5
    assert float(ds.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    again = data.load_dataset("digits")
    assert torch.equal(ds.x_train, again.x_train) and torch.equal(ds.y_test, again.y_test)


def test_mnist1d_generated_locally_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VALLEY_CACHE", str(tmp_path))
    ds = data.load_dataset("mnist1d")
    assert ds.input_shape == (40,)
    assert (len(ds.y_train), len(ds.y_test), ds.num_classes) == (4000, 1000, 10)
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    assert torch.equal(data.load_dataset("mnist1d").x_train, ds.x_train)


def test_missing_local_data_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz") as err:
        data.load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path / "mnist") in str(err.value)
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    assert not data.available("fashion_mnist", tmp_path)
    assert data.why_unavailable("digits") is None


def test_unknown_dataset_is_a_value_error():
    with pytest.raises(ValueError, match="'imagenet'"):
        data.load_dataset("imagenet")


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_on_files_written_here(tmp_path, compress):
    images, labels = _write_mnist(tmp_path / "mnist", compress=compress)
    suffix = ".gz" if compress else ""
    raw = data.read_idx(tmp_path / "mnist" / f"t10k-images-idx3-ubyte{suffix}")
    np.testing.assert_array_equal(raw, images)
    ds = data.load_dataset("mnist", data_dir=tmp_path)
    assert ds.input_shape == (1, 28, 28)
    assert (len(ds.y_train), len(ds.y_test)) == (12, 6)
    np.testing.assert_array_equal(ds.y_test.numpy(), labels)


def test_torchvision_layout_and_env_variable(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "FashionMNIST" / "raw")
    monkeypatch.setenv("VALLEY_DATA", str(tmp_path))
    assert data.load_dataset("fashion_mnist").input_shape == (1, 28, 28)


def test_idx_reader_rejects_a_truncated_file(tmp_path):
    path = tmp_path / "bad-idx"
    _write_idx(path, np.zeros((3, 4)), compress=False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        data.read_idx(path)
    (tmp_path / "text").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "text")


def test_cifar_binary_reader(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, 4).astype(np.uint8)
        pixels = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
        np.concatenate([labels[:, None], pixels], axis=1).tofile(folder / name)
    x, y = data.read_cifar_binary(folder / "test_batch.bin")
    assert x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(x[2, 1].ravel(), pixels[2, 1024:2048])
    ds = data.load_dataset("cifar10", data_dir=tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds.y_train) == 20
    (folder / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="3073-byte"):
        data.read_cifar_binary(folder / "test_batch.bin")


def test_seeded_batches_are_deterministic_and_cover_the_data():
    x, y = torch.arange(10.0), torch.arange(10)
    first = data.batches(x, y, 3, generator=torch.Generator().manual_seed(5))
    second = data.batches(x, y, 3, generator=torch.Generator().manual_seed(5))
    assert [b[1].tolist() for b in first] == [b[1].tolist() for b in second]
    assert sorted(torch.cat([b[1] for b in first]).tolist()) == list(range(10))
    assert [len(b[1]) for b in first] == [3, 3, 3, 1]
    with pytest.raises(ValueError, match="batch_size: 0"):
        data.batches(x, y, 0)


def test_subset_is_seeded():
    ds = data.load_dataset("digits")
    a, b = ds.subset(100, 50, seed=3), ds.subset(100, 50, seed=3)
    assert len(a.y_train) == 100 and len(a.y_test) == 50
    assert torch.equal(a.x_train, b.x_train)


# Discovery: each layout valley, system packages and torchvision use, and the order of the search roots.


@pytest.mark.parametrize(
    ("name", "layout"),
    [
        ("fashion_mnist", "fashion_mnist"),
        ("fashion_mnist", "fashion-mnist"),
        ("fashion_mnist", "FashionMNIST/raw"),
        ("mnist", "mnist"),
        ("mnist", "MNIST/raw"),
    ],
)
def test_each_idx_layout_is_found_under_a_named_root(tmp_path, name, layout):
    _write_mnist(tmp_path / layout)
    assert data.locate(name, tmp_path) == tmp_path / layout
    assert data.load_dataset(name, tmp_path).input_shape == (1, 28, 28)
    other = "mnist" if name == "fashion_mnist" else "fashion_mnist"
    assert data.locate(other, tmp_path) is None


def _write_cifar(folder):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rng.integers(0, 10, (2, 3073)).astype(np.uint8).tofile(folder / f)


@pytest.mark.parametrize("layout", ["cifar-10-batches-bin", "cifar10/cifar-10-batches-bin"])
def test_cifar_layouts(tmp_path, layout):
    _write_cifar(tmp_path / layout)
    assert data.locate("cifar10", tmp_path) == tmp_path / layout
    assert len(data.load_dataset("cifar10", tmp_path).y_train) == 10


def test_system_package_folder_is_searched(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets"
    _write_mnist(system / "fashion-mnist")
    monkeypatch.setenv("VALLEY_CACHE", str(tmp_path / "cache"))
    assert data.locate("fashion_mnist") is None
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (system,))
    assert data.locate("fashion_mnist") == system / "fashion-mnist"
    assert data.why_unavailable("fashion_mnist") is None


def test_search_order_named_root_then_cache_then_system(tmp_path, monkeypatch):
    named, cache, system = tmp_path / "named", tmp_path / "cache", tmp_path / "system"
    for root in (named, cache / "data", system):
        _write_mnist(root / "fashion_mnist")
    monkeypatch.setenv("VALLEY_CACHE", str(cache))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (system,))
    assert data.search_roots(named) == [named, cache / "data", system]
    assert data.locate("fashion_mnist", named) == named / "fashion_mnist"
    assert data.locate("fashion_mnist") == cache / "data" / "fashion_mnist"
    monkeypatch.setenv("VALLEY_DATA", str(named))
    assert data.locate("fashion_mnist") == named / "fashion_mnist"


def test_incomplete_folder_is_skipped_and_the_error_lists_every_place(tmp_path, monkeypatch):
    _write_mnist(tmp_path / "fashion_mnist")
    (tmp_path / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("VALLEY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (tmp_path / "system",))
    assert data.locate("fashion_mnist", tmp_path) is None
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("fashion_mnist", tmp_path)
    for place in (tmp_path / "fashion_mnist", tmp_path / "cache" / "data" / "fashion_mnist", tmp_path / "system"):
        assert str(place) in str(err.value)
    assert "make data" in str(err.value)


def test_valley_list_prints_where_each_data_set_was_found(tmp_path, monkeypatch, capsys):
    system = tmp_path / "system"
    _write_mnist(system / "fashion-mnist")
    monkeypatch.setenv("VALLEY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (system,))
    assert cli.main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert f"found in {system / 'fashion-mnist'}" in lines["fashion_mnist"]
    assert lines["mnist"].rstrip().endswith("absent")
    assert lines["digits"].rstrip().endswith("embedded")


def test_a_named_folder_without_the_data_set_says_which_copy_is_read(tmp_path, monkeypatch):
    """A --data-dir missing a file (or mistyped) silently read the copy in valley's cache instead."""
    named, cache = tmp_path / "named", tmp_path / "cache"
    _write_mnist(named / "fashion_mnist")
    (named / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    _write_mnist(cache / "data" / "fashion_mnist")
    monkeypatch.setenv("VALLEY_CACHE", str(cache))
    monkeypatch.delenv("VALLEY_DATA", raising=False)
    for folder in (named, tmp_path / "typo"):
        with pytest.warns(RuntimeWarning, match=f"--data-dir {folder} holds no complete fashion_mnist/; reading"):
            data.load_dataset("fashion_mnist", folder)
