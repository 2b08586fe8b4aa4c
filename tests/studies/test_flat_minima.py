import numpy as np
import pytest
import torch

from studies import flat_minima as study
from studies.runner import Context, run_study
from studies.store import RunStore


@pytest.fixture(scope="module")
def frame(tmp_path_factory):
    """The tiny study, single-threaded (small tensors: one intra-op thread is faster on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        yield run_study(study.STUDY, "tiny", root=tmp_path_factory.mktemp("runs"), progress=False)
    finally:
        torch.set_num_threads(threads)


def _summary(frame):
    rows = frame[frame["analysis"] == "summary"]
    return rows.pivot_table(index="solution", columns="quantity", values="value", aggfunc="first")


def test_tiny_run_has_every_analysis_with_finite_values(frame):
    assert {"analysis", "quantity", "value", "solution", "seed", "alpha", "beta", "split", "scale"} <= set(
        frame.columns
    )
    expected = {"training", "summary", "eigenvalue", "spectrum", "surface", "interpolation", "dinh", "trajectory"}
    assert set(frame["analysis"]) == expected
    assert "diverged" not in set(frame["quantity"])
    for analysis in expected - {"training"}:
        assert np.isfinite(frame.loc[frame["analysis"] == analysis, "value"]).all(), analysis
    summary = _summary(frame)
    assert list(summary.index.sort_values()) == sorted(study.SOLUTIONS)
    np.testing.assert_allclose(summary["loss_gap"], summary["test_loss"] - summary["train_loss"], rtol=1e-12)
    assert (summary["lambda_max"] > 0).all() and (summary["hessian_trace"] > 0).all()
    grid_points = study._SCALES["tiny"]["grid_points"]
    assert (frame[frame["analysis"] == "surface"].groupby(["solution", "quantity"]).size() == grid_points**2).all()


def test_curves_agree_with_the_solutions_they_join(frame):
    """Independent evaluations of one point agree: interpolation ends and surface centre = the solution's loss."""
    summary = _summary(frame)
    curves = frame[(frame["analysis"] == "interpolation") & (frame["quantity"] == "loss")]
    for (a, b), pair in curves.groupby(["from_solution", "to_solution"]):
        for split in ("train", "test"):
            line = pair[pair["split"] == split].set_index("alpha")["value"]
            assert line.index.min() == -1.0 and line.index.max() == 2.0
            np.testing.assert_allclose(line.loc[0.0], summary.loc[a, f"{split}_loss"], rtol=1e-5)
            np.testing.assert_allclose(line.loc[1.0], summary.loc[b, f"{split}_loss"], rtol=1e-5)
    surface = frame[(frame["analysis"] == "surface") & (frame["quantity"] == "loss")]
    centre = surface[(surface["alpha"] == 0.0) & (surface["beta"] == 0.0)].set_index("solution")["value"]
    np.testing.assert_allclose(centre.sort_index(), summary["train_loss"].sort_index(), rtol=1e-5)


def test_dinh_rescaling_keeps_the_losses_and_changes_the_curvature(frame):
    dinh = frame[frame["analysis"] == "dinh"].pivot_table(index="scale", columns="quantity", values="value")
    assert list(dinh.index) == study._SCALES["tiny"]["dinh_scales"]
    for quantity in ("train_loss", "test_loss", "test_accuracy"):
        np.testing.assert_allclose(dinh[quantity], dinh[quantity].loc[1.0], rtol=1e-5)
    summary = _summary(frame)
    np.testing.assert_allclose(dinh.loc[1.0, "lambda_max"], summary.loc["SB SGD", "lambda_max"], rtol=1e-6)
    assert dinh.loc[2.0, "lambda_max"] > 1.2 * dinh.loc[1.0, "lambda_max"]
    assert dinh.loc[0.5, "lambda_max"] > 1.2 * dinh.loc[1.0, "lambda_max"]


def test_trajectory_has_lambda_max_and_losses_at_every_snapshot(frame):
    trajectory = frame[frame["analysis"] == "trajectory"]
    scale = study._SCALES["tiny"]
    for name, (_, regime) in study.SOLUTIONS.items():
        epochs = scale["sb_epochs"] if regime == "small" else scale["lb_epochs"]
        rows = trajectory[trajectory["solution"] == name]
        assert sorted(rows["epoch"].unique()) == study.snapshot_epochs(epochs)
        assert set(rows["quantity"]) >= {"train_loss", "test_loss", "lambda_max"}
    # The first snapshot is early in training: a higher training loss than the solution's.
    losses = trajectory[trajectory["quantity"] == "train_loss"].sort_values("epoch")
    first = losses.groupby("solution")["value"].first()
    assert (first > _summary(frame)["train_loss"].loc[first.index]).all()


def test_large_batch_is_a_tenth_of_the_training_set(frame):
    batches = frame[frame["analysis"] == "training"].groupby("solution")["batch_size"].first()
    n_train = study._SCALES["tiny"]["n_train"]
    assert batches["LB SGD"] == round(study.LB_FRACTION * n_train)
    assert batches["SB SGD"] == batches["SB SAM"] == study._SCALES["tiny"]["sb_batch"]


def test_grid_falls_back_to_mnist1d_without_mnist(tmp_path):
    ctx = Context(RunStore(tmp_path, study.STUDY.name), data_dir=str(tmp_path / "no-data"), progress=False)
    configs = study.grid("full", ctx)
    assert len(ctx.notes) == 1 and "mnist" in ctx.notes[0].lower()
    assert {c["dataset"] for c in configs} == {"mnist1d"} and {c["sb_batch"] for c in configs} == {64}
    per_seed = len(study.SOLUTIONS) + len(study.PAIRS) + 1
    assert len(configs) == per_seed * len(study._SCALES["full"]["seeds"])
    assert {c["analysis"] for c in configs} == {"solution", "interpolation", "dinh"}


def test_paper_grid_needs_fashion_mnist_and_measures_on_a_probe_subset(tmp_path, monkeypatch):
    ctx = Context(RunStore(tmp_path, study.STUDY.name), data_dir=str(tmp_path / "no-data"), progress=False)
    monkeypatch.setenv("VALLEY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="fashion_mnist not found"):
        study.grid("paper", ctx)
    setup = study._SCALES["paper"]
    assert (setup["dataset"], setup["widths"], setup["sb_batch"], setup["n_measure"]) == (
        "fashion_mnist",
        [512, 512],
        256,
        5000,
    )
    assert len(setup["seeds"]) >= 2


def test_probe_subset_is_what_the_measures_see(tmp_path):
    ctx = Context(RunStore(tmp_path, study.STUDY.name), progress=False)
    config = dict(study._SCALES["tiny"], seed=0, analysis="dinh", solution="SB SGD", dinh_scales=[1.0])
    config |= {"n_train": 128, "sb_epochs": 2, "widths": [8]}
    config.pop("seeds")
    whole = study.run(config, ctx).set_index("quantity")["value"]
    probe = study.run(dict(config, n_measure=16), ctx).set_index("quantity")["value"]
    assert whole["train_loss"] == probe["train_loss"]  # losses always on the whole split
    assert whole["lambda_max"] != pytest.approx(probe["lambda_max"], rel=1e-3)
    assert whole["epsilon_sharpness_0.001"] != probe["epsilon_sharpness_0.001"]
