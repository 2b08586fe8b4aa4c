"""Caches that verify themselves, keys that cover what changes a result, and outputs with ordinary permissions.

Every damaged cache entry must end as a warning naming the file and a recomputed (correct) result; never a crash,
never a silently used wrong value.
"""

import functools
import gzip
import json
import math
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape._grid import SurfaceJob, function_key
from landscape.cache import CacheWarning, read_verified, write_verified
from landscape.directions import random_direction
from landscape.files import OutputPathError
from landscape.surfaces import Surface, surface_2d
from studies import data as data_module
from studies.data import data_fingerprint
from studies.runner import Study, run_study
from studies.store import RunStore, cached_table, config_hash
from studies.train import train

# ---------------------------------------------------------------------------------------------- the run store


def _study(calls: list, extra_file: bool = False, artifact: bool = False) -> Study:
    """Four runs; run x returns x² and x³ (and may write a checkpoint beside its metrics / read a shared artifact)."""

    def run(config, ctx):
        calls.append(config["x"])
        if extra_file:
            folder = ctx.store.run_dir(config)
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"w": torch.full((3,), float(config["x"]))}, folder / "checkpoint.pt")
        offset = 0.0
        if artifact:
            offset = float(ctx.store.artifact("init", lambda: {"w": torch.tensor([0.5])})["w"])
        x = config["x"]
        return pd.DataFrame({"quantity": ["square", "cube"], "value": [x**2 + offset, x**3 + offset]})

    return Study("toy", "toy", lambda scale, ctx: [{"x": i} for i in range(4)], run)


def _expected(offset: float = 0.0) -> list[float]:
    return [v + offset for x in range(4) for v in (x**2, x**3)]


def _rerun(tmp_path, calls, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = run_study(_study(calls, **kwargs), "tiny", root=tmp_path, progress=False)
    cache_warnings = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    return frame, cache_warnings


def _damage_metrics(kind: str, path: Path, other: Path) -> None:
    text = path.read_text()
    if kind == "truncated":
        path.write_text(text[: len(text) // 2])
    elif kind == "emptied":
        path.write_text("")
    elif kind == "edited value":  # same length, one digit changed: 9 -> 8 (x = 3, square)
        assert ",9" in text
        path.write_text(text.replace(",9", ",8"))
    elif kind == "binary garbage":
        path.write_bytes(os.urandom(len(text)))
    elif kind == "missing":
        path.unlink()
    elif kind == "swapped":  # the metrics of another run
        path.write_bytes(other.read_bytes())
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "emptied", "edited value", "binary garbage", "missing", "swapped"])
def test_damaged_metrics_are_detected_named_and_recomputed(tmp_path, kind):
    calls = []
    run_study(_study(calls), "tiny", root=tmp_path, progress=False)
    store = RunStore(tmp_path, "toy")
    damaged = store.run_dir({"x": 3}) / "metrics.csv"
    _damage_metrics(kind, damaged, store.run_dir({"x": 2}) / "metrics.csv")
    frame, caught = _rerun(tmp_path, calls)
    assert calls == [0, 1, 2, 3, 3]  # only the damaged run again
    assert frame["value"].tolist() == _expected()
    assert len(caught) == 1 and str(damaged) in caught[0]
    assert _rerun(tmp_path, calls)[1] == [] and len(calls) == 5  # repaired: a clean hit, nothing recomputed


def test_a_folder_in_place_of_metrics_is_reported_and_left_alone(tmp_path):
    calls = []
    run_study(_study(calls), "tiny", root=tmp_path, progress=False)
    metrics = RunStore(tmp_path, "toy").run_dir({"x": 1}) / "metrics.csv"
    metrics.unlink()
    metrics.mkdir()
    (metrics / "keep.txt").write_text("not valley's")
    with pytest.warns(CacheWarning, match=f"{metrics}: it is not a regular file"):
        with pytest.raises(OutputPathError, match="refusing to replace a folder"):
            run_study(_study(calls), "tiny", root=tmp_path, progress=False)
    assert (metrics / "keep.txt").read_text() == "not valley's"


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda p: p.write_text("{ not json"), id="garbage"),
        pytest.param(lambda p: p.write_bytes(os.urandom(64)), id="binary"),
        pytest.param(lambda p: p.write_text(json.dumps({"config": {"x": 3}})), id="old-format"),
        pytest.param(lambda p: p.write_text("[]"), id="not-an-object"),
    ],
)
def test_damaged_marker_is_detected_named_and_recomputed(tmp_path, damage):
    calls = []
    run_study(_study(calls), "tiny", root=tmp_path, progress=False)
    marker = RunStore(tmp_path, "toy").run_dir({"x": 1}) / "meta.json"
    damage(marker)
    frame, caught = _rerun(tmp_path, calls)
    assert calls == [0, 1, 2, 3, 1] and frame["value"].tolist() == _expected()
    assert len(caught) == 1 and str(marker) in caught[0]


def test_a_run_folder_swapped_with_another_is_detected(tmp_path):
    calls = []
    run_study(_study(calls), "tiny", root=tmp_path, progress=False)
    store = RunStore(tmp_path, "toy")
    a, b = store.run_dir({"x": 1}), store.run_dir({"x": 2})
    a.rename(tmp_path / "spare")
    b.rename(a)  # run 2's complete, self-consistent folder under run 1's key
    frame, caught = _rerun(tmp_path, calls)
    assert sorted(calls[4:]) == [1, 2] and frame["value"].tolist() == _expected()
    assert any(str(a / "meta.json") in c and "another config" in c for c in caught)


def test_a_row_count_that_differs_from_the_marker_is_detected(tmp_path):
    calls = []
    run_study(_study(calls), "tiny", root=tmp_path, progress=False)
    marker = RunStore(tmp_path, "toy").run_dir({"x": 0}) / "meta.json"
    meta = json.loads(marker.read_text())
    meta["rows"] = 3
    marker.write_text(json.dumps(meta))
    frame, caught = _rerun(tmp_path, calls)
    assert calls[4:] == [0] and "3 were written" in caught[0] and "metrics.csv" in caught[0]


def test_every_file_of_a_run_is_recorded_and_verified(tmp_path):
    calls = []
    run_study(_study(calls, extra_file=True), "tiny", root=tmp_path, progress=False)
    folder = RunStore(tmp_path, "toy").run_dir({"x": 2})
    assert set(json.loads((folder / "meta.json").read_text())["files"]) == {"metrics.csv", "checkpoint.pt"}
    checkpoint = folder / "checkpoint.pt"
    raw = bytearray(checkpoint.read_bytes())
    raw[-30] ^= 0xFF
    checkpoint.write_bytes(bytes(raw))
    frame, caught = _rerun(tmp_path, calls, extra_file=True)
    assert calls[4:] == [2] and frame["value"].tolist() == _expected()
    assert len(caught) == 1 and str(checkpoint) in caught[0]


def test_a_changed_shared_artifact_invalidates_the_runs_that_used_it(tmp_path):
    calls = []
    frame = run_study(_study(calls, artifact=True), "tiny", root=tmp_path, progress=False)
    assert frame["value"].tolist() == _expected(0.5)
    artifact = tmp_path / "toy" / "artifacts" / "init.pt"
    meta = json.loads((RunStore(tmp_path, "toy").run_dir({"x": 0}) / "meta.json").read_text())
    assert set(meta["artifacts"]) == {"init"}
    # replaced consistently (file and its record): every run that used it is recomputed, with the new value
    write_verified(artifact, _torch_bytes({"w": torch.tensor([2.0])}))
    frame, caught = _rerun(tmp_path, calls, artifact=True)
    assert sorted(calls[4:]) == [0, 1, 2, 3] and frame["value"].tolist() == _expected(2.0)
    assert len(caught) == 4 and all(str(artifact) in c and "changed" in c for c in caught)
    # damaged in place: remade (with a warning naming it), then the runs that used it run again
    artifact.write_bytes(artifact.read_bytes()[:100])
    frame, caught = _rerun(tmp_path, calls, artifact=True)
    assert frame["value"].tolist() == _expected(0.5) and sorted(calls[8:]) == [0, 1, 2, 3]
    assert caught and all(str(artifact) in c for c in caught)


def _torch_bytes(obj) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# -------------------------------------------------------------------------------------------------- cache keys


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"w": [1, 2]}, {"w": [2, 1]}),
        ({"w": [1, 2]}, {"w": [1, 2, 3]}),
        ({"w": (32,)}, {"w": (64,)}),
        ({"h": {"lr": 0.1}}, {"h": {"lr": 0.2}}),
        ({"h": {"lr": 0.1}}, {"h": {"lr": 0.1, "m": 0.9}}),
        ({"n": {"a": [1, {"b": 2}]}}, {"n": {"a": [1, {"b": 3}]}}),
        ({"f": True}, {"f": 1}),
        ({"f": 1}, {"f": 1.0}),
        ({"f": 0.1}, {"f": 0.1 + 1e-16 * 2}),
        ({"f": None}, {"f": "None"}),
        ({"f": math.nan}, {"f": math.inf}),
        ({"s": "1"}, {"s": 1}),
    ],
)
def test_every_json_field_changes_the_key(a, b):
    assert config_hash(a) != config_hash(b)
    assert RunStore("r", "s").run_dir(a) != RunStore("r", "s").run_dir(b)


@pytest.mark.parametrize(
    "value", [object(), {1, 2}, np.int64(3), torch.tensor(1.0), Path("x"), lambda: 0, b"bytes", {1: "int key"}]
)
def test_a_non_json_config_value_is_refused(value, tmp_path):
    with pytest.raises(TypeError, match=r"config\['v'\]"):
        config_hash({"v": value})
    study = Study("toy", "toy", lambda scale, ctx: [{"v": value}], lambda config, ctx: pd.DataFrame())
    with pytest.raises(TypeError, match="JSON|strings"):
        run_study(study, "tiny", root=tmp_path, progress=False)


def _idx(path: Path, array: np.ndarray) -> None:
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def _fake_mnist(root: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))
    return root


def test_two_data_folders_give_two_keys_and_a_replaced_file_a_third(tmp_path):
    a, b = _fake_mnist(tmp_path / "a", 0), _fake_mnist(tmp_path / "b", 0)  # identical bytes, other folder
    config = {"dataset": "mnist", "lr": 0.1}
    key_a = RunStore(tmp_path, "s", data_dir=a).run_dir(config)
    key_b = RunStore(tmp_path, "s", data_dir=b).run_dir(config)
    assert key_a != key_b
    assert RunStore(tmp_path, "s", data_dir=a).run_dir(config) == key_a  # stable
    labels = a / "mnist" / "t10k-labels-idx1-ubyte.gz"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    assert RunStore(tmp_path, "s", data_dir=a).run_dir(config) not in (key_a, key_b)
    assert data_fingerprint("digits") is None
    assert RunStore(tmp_path, "s", data_dir=a).run_dir({"dataset": "digits"}) == RunStore(tmp_path, "s").run_dir(
        {"dataset": "digits"}
    )


def test_runs_on_two_data_folders_are_cached_apart(tmp_path):
    a, b = _fake_mnist(tmp_path / "a", 0), _fake_mnist(tmp_path / "b", 1)
    calls = []

    def run(config, ctx):
        calls.append(ctx.data_dir)
        loaded = data_module.load_dataset("mnist", ctx.data_dir)
        return pd.DataFrame({"quantity": ["first_label"], "value": [int(loaded.y_train[0])]})

    study = Study("toy", "toy", lambda scale, ctx: [{"dataset": "mnist"}], run)
    first = run_study(study, "tiny", root=tmp_path / "runs", data_dir=str(a), progress=False)
    second = run_study(study, "tiny", root=tmp_path / "runs", data_dir=str(b), progress=False)
    assert calls == [str(a), str(b)] and first["run"].item() != second["run"].item()
    assert run_study(study, "tiny", root=tmp_path / "runs", data_dir=str(a), progress=False).equals(first)
    assert len(calls) == 2


def mean_output(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A module-level loss: keyed by name and source."""
    return out.mean()


def sum_output(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Another module-level loss."""
    return out.sum()


def _surface_job(tmp_path, **kwargs) -> SurfaceJob:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    data = (torch.randn(12, 4), torch.randint(0, 3, (12,)))
    dirs = [random_direction(model, seed=1), random_direction(model, seed=2)]
    coords = np.stack(np.meshgrid(np.linspace(-1, 1, 3), np.linspace(-1, 1, 3), indexing="ij"), -1).reshape(-1, 2)
    return SurfaceJob(model, data, dirs, coords, chunk_size=2, progress=False, **kwargs)


def test_a_lambda_or_local_loss_is_refused_for_caching(tmp_path):
    def local_loss(out, y):
        return out.mean()

    for fn, what in ((lambda out, y: out.mean(), "lambda"), (local_loss, "local")):
        with pytest.raises(TypeError, match=f"loss_fn=.*{what}.*cannot be cached.*cache_dir=None"):
            _surface_job(tmp_path, loss_fn=fn, cache_dir=tmp_path)
        _surface_job(tmp_path, loss_fn=fn)  # without a cache nothing can be reused: allowed
    with pytest.raises(TypeError, match="accuracy_fn=.*not a plain function"):
        _surface_job(tmp_path, accuracy_fn=nn.MSELoss(), cache_dir=tmp_path)
    with pytest.raises(TypeError, match="other than plain JSON"):
        _surface_job(tmp_path, loss_fn=functools.partial(F.cross_entropy, weight=torch.ones(3)), cache_dir=tmp_path)


def test_module_level_losses_are_keyed_by_name_and_source(tmp_path):
    keys = {
        _surface_job(tmp_path, loss_fn=fn, cache_dir=tmp_path).key
        for fn in (None, mean_output, sum_output, functools.partial(F.cross_entropy, label_smoothing=0.1))
    }
    assert len(keys) == 4
    assert function_key(mean_output) != function_key(sum_output)
    assert function_key(mean_output).startswith(f"{__name__}.mean_output:")
    assert _surface_job(tmp_path, loss_fn=mean_output, cache_dir=tmp_path).key in keys  # stable


# ------------------------------------------------------------------------------------------ surface chunk cache


def _chunks(tmp_path, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        job = _surface_job(tmp_path, cache_dir=tmp_path / "cache", **kwargs)
        loss, acc = job.assemble(job.evaluate())
    return job, loss, acc, [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


def _npz_bytes(**arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _rewrite_record(record_path: Path, data: bytes) -> None:
    """Forge the record's size and hash to match new bytes (leaving its non-finite counts), as a stale tool might."""
    import hashlib

    record = json.loads(record_path.read_text())
    record |= {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    record_path.write_text(json.dumps(record))


CHUNK_DAMAGE = {
    "truncated": lambda p, r: p.write_bytes(p.read_bytes()[:-40]),
    "emptied": lambda p, r: p.write_bytes(b""),
    "binary garbage": lambda p, r: p.write_bytes(os.urandom(300)),
    "missing": lambda p, r: p.unlink(),
    "edited value": lambda p, r: p.write_bytes(
        _npz_bytes(loss=np.load(p)["loss"] + 1e-9, accuracy=np.load(p)["accuracy"])
    ),
    "NaN injected": lambda p, r: p.write_bytes(_npz_bytes(loss=np.full(2, np.nan), accuracy=np.zeros(2))),
    "NaN with a forged hash": lambda p, r: (
        p.write_bytes(data := _npz_bytes(loss=np.array([np.nan, 1.0]), accuracy=np.zeros(2))),
        _rewrite_record(r, data),
    ),
    "wrong shape with a forged hash": lambda p, r: (
        p.write_bytes(data := _npz_bytes(loss=np.zeros(3), accuracy=np.zeros(3))),
        _rewrite_record(r, data),
    ),
    "record garbage": lambda p, r: r.write_bytes(os.urandom(50)),
}


@pytest.mark.parametrize("kind", list(CHUNK_DAMAGE))
def test_a_damaged_chunk_is_detected_named_and_recomputed(tmp_path, kind):
    first, loss, acc, caught = _chunks(tmp_path)
    assert first.computed == list(range(5)) and caught == []
    assert np.isfinite(loss).all()
    chunk = tmp_path / "cache" / first.key / "chunk_000003.npz"
    CHUNK_DAMAGE[kind](chunk, chunk.with_suffix(".json"))
    again, loss2, acc2, caught = _chunks(tmp_path)
    assert again.computed == [3] and again.reused == [0, 1, 2, 4]
    np.testing.assert_array_equal(loss2, loss)
    np.testing.assert_array_equal(acc2, acc)
    named = chunk.with_suffix(".json") if kind == "record garbage" else chunk
    assert len(caught) == 1 and str(named) in caught[0]
    third = _chunks(tmp_path)
    assert third[0].reused == list(range(5)) and third[3] == []


def test_a_chunk_with_a_recorded_non_finite_value_is_reused(tmp_path):
    # a legitimately non-finite loss (a diverged point) is a result, recorded as such, not damage
    first, loss, _, _ = _chunks(tmp_path, loss_fn=log_of_negative)
    assert np.isnan(loss).all()
    again, loss2, _, caught = _chunks(tmp_path, loss_fn=log_of_negative)
    assert again.reused == list(range(5)) and caught == [] and np.isnan(loss2).all()


def log_of_negative(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """NaN at every point."""
    return torch.log(-out.abs().mean() - 1.0)


def test_a_chunk_interrupted_before_its_record_is_recomputed_silently(tmp_path):
    first, loss, _, _ = _chunks(tmp_path)
    (tmp_path / "cache" / first.key / "chunk_000001.json").unlink()  # killed between the chunk and its record
    again, loss2, _, caught = _chunks(tmp_path)
    assert again.computed == [1] and caught == []
    np.testing.assert_array_equal(loss2, loss)


# ---------------------------------------------------------------------------------------- Surface.save / load


def _surface(tmp_path) -> Surface:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    data = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    dirs = [random_direction(model, seed=1), random_direction(model, seed=2)]
    return surface_2d(model, data, dirs, [-1.0, 0.0, 1.0], [0.0, 1.0], progress=False)


def test_surface_save_writes_exactly_the_path_given_and_load_verifies(tmp_path):
    surface = _surface(tmp_path)
    path = tmp_path / "surface.data"  # no .npz suffix: still exactly this path
    surface.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["surface.data"]
    back = Surface.load(path)
    np.testing.assert_array_equal(back.loss, surface.loss)
    assert back.config == surface.config
    raw = path.read_bytes()
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["loss"] = arrays["loss"].copy()
    arrays["loss"][1, 1] += 1e-9  # an edited value, the file otherwise intact
    path.write_bytes(_npz_bytes(**arrays))
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        Surface.load(path)
    for damaged in (raw[: len(raw) // 2], os.urandom(200), b""):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=f"{path}: not a surface file"):
            Surface.load(path)


# --------------------------------------------------------------------------- single-file caches: MNIST-1D, theory


def test_the_mnist1d_cache_is_verified_and_regenerated(tmp_path, monkeypatch):
    import mnist1d.data

    made = []

    def fake_make_dataset(args):
        made.append(1)
        rng = np.random.default_rng(0)
        return {"x": rng.normal(size=(6, 40)), "y": np.arange(6) % 3, "x_test": rng.normal(size=(3, 40)),
                "y_test": np.arange(3)}  # fmt: skip

    monkeypatch.setattr(mnist1d.data, "make_dataset", fake_make_dataset)
    monkeypatch.setenv("VALLEY_CACHE", str(tmp_path))
    first = data_module.load_dataset("mnist1d")
    (cached,) = tmp_path.glob("mnist1d-*.npz")
    assert (tmp_path / f"{cached.name}.meta.json").exists()
    assert torch.equal(data_module.load_dataset("mnist1d").x_train, first.x_train) and made == [1]
    for damage in (lambda: cached.write_bytes(cached.read_bytes()[:500]), lambda: cached.write_bytes(b"\x00" * 64)):
        damage()
        with pytest.warns(CacheWarning, match=str(cached)):
            again = data_module.load_dataset("mnist1d")
        assert torch.equal(again.x_train, first.x_train)
    assert made == [1, 1, 1]


def test_the_theory_table_cache_is_verified_and_recomputed(tmp_path):
    made = []

    def make():
        made.append(1)
        return pd.DataFrame({"id": ["a", "b"], "value": [1.5, 2.5], "passed": [True, False]})

    path = tmp_path / "theory" / "key.csv"
    table, cached = cached_table(path, make)
    assert not cached and made == [1]
    again, cached = cached_table(path, make)
    assert cached and again.equals(table) and made == [1]
    path.write_text(path.read_text().replace("False", "True_"))  # a failing check edited into a pass
    with pytest.warns(CacheWarning, match=str(path)):
        again, cached = cached_table(path, make)
    assert not cached and again["passed"].tolist() == [True, False] and made == [1, 1]
    path.unlink()
    with pytest.warns(CacheWarning, match="missing"):
        cached_table(path, make)
    assert cached_table(path, make, force=True)[1] is False and len(made) == 4


def test_read_verified_without_a_record_is_an_unfinished_entry(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"payload")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_verified(path) is None  # never recorded: not used, nothing to warn about
    write_verified(path, b"payload")
    assert read_verified(path) == b"payload"


# --------------------------------------------------------------------------------------------------- divergence


class _Blowup:
    """A training loss that becomes ``value`` from the ``at``-th training step on (evaluation is left finite)."""

    def __init__(self, at: int, value: float):
        self.at, self.value, self.steps = at, value, 0

    def __call__(self, out, y):
        loss = F.cross_entropy(out, y)
        if not torch.is_grad_enabled():
            return loss
        self.steps += 1
        return loss + (self.value if self.steps >= self.at else 0.0)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_divergence_is_detected_for_inf_minus_inf_and_nan(value):
    g = torch.Generator().manual_seed(0)
    data = data_module.Dataset("toy", torch.randn(40, 5, generator=g), torch.arange(40) % 3,
                               torch.randn(10, 5, generator=g), torch.arange(10) % 3, 3)  # fmt: skip
    result = train(
        lambda: nn.Linear(5, 3),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.0),  # lr 0: the weights stay finite, only the loss is bad
        data,
        epochs=4,
        batch_size=10,
        loss_fn=_Blowup(at=6, value=value),
        progress=False,
    )
    assert result.diverged
    m = result.metrics
    (row,) = m[m["quantity"] == "diverged"].itertuples()
    assert (row.step, row.epoch) == (6, 2)  # 4 steps per epoch: the 6th step is the 2nd of epoch 2
    assert m["epoch"].max() == 2 and m[m["quantity"] == "test_loss"]["epoch"].tolist() == [0, 1]
    bad = m[(m["quantity"] == "train_loss") & (m["step"] == 6)]["value"].item()
    assert math.isnan(bad) if math.isnan(value) else bad == value


# ------------------------------------------------------------------------------------------------- permissions


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def test_written_files_follow_the_umask(tmp_path, umask_027):
    run_study(_study([], artifact=True), "tiny", root=tmp_path / "runs", progress=False)
    job = _surface_job(tmp_path, cache_dir=tmp_path / "cache")
    job.evaluate()
    _surface(tmp_path).save(tmp_path / "s.npz")
    cached_table(tmp_path / "t.csv", lambda: pd.DataFrame({"a": [1]}))
    import matplotlib.pyplot as plt

    from paper_figures._style import save_figure
    from paper_figures.report import FigureOutput, write_report

    images = save_figure(plt.figure(), tmp_path / "out" / "fig", "f")
    write_report([FigureOutput("f", "F", "caption", images)], tmp_path / "out")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 20
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(umask_027)}
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "fig" / "f.pdf").exists()


def test_a_cached_table_reads_back_every_float_bit_for_bit(tmp_path):
    """pandas before 3.0 parses some floats an ulp off unless asked for round-trip parsing: the store asks."""
    values = np.random.default_rng(0).standard_normal(20_000) * 10.0 ** np.arange(-8, 12).repeat(1000)
    made, hit = cached_table(tmp_path / "t.csv", lambda: pd.DataFrame({"v": values}))
    read, hit_again = cached_table(tmp_path / "t.csv", lambda: pytest.fail("recomputed"))
    assert (hit, hit_again) == (False, True)
    assert np.array_equal(read["v"].to_numpy().view(np.int64), values.view(np.int64))


def test_an_uninstalled_source_tree_is_named_as_such(monkeypatch):
    from studies import store

    def absent(name):
        raise store.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(store.metadata, "version", absent)
    assert store.installed_version() == "not installed (run from a source tree)"
