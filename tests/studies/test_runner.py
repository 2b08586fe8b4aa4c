import json

import pandas as pd
import pytest

from studies.runner import Context, Study, run_study
from studies.store import RunStore, config_hash
from studies.train import amp_default


def _counting_study(calls, fail_on=None):
    def grid(scale, ctx):
        ctx.note(f"grid at {scale}")
        return [{"x": i} for i in range(4)]

    def run(config, ctx):
        if config["x"] == fail_on:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(config["x"])
        return pd.DataFrame({"quantity": ["square"], "value": [config["x"] ** 2]})

    return Study(name="toy", title="toy", grid=grid, run=run)


def test_interrupted_study_resumes_without_recomputing(tmp_path):
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_study(_counting_study(calls, fail_on=2), "tiny", root=tmp_path, progress=False)
    assert calls == [0, 1]
    frame = run_study(_counting_study(calls), "tiny", root=tmp_path, progress=False)
    assert calls == [0, 1, 3, 2] or calls == [0, 1, 2, 3]
    assert sorted(calls[2:]) == [2, 3]
    assert frame.sort_values("x")["value"].tolist() == [0, 1, 4, 9]
    assert (tmp_path / "toy" / "tiny.csv").exists()
    assert (tmp_path / "toy" / "tiny.notes.txt").read_text() == "grid at tiny\n"
    run_study(_counting_study(calls), "tiny", root=tmp_path, progress=False)
    assert len(calls) == 4  # everything cached
    run_study(_counting_study(calls), "tiny", root=tmp_path, progress=False, force=True)
    assert len(calls) == 8


def test_each_run_records_config_and_environment(tmp_path):
    run_study(_counting_study([]), "tiny", root=tmp_path, progress=False)
    store = RunStore(tmp_path, "toy")
    meta = json.loads((store.run_dir({"x": 3}) / "meta.json").read_text())
    assert meta["config"] == {"x": 3}
    assert {"torch", "numpy", "python", "device"} <= set(meta["environment"])


def test_unfinished_run_folder_is_not_a_cache_hit(tmp_path):
    store = RunStore(tmp_path, "toy")
    (store.run_dir({"x": 1})).mkdir(parents=True)
    (store.run_dir({"x": 1}) / "metrics.csv").write_text("quantity,value\n")
    assert store.load({"x": 1}) is None


def test_config_hash_depends_on_content_and_version():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert config_hash({"a": 1}, "1") != config_hash({"a": 1}, "2")


def test_bad_scale_and_device(tmp_path):
    with pytest.raises(ValueError, match="'huge'"):
        run_study(_counting_study([]), "huge", root=tmp_path)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda'"):
            run_study(_counting_study([]), "tiny", root=tmp_path, device="cuda")


def test_amp_reaches_the_runs_and_is_cached_apart(tmp_path):
    def run(config, ctx):
        return pd.DataFrame({"quantity": ["amp"], "value": [float(amp_default() and ctx.amp)]})

    study = Study(name="toy", title="toy", grid=lambda scale, ctx: [{"x": 0}], run=run)
    full = run_study(study, "tiny", root=tmp_path, progress=False)
    mixed = run_study(study, "tiny", root=tmp_path, progress=False, amp=True)
    assert full["value"].tolist() == [0.0] and mixed["value"].tolist() == [1.0]
    assert full["run"].item() == RunStore(tmp_path, "toy").run_dir({"x": 0}).name  # fp32 keys unchanged
    assert mixed["run"].item() != full["run"].item()
    assert "bfloat16 autocast" in (tmp_path / "toy" / "tiny.notes.txt").read_text()
    assert run_study(study, "tiny", root=tmp_path, progress=False)["value"].tolist() == [0.0]  # no shared entry
    assert (tmp_path / "toy" / "tiny.notes.txt").read_text() == ""  # the last run (fp32) wrote the notes


def test_dataset_or_digits_falls_back_with_a_note_naming_the_files(tmp_path):
    ctx = Context(RunStore(tmp_path, "s"), data_dir=str(tmp_path / "no-data"), progress=False)
    assert ctx.dataset_or_digits("digits", "demo") == "digits" and ctx.notes == []
    assert ctx.dataset_or_digits("mnist", "demo") == "digits"
    (note,) = ctx.notes
    assert note.startswith("The demo runs use the embedded digits data instead of mnist.")
    assert "train-images-idx3-ubyte.gz" in note


def test_a_scale_the_study_does_not_define_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'paper' for toy; choose one of tiny, quick, full"):
        run_study(_counting_study([]), "paper", root=tmp_path)
