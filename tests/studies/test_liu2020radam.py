import numpy as np
import pytest
import torch

from studies import liu2020radam as study
from studies.runner import run_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return run_study(study.STUDY, "tiny", root=tmp_path_factory.mktemp("runs"), progress=False)


def test_theory_data_of_figures_8_and_9(tiny):
    fig8 = tiny[tiny["figure"] == "fig8"]
    assert set(fig8["quantity"]) == {"exact", "first_order", "difference"} and np.isfinite(fig8["value"]).all()
    fig9 = tiny[tiny["figure"] == "fig9"]
    rectified = fig9[fig9["quantity"] == "rectified"]
    assert rectified["step"].min() == 5  # r_t exists once rho_t > 4 (Algorithm 2)
    adam = fig9[fig9["quantity"] == "adam"].set_index("step")["value"]
    assert (rectified.set_index("step")["value"] < adam.loc[rectified["step"]]).all()


def test_training_runs_and_gradient_histograms(tiny):
    runs = tiny[tiny["kind"] == "train"]
    assert set(runs["optimizer"]) == set(study.OPTIMIZERS)
    losses = runs[runs["quantity"] == "train_loss"]["value"]
    assert len(losses) > 0 and np.isfinite(losses).all()
    hist = runs[runs["quantity"] == "grad_hist"]
    assert sorted(hist["step"].unique()) == [1, 2, 3, 4]  # 512 examples / 128 = 4 updates, all recorded
    sums = hist.groupby(["optimizer", "step"])["value"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=1e-12)
    # Adam-2k (k = 8 at tiny) only moves v during the 4 updates, so the weights and the test loss stay put.
    test_loss = runs[runs["quantity"] == "test_loss"].pivot_table(index="epoch", columns="optimizer", values="value")
    assert test_loss.loc[1, "Adam-2k"] == test_loss.loc[0, "Adam-2k"]
    assert (test_loss.loc[1].drop("Adam-2k") != test_loss.loc[0].drop("Adam-2k")).all()


def test_make_optimizer_builds_each_control():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.ones(3))
    for name in study.OPTIMIZERS:
        optimizer, scheduler = study.make_optimizer(name, [w], 0.1, warmup=4)
        assert (scheduler is not None) == (name == "Adam + warmup")
        if scheduler is not None:
            assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 4)
    assert study.make_optimizer("Adam-eps", [w], 0.1, 4)[0].param_groups[0]["eps"] == 1e-4
    with pytest.raises(ValueError, match="Unknown optimizer"):
        study.make_optimizer("Adamax", [w], 0.1, 4)
