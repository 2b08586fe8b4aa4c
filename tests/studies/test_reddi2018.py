import numpy as np
import pytest
import torch

from studies import reddi2018 as study
from studies.runner import run_study


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return run_study(study.STUDY, "tiny", root=tmp_path_factory.mktemp("runs"), progress=False)


def test_tiny_frame_is_tidy_and_feasible(tiny):
    assert {"family", "optimizer", "problem", "stream", "step", "quantity", "value"} <= set(tiny.columns)
    assert set(tiny["optimizer"]) == set(study.OPTIMIZERS)
    assert set(tiny["problem"]) == {"online", "stochastic"}
    assert np.isfinite(tiny["value"]).all() and tiny["value"].abs().max() <= 1.0
    assert (tiny[tiny["step"] == 0]["value"] == 0).all()  # x_1 = 0 for every stream


def test_theorem_one_adam_drifts_to_plus_one_and_the_others_to_minus_one(tiny):
    last = tiny[tiny["step"] == tiny["steps"]]
    online = last[last["problem"] == "online"].set_index("optimizer")["value"]
    assert online["Adam (β₁=0, β₂=1/(1+C²))"] > 0.9
    for name in ("Adam", "AMSGrad", "Expectigrad", "SGD"):
        assert online[name] < -0.9
    stochastic = last[last["problem"] == "stochastic"].groupby("optimizer")["value"].mean()
    assert stochastic["Adam (β₁=0, β₂=1/(1+C²))"] > 0.9
    assert (stochastic.drop("Adam (β₁=0, β₂=1/(1+C²))") < -0.5).all()


def test_gradients_follow_the_problem_definition():
    g = torch.cat(list(study.gradients("paper", seeds=200, steps=303, chunk=100)))
    assert g.shape == (303, 201)
    t = torch.arange(1, 304)
    assert torch.equal(g[:, 0], torch.where(t % 101 == 1, 1010.0, -10.0).double())
    assert set(g[:, 1:].unique().tolist()) == {1010.0, -10.0}
    assert abs((g[:, 1:] == 1010.0).double().mean().item() - 0.01) < 0.003  # p = 0.01


@pytest.mark.parametrize("name", list(study.OPTIMIZERS))
def test_stacked_coordinates_equal_separate_runs(name):
    grads = next(study.gradients("theory", seeds=3, steps=50))
    factory = study.OPTIMIZERS[name][1]

    def trajectory(columns):
        x = torch.zeros(len(columns), dtype=torch.float64, requires_grad=True)
        opt = factory([x], 1.0, 3.0)
        out = []
        for t, g in enumerate(grads[:, columns], start=1):
            x.grad = g.clone()
            opt.param_groups[0]["lr"] = 1 / t**0.5
            opt.step()
            with torch.no_grad():
                x.clamp_(-1, 1)
            out.append(x.detach().clone())
        return torch.stack(out)

    stacked = trajectory([0, 1, 2, 3])
    for k in range(4):
        torch.testing.assert_close(stacked[:, k], trajectory([k])[:, 0], rtol=0, atol=0)
