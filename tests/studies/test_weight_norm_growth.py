import numpy as np
import torch

from studies import weight_norm_growth as study
from studies.runner import run_study


def test_tiny_run_logs_norms_and_steps_and_shows_the_growth(tmp_path):
    torch.manual_seed(0)
    frame = run_study(study.STUDY, "tiny", root=tmp_path, progress=False)
    assert {"step", "epoch", "quantity", "value", "param", "scale_invariant", "optimizer"} <= set(frame.columns)
    assert set(frame["optimizer"]) == set(study.OPTIMIZERS)
    for quantity in ("weight_norm", "weight_norm_growth", "effective_step", "effective_lr"):
        # Growth and relative steps of the convolution weights; BatchNorm shifts start at 0 (NaN ratios there).
        values = frame.loc[(frame["quantity"] == quantity) & frame["scale_invariant"], "value"]
        assert len(values) and np.isfinite(values).all(), quantity
    assert np.isfinite(frame.loc[frame["quantity"] == "test_accuracy", "value"]).all()
    conv = frame[(frame["quantity"] == "weight_norm") & frame["scale_invariant"]]
    assert set(conv["param"]) == set(study.scale_invariant_weights(_model()))
    # Plain SGD on a scale-invariant weight: the gradient is orthogonal to w, so ‖w‖ can only grow.
    for _, norms in conv[conv["optimizer"] == "SGD"].groupby("param"):
        assert (np.diff(norms.sort_values("step")["value"].to_numpy()) >= -1e-6 * norms["value"].max()).all()
    growth = frame[(frame["quantity"] == "weight_norm_growth") & frame["scale_invariant"]]
    final = growth[growth["step"] == growth["step"].max()].groupby("optimizer")["value"].mean()
    # Heo et al. 2021: momentum grows the norms faster than SGD; projection (SGDP, AdamP) slows the growth.
    assert final["Momentum"] > final["SGD"] and final["Momentum"] > final["SGDP"] and final["Adam"] > final["AdamP"]


def _model():
    return study.make_model("resnet", (1, 8, 8), 10, blocks=1, widths=(4, 8, 8))
