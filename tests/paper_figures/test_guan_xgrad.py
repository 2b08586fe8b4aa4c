import numpy as np
import pandas as pd
import pytest

from paper_figures import guan_xgrad as figure
from studies import guan_xgrad as study
from studies.runner import run_study


def test_figure_draws_tiny_results_with_the_paper_overheads(tmp_path):
    run_study(study.STUDY, "tiny", root=tmp_path / "runs", progress=False)
    frame = figure.load_data(tmp_path / "runs", "tiny")
    output = figure.make_figure(frame, tmp_path / "out")
    for ext in ("png", "pdf"):
        assert (tmp_path / "out" / f"xgrad.{ext}").stat().st_size > 1000
    accuracy = output.tables["best_accuracy"]
    assert list(accuracy.columns) == ["base", "base (s=0)", "s=1"]
    assert np.isfinite(accuracy[["base (s=0)", "s=1"]].to_numpy()).all()
    overhead = output.tables["overhead"].set_index("base")
    assert overhead.loc["SGDM", "paper time %"] == 5.67 and overhead.loc["Adam", "paper memory %"] == 5.0
    assert (overhead["peak memory %"] > 0).all()
    assert figure.REPORTED == study.REPORTED_OVERHEAD
    assert (tmp_path / "out" / "overhead.csv").exists() and "LeNet-5 on digits" in output.caption


def test_load_data_names_missing_columns(tmp_path):
    (tmp_path / figure.STUDY).mkdir()
    pd.DataFrame({"epoch": [0], "value": [1.0]}).to_csv(tmp_path / figure.STUDY / "tiny.csv", index=False)
    with pytest.raises(ValueError, match="base"):
        figure.load_data(tmp_path, "tiny")


def _synthetic_frame():
    """Two seeds of Adam and SGDM with s in {0, 1}: known best accuracies and epoch times."""
    rows = []
    best = {("Adam", 0, 0): 0.90, ("Adam", 1, 0): 0.91, ("Adam", 0, 1): 0.92, ("Adam", 1, 1): 0.925}
    best |= {("SGDM", 0, 0): 0.80, ("SGDM", 1, 0): 0.79, ("SGDM", 0, 1): 0.81, ("SGDM", 1, 1): 0.81}
    for (base, s, seed), acc in best.items():
        run = f"{base}-{s}-{seed}"
        for epoch, (accuracy, seconds) in enumerate([(acc - 0.1, 9.0), (acc, 2.0 + s), (acc - 0.01, 2.5 + s)]):
            quantities = [("test_accuracy", accuracy), ("seconds", seconds)]
            if epoch:  # three steps per epoch, each 10 ms of CPU time without and 12 ms with prediction
                quantities += [("train_loss", 1.0)] * 3 + [("cpu_seconds_per_step", 0.010 + 0.002 * s)]
            for quantity, value in quantities:
                rows.append(dict(base=base, steps=s, seed=seed, epoch=epoch, quantity=quantity, value=value, run=run))
    return pd.DataFrame(rows)


def test_paper_comparison_from_the_runs(tmp_path):
    table = figure.paper_comparison(_synthetic_frame()).set_index("base")
    # Adam: gains 1.0 and 0.5 points -> mean 0.75, half-range 0.25; SGDM: -1.0 and 0.0 -> -0.5, 0.5.
    assert table.loc["Adam", "gain (points)"] == pytest.approx(0.75)
    assert table.loc["Adam", "gain spread (points)"] == pytest.approx(0.25)
    assert table.loc["SGDM", "gain (points)"] == pytest.approx(-0.5)
    assert table.loc["Adam", "best accuracy s=0 (%)"] == pytest.approx(91.0)
    # the fastest epoch after the first: 2 s without, 3 s with prediction -> +50 %.
    assert table.loc["Adam", "time overhead %"] == pytest.approx(50.0)
    assert table.loc["Adam", "paper gain (points)"] == 0.71 and np.isnan(table.loc["SGDM", "paper gain (points)"])
    assert table.loc["SGDM", "paper time %"] == 5.67 and table.loc["Adam", "seeds"] == 2
    assert table.loc["Adam", "spread s=0"] == pytest.approx(1.0)
    assert table.loc["Adam", "spread s=1"] == pytest.approx(0.75)
    assert table.loc["Adam", "CPU s/epoch s=0"] == pytest.approx(0.030)
    assert table.loc["Adam", "CPU time overhead %"] == pytest.approx(20.0)
    assert table.loc["Adam", "verdict"] == "agrees: prediction helps" and table.loc["SGDM", "verdict"] == ""


def test_verdict_against_the_papers_gain():
    assert figure.verdict(-0.8, 0.3, 0.71, 2) == "contradicts: prediction hurts"
    assert figure.verdict(0.2, 0.3, 0.71, 2) == "inconclusive: within the seeds' spread"
    assert figure.verdict(0.5, 0.3, 0.71, 2) == "agrees: prediction helps"
    assert figure.verdict(0.2, 0.0, 0.71, 1) == "agrees: prediction helps (one seed: no spread)"


def test_side_by_side_joins_the_committed_reference():
    from paper_figures.reference import side_by_side

    here = figure.paper_comparison(_synthetic_frame())
    args = ("base", ["paper gain (points)"], ["gain (points)"], "quick")
    assert list(side_by_side(here, None, *args).columns) == ["base", "paper gain (points)", "gain (points) [quick]"]
    reference = here.assign(runs=8)
    reference["gain (points)"] = [2.0, 3.0]
    table = side_by_side(here, reference, *args).set_index("base")
    assert table.loc["Adam", "gain (points) [quick]"] == pytest.approx(0.75)
    assert table.loc["Adam", "gain (points) [paper scale]"] == 2.0 and table.loc["Adam", "paper gain (points)"] == 0.71


def test_reference_table_is_written_with_provenance(tmp_path, monkeypatch):
    from paper_figures import reference

    runs = tmp_path / "runs" / figure.STUDY
    runs.mkdir(parents=True)
    frame = _synthetic_frame().assign(dataset="fashion_mnist", epochs=3)
    frame.to_csv(runs / "paper.csv", index=False)
    for run in frame["run"].unique():
        (runs / run).mkdir()
        (runs / run / "meta.json").write_text('{"environment": {"device": "cpu"}, "seconds": 100.0}')
    monkeypatch.setattr(reference, "REFERENCE_DIR", tmp_path / "reference")
    assert reference.main([figure.STUDY, "--runs-dir", str(tmp_path / "runs")]) == 0
    table = reference.read_reference(figure.STUDY)
    assert set(reference.PROVENANCE) <= set(table.columns)
    assert table["runs"].iloc[0] == 8 and table["device"].iloc[0] == "cpu" and table["scale"].iloc[0] == "paper"
    assert table["run_seconds"].iloc[0] == 800
    assert table.set_index("base").loc["Adam", "gain (points)"] == pytest.approx(0.75)
    command = "torchrun --nproc-per-node 2 -m studies.cli study guan_xgrad --paper"
    assert reference.main([figure.STUDY, "--runs-dir", str(tmp_path / "runs"), "--command", command]) == 0
    assert reference.read_reference(figure.STUDY)["command"].iloc[0] == command
    assert reference.main(["kingma2015adam", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert reference.main(["no_such_study", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert reference.main([figure.STUDY, "--runs-dir", str(tmp_path / "absent")]) == 2
