import numpy as np
import pytest
import torch

from studies import cohen2021eos as study
from studies.catalog import get
from studies.runner import run_study


def test_tiny_run_tracks_sharpness_and_thresholds(tmp_path):
    frame = run_study(get("cohen2021eos"), "tiny", root=tmp_path, progress=False)
    runs = study._SCALES["tiny"]["runs"]
    assert frame["run"].nunique() == len(runs)
    for optimizer, loss, lr in runs:
        run = frame[(frame["optimizer"] == optimizer) & (frame["loss"] == loss) & (frame["lr"] == lr)]
        thresholds = run.loc[run["quantity"] == "stability_threshold", "value"]
        expected = {"GD": 2 / lr, "Momentum": 3.8 / lr, "Adam": 38 / lr}[optimizer]
        assert list(run.loc[run["quantity"] == "sharpness", "step"]) == [10, 20, 30, 40]
        assert np.allclose(thresholds, expected, rtol=1e-12)
        relevant = "preconditioned_sharpness" if optimizer == "Adam" else "sharpness"
        sharp = run[run["quantity"] == relevant].set_index("step")["value"]
        ratio = run[run["quantity"] == "sharpness_ratio"].set_index("step")["value"]
        assert np.allclose(ratio, sharp / expected, rtol=1e-12)
        assert (run["quantity"] == "preconditioned_sharpness").any() == (optimizer == "Adam")
        # Full batch: the probe loss at step t is the training loss of step t + 1 (same weights, same data).
        probe = run[run["quantity"] == "probe_loss"].set_index("step")["value"]
        train = run[run["quantity"] == "train_loss"].set_index("step")["value"]
        assert np.allclose(probe.loc[[10, 20, 30]].to_numpy(), train.loc[[11, 21, 31]].to_numpy(), rtol=1e-5)
    starts = frame.loc[frame["quantity"] == "lanczos_products", "start"]
    assert {"cold", "warm"} <= set(starts)


def test_half_squared_error_and_model():
    outputs = torch.tensor([[0.5, 0.0, 1.0], [0.0, 2.0, 0.0]])
    labels = torch.tensor([0, 1])
    # ((0.5-1)² + 0 + 1²)/2 = 0.625 and (0 + (2-1)² + 0)/2 = 0.5, mean 0.5625
    assert float(study.half_squared_error(outputs, labels)) == pytest.approx(0.5625)
    model = study.tanh_mlp((4,), 3, [5, 6])
    assert sum(isinstance(m, torch.nn.Tanh) for m in model) == 2
    with pytest.raises(ValueError, match="Unknown optimizer"):
        study.make_optimizer("SAM", model, 0.1)
