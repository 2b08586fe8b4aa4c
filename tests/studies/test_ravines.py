import numpy as np
import pytest
import torch

from studies import ravines as study
from studies.runner import run_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return run_study(study.STUDY, "tiny", root=tmp_path_factory.mktemp("runs"), progress=False)


def test_problems_share_the_spectrum_and_the_minimum():
    torch.manual_seed(0)
    for problem in ("aligned", "rotated"):
        eig = torch.linalg.eigvalsh(study.hessian(problem))
        torch.testing.assert_close(eig, torch.tensor([1.0, 100.0], dtype=torch.float64))
        full, _ = study.losses(problem)
        theta = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
        assert full(theta).item() == 0.0
        (g,) = torch.autograd.grad(full(theta + torch.tensor([0.3, -0.2], dtype=torch.float64)), theta)
        torch.testing.assert_close(g, study.hessian(problem) @ torch.tensor([0.3, -0.2], dtype=torch.float64))
    x, y = study.sparse_data()
    active = (x[:, 1] != 0).double().mean().item()
    assert 0.005 < active < 0.02  # the rare feature is nonzero in about 1% of the rows
    second_moment = (x.T @ x / len(y)).diagonal()
    assert 80 < second_moment[0] < 120 and 0.5 < second_moment[1] < 1.6


def test_tiny_runs_are_tidy_and_show_the_rotation_effect(tiny):
    runs = tiny[tiny["role"] == "run"]
    assert set(runs["optimizer"]) == set(study.OPTIMIZERS) and set(runs["problem"]) == set(study.PROBLEMS)
    assert {"theta1", "theta2", "loss", "grad1", "grad2", "delta1", "delta2"} <= set(runs["quantity"])
    assert np.isfinite(runs["value"]).all()
    wide = runs.pivot_table(index=["problem", "optimizer", "step"], columns="quantity", values="value")
    first = wide.xs(0, level="step")["loss"]
    last = wide.groupby(level=[0, 1]).tail(1).droplevel("step")["loss"]
    assert (last < first).all()  # every method makes progress on every problem
    # Per-coordinate scaling undoes an axis-aligned ravine but not a rotated one.
    for name in ("Adagrad", "RMSprop"):
        assert last[("aligned", name)] < 1e-3 < last[("rotated", name)]
    grid = tiny[tiny["role"] == "contour"]
    assert len(grid) == 3 * 81 * 81 and np.isfinite(grid["value"]).all()
