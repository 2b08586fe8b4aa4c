import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest
import torch

from landscape.trajectory import CheckpointDistances, EffectiveStepSize, GradientNorm, WeightNorms, log_steps


@dataclass
class State:
    model: torch.nn.Module
    optimizer: Any
    step: int = 0
    epoch: int = 0
    loss: float = math.nan
    rows: list[dict[str, Any]] = field(default_factory=list)

    def log(self, quantity: str, value: float, **keys: Any) -> None:
        self.rows.append({"step": self.step, "epoch": self.epoch, "quantity": quantity, "value": value, **keys})


def train(callbacks, epochs=2, steps_per_epoch=2, lr=0.1):
    """SGD on L = |theta|^2 / 2 for a Linear(2, 1) with w = (3, 4), b = 12: theta_t = 0.9^t theta_0."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0]]))
        model.bias.fill_(12.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    state = State(model, optimizer)
    for c in callbacks:
        getattr(c, "on_train_begin", lambda s: None)(state)
    for epoch in range(1, epochs + 1):
        state.epoch = epoch
        for _ in range(steps_per_epoch):
            optimizer.zero_grad()
            loss = sum((p**2).sum() for p in model.parameters()) / 2
            loss.backward()
            optimizer.step()
            state.step += 1
            state.loss = loss.item()
            for c in callbacks:
                getattr(c, "on_step_end", lambda s: None)(state)
        for c in callbacks:
            getattr(c, "on_epoch_end", lambda s: None)(state)
    for c in callbacks:
        getattr(c, "on_train_end", lambda s: None)(state)
    return pd.DataFrame(state.rows)


def values(frame, quantity, **keys):
    rows = frame[frame.quantity == quantity]
    for key, value in keys.items():
        rows = rows[rows[key] == value]
    return dict(zip(rows.step, rows.value, strict=True))


def test_weight_norms_and_growth():
    frame = train([WeightNorms(every=1)])
    norms = values(frame, "weight_norm", param="all")
    assert norms == pytest.approx({t: 13 * 0.9**t for t in range(5)}, rel=1e-12)
    assert values(frame, "weight_norm", param="weight") == pytest.approx({t: 5 * 0.9**t for t in range(5)}, rel=1e-12)
    assert values(frame, "weight_norm_growth", param="bias") == pytest.approx({t: 0.9**t for t in range(5)}, rel=1e-12)
    assert set(frame.columns) == {"step", "epoch", "quantity", "value", "param"}


def test_effective_step_size_and_scale_invariant_lr_on_schedule():
    frame = train([EffectiveStepSize(every=2, scale_invariant=["weight"])])
    assert values(frame, "effective_step", param="all") == pytest.approx({2: 0.1, 4: 0.1}, rel=1e-12)
    assert values(frame, "effective_step", param="bias") == pytest.approx({2: 0.1, 4: 0.1}, rel=1e-12)
    expected = {t: 0.1 / (25 * 0.81**t) for t in (2, 4)}
    assert values(frame, "effective_lr", param="weight") == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="scale_invariant"):
        train([EffectiveStepSize(scale_invariant=["nope"])])


def test_checkpoint_distances_from_initial_and_epoch_checkpoints():
    measure = CheckpointDistances(every=None, at=[1, 3, 4], at_epochs=(0, 1), sigma=2.0)
    frame = train([measure])
    assert set(measure.checkpoints) == {"epoch0", "epoch1"}
    distance = values(frame, "distance", checkpoint="epoch0")
    assert distance == pytest.approx({t: 13 * (1 - 0.9**t) for t in (1, 3, 4)}, rel=1e-12)
    relative = values(frame, "relative_distance", checkpoint="epoch0")
    assert relative == pytest.approx({t: 1 - 0.9**t for t in (1, 3, 4)}, rel=1e-12)
    assert values(frame, "cosine", checkpoint="epoch0") == pytest.approx({1: 1.0, 3: 1.0, 4: 1.0}, rel=1e-12)
    kernel = values(frame, "kernel", checkpoint="epoch0")
    assert kernel == pytest.approx({t: math.exp(-((13 * (1 - 0.9**t)) ** 2) / 8) for t in (1, 3, 4)}, rel=1e-12)
    # the epoch-1 checkpoint (theta_2) is measured from step 3 on
    assert values(frame, "distance", checkpoint="epoch1") == pytest.approx({3: 13 * 0.81 * 0.1, 4: 13 * 0.81 * 0.19})


def test_checkpoint_distance_cosine_for_orthogonal_weights():
    model = torch.nn.Linear(2, 1, bias=False)
    measure = CheckpointDistances(every=1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0]]))
    measure.add(model, "a")
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0, 2.0]]))
    d = measure.distances(model)["a"]
    assert d == pytest.approx(
        {"distance": math.sqrt(5), "relative_distance": math.sqrt(5), "cosine": 0.0, "kernel": math.exp(-2.5)}
    )
    with pytest.raises(ValueError, match="already used"):
        measure.add(model, "a")


def test_gradient_norm_with_log_spaced_schedule():
    frame = train([GradientNorm(at=log_steps(4, per_decade=4), every=None, per_param=True)], epochs=2)
    assert log_steps(4, per_decade=4) == [1, 2, 3, 4]
    assert values(frame, "grad_norm", param="all") == pytest.approx({t: 13 * 0.9 ** (t - 1) for t in range(1, 5)})
    assert values(frame, "grad_norm", param="bias") == pytest.approx({t: 12 * 0.9 ** (t - 1) for t in range(1, 5)})


def test_schedule_validation():
    with pytest.raises(ValueError, match="every"):
        WeightNorms(every=0)
    with pytest.raises(ValueError, match="schedule"):
        GradientNorm(every=None)
    with pytest.raises(ValueError, match="sigma"):
        CheckpointDistances(sigma=0.0)
    with pytest.raises(ValueError, match="per_decade"):
        log_steps(10, per_decade=0)
    assert WeightNorms(every=3, at=[1]).due(1) and WeightNorms(every=3).due(6) and not WeightNorms(every=3).due(4)
