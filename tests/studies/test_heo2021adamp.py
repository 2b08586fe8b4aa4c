import math

import numpy as np
import pytest
import torch

from studies import heo2021adamp as study
from studies.runner import run_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return run_study(study.STUDY, "tiny", root=tmp_path_factory.mktemp("runs"), progress=False)


def test_angles_invert_direction_and_h_is_scale_invariant():
    torch.manual_seed(0)
    for psi, phi in [(-2.0, 2.0), (1.0, 1.0), (0.3, 2.9)]:
        got = study.angles(study.direction(psi, phi))
        assert math.isclose(got[0].item(), psi, abs_tol=1e-12) and math.isclose(got[1].item(), phi, abs_tol=1e-12)
    w = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    h = study.rosenbrock_on_sphere(w)
    (grad,) = torch.autograd.grad(h, w)
    assert abs(float((grad * w.detach()).sum())) < 1e-10 * float(grad.norm() * w.detach().norm())  # ∇h ⊥ w
    assert math.isclose(study.rosenbrock_on_sphere(5.0 * w).item(), h.item(), rel_tol=1e-12)
    psi, phi = study.angles(w.detach())
    assert math.isclose(h.item(), (1 - psi.item()) ** 2 + 100 * (phi.item() - psi.item() ** 2) ** 2, rel_tol=1e-12)


def test_tiny_runs_reproduce_the_papers_radii(tiny):
    runs = tiny[tiny["role"] == "main"]
    assert {"step", "method", "quantity", "value", "lr", "momentum", "weight_decay"} <= set(runs.columns)
    assert np.isfinite(runs["value"]).all()
    r = runs[runs["quantity"] == "r"].pivot_table(index="step", columns="method", values="value")
    assert r.index.max() == 200 and np.allclose(r.loc[0], 1.0)
    assert 2.9 < r["Momentum"].iloc[-1] < 3.4  # paper 3.16
    assert 2.4 < r["Momentum + WD"].max() < 2.7  # paper ≈ 2.53
    assert 1.05 < r["SGDP"].iloc[-1] < 1.2  # paper 1.12
    projected = runs[runs["quantity"] == "projected"]["value"]
    assert len(projected) == 200 and (projected == 1.0).all()  # h is scale invariant, so SGDP always projects
    grid = tiny[tiny["quantity"] == "h_grid"]
    assert len(grid) == 121 * 121 and np.isfinite(grid["value"]).all()
