"""The fast surface evaluator's ways (vmap, first-layer trick, channels-last loop) against the reference loop."""

import numpy as np
import pytest
import torch
from torch import nn

from landscape import _fast
from landscape._evaluation import LoopEvaluator, cross_entropy, top1_accuracy
from landscape._fast import FastEvaluator
from landscape.directions import random_direction
from landscape.surfaces import make_grid, surface_2d
from studies.models import ResNet


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(54, 3)
    ).eval()


def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet((1, 8, 8), 3, blocks=1, widths=(4, 6, 8))
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model(torch.randn(32, 1, 8, 8))
    return model.eval()


def problem(make, n=24):
    model = make()
    shape = (1, 10, 10) if make is small_cnn else (1, 8, 8)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(2)]
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = [random_direction(model, "filter", seed=s) for s in (2, 3)]
    coords = torch.tensor([[a, b] for a in (-1.0, 0.0, 0.5) for b in (-0.5, 0.0, 1.0)], dtype=torch.float64)
    return model, origin, directions, batches, coords


@pytest.mark.parametrize("make", [small_cnn, resnet])
@pytest.mark.parametrize("strategy", ["vmap", "loop", "auto"])
def test_every_way_equals_the_reference_loop(make, strategy):
    model, origin, directions, batches, coords = problem(make)
    args = (model, origin, directions, batches, cross_entropy, top1_accuracy)
    reference = LoopEvaluator(*args)(coords)
    fast = FastEvaluator(*args, strategy=strategy)
    loss, acc = fast(coords)
    np.testing.assert_allclose(loss.numpy(), reference[0].numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(acc.numpy(), reference[1].numpy(), rtol=0, atol=1e-12)
    expected = {"vmap": ("vmap+first_layer",), "loop": ("loop+channels_last",)}
    expected["auto"] = expected["vmap"] + expected["loop"]
    assert fast.name in expected[strategy]
    if strategy == "auto":
        assert set(fast.calibration) == {"vmap", "loop"} and fast.strategy in ("vmap", "loop")
        # the way chosen is the one measured faster
        assert fast.calibration[fast.strategy] == min(fast.calibration.values())


def test_calibration_is_recorded_and_mlps_keep_vmap(monkeypatch):
    model, origin, directions, batches, _ = problem(small_cnn)
    ticks = iter([0.0, 5.0, 5.0, 6.0])
    monkeypatch.setattr(_fast, "_clock", lambda _device: next(ticks))  # vmap 5 s, loop 1 s for 3 points
    grid = make_grid(-1, 1, 3)
    data = batches[0]
    surface = surface_2d(model, data, directions, grid, grid, progress=False)
    assert surface.config["evaluator"] == "loop+channels_last"
    assert surface.config["evaluator_calibration"] == pytest.approx({"vmap": 5 / 3, "loop": 1 / 3})
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    flat = surface_2d(mlp, (x, y), [random_direction(mlp, seed=s) for s in (1, 2)], grid, grid, progress=False)
    assert flat.config["evaluator"] == "vmap+first_layer" and flat.config["evaluator_calibration"] == {}


def test_invalid_strategy():
    model, origin, directions, batches, _ = problem(small_cnn)
    with pytest.raises(ValueError, match="strategy"):
        FastEvaluator(model, origin, directions, batches, cross_entropy, top1_accuracy, strategy="fastest")
