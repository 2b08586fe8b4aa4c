import numpy as np
import pytest
import torch

from studies import checkpoint_distance as study
from studies.runner import run_study


def test_error_moments_against_loops_and_the_ensemble_formula():
    torch.manual_seed(0)
    k, n, classes = 4, 7, 3
    probs = torch.softmax(torch.randn(k, n, classes, dtype=torch.float64), -1)
    y = torch.randint(0, classes, (n,))
    got = study.error_moments(probs, y)
    onehot = np.eye(classes)[y.numpy()]
    e = [probs[i].numpy() - onehot for i in range(k)]
    v = np.mean([np.mean(np.sum(e[i] ** 2, 1)) for i in range(k)])
    c = np.mean([np.mean(np.sum(e[i] * e[j], 1)) for i in range(k) for j in range(k) if i != j])
    assert got["v"] == pytest.approx(v, rel=1e-12) and got["c"] == pytest.approx(c, rel=1e-12)
    assert got["ensemble_error"] == pytest.approx(v / k + (k - 1) * c / k, rel=1e-12)
    assert got["c_over_v"] == pytest.approx(c / v, rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        study.error_moments(probs[:1], y)


def test_tiny_run_distances_restarts_and_ensembles(tmp_path):
    torch.manual_seed(0)
    frame = run_study(study.STUDY, "tiny", root=tmp_path, progress=False)
    assert {"label", "method", "checkpoint", "snapshot", "sigma", "strength"} <= set(frame.columns)
    assert set(frame["method"]) == {"plain", "restarts", "repulsion"}
    warmup, epochs = 1, 3
    # Same seed and initialisation: every method follows one trajectory until the checkpoint is taken.
    early = frame[(frame["quantity"] == "test_loss") & (frame["epoch"] <= warmup)]
    assert early.groupby("epoch")["value"].nunique().eq(1).all()
    for quantity in ("distance", "kernel", "snapshot_accuracy", "ensemble_accuracy", "v", "c", "c_over_v"):
        values = frame.loc[frame["quantity"] == quantity, "value"]
        assert len(values) and np.isfinite(values).all(), quantity
    assert set(frame.loc[frame["quantity"] == "distance", "checkpoint"]) == {"epoch1", "epoch2"}
    lr = frame[(frame["label"] == "restarts") & (frame["quantity"] == "lr")]
    steps_per_epoch, cycle_steps = 2, 2  # 256 examples in batches of 128, cycles of one epoch
    t_cur = (lr["step"] - warmup * steps_per_epoch) % cycle_steps  # the lr logged after a step is the next one's
    expected = 0.5 * study.LR * (1 + np.cos(np.pi * t_cur / cycle_steps))
    assert len(lr) == (epochs - warmup) * steps_per_epoch
    np.testing.assert_allclose(lr["value"], expected, rtol=1e-12)
    last = frame[(frame["quantity"] == "distance") & (frame["checkpoint"] == "epoch1")]
    final = last.loc[last.groupby("label")["step"].idxmax()].set_index("label")["value"]
    assert final["repulsion σ=1 s=1"] > final["plain"]  # pushed away from the checkpoint
    snaps = frame[frame["quantity"] == "snapshot_accuracy"].groupby("label").size()
    assert (snaps == epochs - warmup).all()
    penalty = frame[frame["quantity"] == "regularizer"]
    assert set(penalty["label"]) == {"repulsion σ=1 s=1"}  # the repulsion is the regulariser, logged apart
    assert (penalty.loc[penalty["epoch"] <= warmup, "value"] == 0).all()  # no checkpoint yet
    assert (penalty.loc[penalty["epoch"] > warmup, "value"] > 0).all()
