"""optim.inspect: one row per tensor; update norms equal the step actually taken, for valley and torch classes."""

import math

import pytest
import torch

import optim

# entries whose last update inspect can reconstruct exactly (weight decay is 0 in all of these)
EXACT = [
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "amsgrad",
    "adam_eps",
    "adam2k",
    "radam",
    "radam_paper",
    "adamp",
    "sgdp",
    "expectigrad",
    "adabelief",
    "adam3",
]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)).double()


@pytest.mark.parametrize("foreach", [False, True], ids=["per-tensor", "multi-tensor"])
@pytest.mark.parametrize("name", EXACT)
def test_update_norm_is_the_step_taken(name, foreach):
    """On both paths: torch's multi-tensor Nesterov SGD leaves g + μb in .grad, which inspect must not take for g."""
    model = _model()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    kwargs = {"freeze_steps": 2} if name == "adam2k" else {}
    opt = optim.make(name, model, lr=0.01, foreach=foreach, **kwargs)
    for _ in range(8):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    table = optim.inspect(opt)
    assert len(table) == 4 and list(table["numel"]) == [12, 3, 3, 1]
    # projected steps are recovered from ‖u‖² − ‖radial‖², exact up to the ε/‖θ‖ of θ's normalisation
    rel = 1e-7 if name in ("adamp", "sgdp") else 1e-9
    for row, p, b in zip(table.itertuples(), model.parameters(), before, strict=True):
        actual = torch.linalg.vector_norm(p.detach() - b).item()
        assert row.update_norm == pytest.approx(actual, rel=rel, abs=1e-15)
        assert row.update_ratio == pytest.approx(actual / p.norm().item(), rel=rel, abs=1e-15)
        assert row.step_size_q05 <= row.step_size_q50 <= row.step_size_q95


def test_events_and_unknown_optimizers():
    model = _model()
    opt = optim.make("radam", model)
    model(torch.ones(1, 4, dtype=torch.float64)).sum().backward()
    opt.step()
    table = optim.inspect(opt)
    assert set(table["rectified"]) == {False}
    assert table["rho_t"].iloc[0] == pytest.approx(1.0)
    assert table["r_t"].isna().all()
    adadelta = optim.make("adadelta", model)
    adadelta.step()
    assert optim.inspect(adadelta)["update_norm"].isna().all()  # Adadelta's last step is not recoverable
    fresh = optim.inspect(optim.make("adam", model))
    assert math.isnan(fresh["update_norm"].iloc[0])


def test_adamp_projection_columns():
    w = torch.nn.Parameter(torch.randn(3, 5, dtype=torch.float64))
    opt = optim.AdamP([w], lr=0.1)
    ((w / w.norm(dim=1, keepdim=True))[:, 0]).sum().backward()
    opt.step()
    row = optim.inspect(opt).iloc[0]
    assert row["projection"] == "channel" and row["radial_norm"] > 0
