"""Which surface evaluator ran: the fast (batched) path where it is meant to serve, the loop where it must, and a
fallback never silent (a bug that sends an MLP to the loop costs only speed, so only these tests can see it)."""

import warnings

import pytest
import torch
from torch import nn

from landscape.directions import random_direction
from landscape.surfaces import surface_1d, surface_2d
from studies.models import make_model

FAST = {"vmap", "vmap+first_layer", "chain+first_layer"}


def _data(shape: tuple[int, ...], classes: int = 3, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def _surface(model: nn.Module, data, dims: int = 2, **options):
    model.eval()
    directions = [random_direction(model, seed=s) for s in range(dims)]
    kw = dict(progress=False, chunk_size=4, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback announces itself with a warning: fail on it here
        if dims == 1:
            return surface_1d(model, data, directions[0], [-0.5, 0.0, 0.5], **kw)
        return surface_2d(model, data, directions, [-0.5, 0.0, 0.5], [0.0, 0.5], **kw)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("widths", [(8,), (8, 6)])
def test_mlp_takes_the_fast_path_with_the_first_layer_trick(dims, widths):
    torch.manual_seed(0)
    model = make_model("mlp", (5,), 3, widths=widths)
    surface = _surface(model, _data((5,)), dims=dims)
    assert surface.config["evaluator"] == "chain+first_layer"


def test_mlp_without_the_trick_is_still_batched():
    torch.manual_seed(0)
    model = make_model("mlp", (5,), 3, widths=(8,))
    assert _surface(model, _data((5,)), first_layer_trick=False).config["evaluator"] == "vmap"


@pytest.mark.parametrize("name", ["lenet5", "adam_cnn"])
def test_cnn_records_its_evaluator(name):
    """The CNN path may be batched or the loop (its choice is being tuned); it must be recorded, and not silently."""
    torch.manual_seed(0)
    model = make_model(name, (1, 28, 28), 3)
    surface = _surface(model, _data((1, 28, 28), n=4))
    assert surface.config["evaluator"] in FAST | {"loop+channels_last", "loop+channels_last+first_layer"}
    timings = surface.config["evaluator_calibration"]  # both ways were timed on the first points
    assert set(timings) == {"vmap", "loop"}
    faster = min(timings, key=timings.get)
    assert surface.config["evaluator"].startswith(faster)  # and the faster one was kept


def test_loop_when_asked_or_when_batch_norm_is_recomputed():
    torch.manual_seed(0)
    model = make_model("mlp", (5,), 3, widths=(8,))
    data = _data((5,))
    assert _surface(model, data, method="loop").config["evaluator"] == "loop"
    bn_model = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    recomputed = _surface(bn_model, data, bn="recompute", bn_data=data)
    assert recomputed.config["evaluator"] == "loop"


class _DataDependent(nn.Module):
    """A forward with Python control flow on a tensor value: vmap cannot run it, so the loop must."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        return out if float(out.sum()) > -1e9 else -out


def test_fallback_to_the_loop_is_announced_and_recorded():
    torch.manual_seed(0)
    model = _DataDependent()
    with pytest.warns(UserWarning, match="falling back to the loop"):
        surface = surface_2d(model, _data((5,)), [random_direction(model, seed=s) for s in (0, 1)], [0.0, 1.0], [0.0])
    assert surface.config["evaluator"] == "loop"
