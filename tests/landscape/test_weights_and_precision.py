"""Means over batches with ignored targets, and measures of half-precision models.

The reference for every mean is one batch of all the data: torch's cross-entropy with ``ignore_index`` averages over
the valid targets only, so a batch must weigh its count of valid targets, not its length. Half-precision models are
measured in float32 where a measure is a difference of losses (sharpness) or a Krylov estimate (curvature).
"""

import warnings

import pytest
import torch
from torch import nn

from landscape import (
    HessianOperator,
    SharpnessDynamics,
    lanczos_eigenpairs,
    random_direction,
    sam_sharpness,
    surface_1d,
)
from landscape._evaluation import cross_entropy


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _data(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture
def uneven():
    """200 examples: 100 valid targets, 90 ignored, 10 valid; batches of 100 hold 100 and 10 valid targets, batches
    of 50 one batch of ignored targets only."""
    x, y = _data()
    y[100:190] = -100
    return _mlp(), x, y


@pytest.mark.parametrize("method", ["fast", "loop"])
def test_surface_means_over_valid_targets_whatever_the_batches(uneven, method):
    model, x, y = uneven
    with torch.no_grad():
        out = model(x)
    loss = nn.functional.cross_entropy(out.double(), y).item()
    valid = y != -100
    accuracy = (out.argmax(1)[valid] == y[valid]).double().mean().item()
    direction = random_direction(model, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ignored targets are counted and announced
        for batch_size in (None, 100, 50):
            s = surface_1d(model, (x, y), direction, [0.0], batch_size=batch_size, method=method, progress=False)
            assert s.loss[0] == pytest.approx(loss, rel=1e-6), batch_size
            assert s.accuracy[0] == pytest.approx(accuracy, rel=1e-6), batch_size


def test_sharpness_and_hessian_mean_over_valid_targets_whatever_the_batches(uneven):
    model, x, y = uneven
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(2))
    whole = HessianOperator(model, cross_entropy, (x, y), dtype=torch.float64).matvec(v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = sam_sharpness(model, (x, y))
        for batch_size in (100, 50):
            batched = HessianOperator(model, cross_entropy, (x, y), dtype=torch.float64, batch_size=batch_size)
            assert torch.allclose(batched.matvec(v), whole, rtol=1e-10, atol=1e-14), batch_size
            torch_loss = HessianOperator(model, nn.functional.cross_entropy, (x, y), torch.float64, batch_size)
            assert torch.allclose(torch_loss.matvec(v), whole, rtol=1e-10, atol=1e-14), batch_size
            s = sam_sharpness(model, (x, y), batch_size=batch_size)
            assert (s.loss, s.value) == pytest.approx((reference.loss, reference.value), rel=1e-5), batch_size


def test_curvature_of_ignored_targets_only_is_refused(uneven):
    model, x, y = uneven
    with pytest.raises(ValueError, match="every target is -100"):
        HessianOperator(model, cross_entropy, (x, torch.full_like(y, -100)))


def test_half_precision_model_curvature_is_computed_in_float32():
    """In float16 the products keep three digits: Lanczos restarted on rounding noise and gave 74.3 for 78.8."""
    x = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0)) * 6
    y = x.sum(1, keepdim=True)
    model = nn.Linear(4, 1)
    exact = lanczos_eigenpairs(HessianOperator(model, nn.functional.mse_loss, (x, y), torch.float64), k=1, seed=0)
    half = HessianOperator(model.half(), nn.functional.mse_loss, (x.half(), y.half()))
    assert half.torch_dtype == torch.float32
    top = lanczos_eigenpairs(half, k=1, seed=0).eigenvalues[0]
    assert top == pytest.approx(exact.eigenvalues[0], rel=1e-3)  # the data are rounded to float16: 5e-4
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ValueError, match="float32 or float64"):
            HessianOperator(model, nn.functional.mse_loss, (x.half(), y.half()), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_sharpness_is_not_whole_steps_of_the_loss(dtype):
    """A bfloat16 loss near 1 moves in steps of 0.0078: the SAM sharpness came out as two steps (0.0156 for 0.0141)."""
    x, y = _data()
    model = _mlp(dtype)
    reference = sam_sharpness(_mlp(dtype).double(), (x.double(), y))
    measured = sam_sharpness(model, (x.to(dtype), y))
    assert measured.value == pytest.approx(reference.value, rel=2e-3)
    assert all(p.dtype == dtype for p in model.parameters())


def test_sharpness_dynamics_probe_loss_leaves_a_training_model_alone():
    """The probe loss ran the model in its own mode: in train mode dropout was drawn and BatchNorm's running
    statistics moved, although the Hessian rows (eval mode) and the docstring say the model is not changed."""
    x, y = _data(64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = SharpnessDynamics(cross_entropy, (x, y), every=1).measure(model)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        expected = cross_entropy(model.eval()(x), y).item()
    assert [r["value"] for r in rows if r["quantity"] == "probe_loss"] == [pytest.approx(expected, rel=1e-6)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_frozen_parameters_follow_the_operators_dtype(dtype):
    """Only trainable parameters were cast: a frozen layer kept the model's dtype and the forward pass failed with
    "mat1 and mat2 must have the same dtype" (float16 models, now computed in float32; float32 ones in float64)."""
    model = _mlp(dtype)
    model[0].requires_grad_(False)
    x, y = _data(32)
    v = torch.randn(sum(p.numel() for p in model[2].parameters()), generator=torch.Generator().manual_seed(3))
    reference_model = _mlp(dtype).double()  # the same rounded weights and inputs, in float64 throughout
    reference_model[0].requires_grad_(False)
    inputs = x.to(dtype)
    reference = HessianOperator(reference_model, cross_entropy, (inputs.double(), y), torch.float64).matvec(v.double())
    operator = HessianOperator(model, cross_entropy, (inputs, y), torch.float64 if dtype == torch.float32 else None)
    assert operator.shape[0] == len(v)  # the frozen layer is left out
    assert torch.allclose(operator.matvec(v.to(operator.torch_dtype)).double(), reference, rtol=1e-4, atol=1e-6)


def test_sharpness_dynamics_probe_loss_of_a_model_returning_a_tuple():
    """The probe loss went through the default accuracy, which needs a tensor: (logits, features) raised."""

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, x):
            return self.net(x), x

    def first_output_loss(outputs, targets):
        return cross_entropy(outputs[0], targets)

    x, y = _data(64)
    model = Pair()
    rows = SharpnessDynamics(first_output_loss, (x, y), every=1).measure(model)
    with torch.no_grad():
        expected = cross_entropy(model.net(x), y).item()
    assert [r["value"] for r in rows if r["quantity"] == "probe_loss"] == [pytest.approx(expected, rel=1e-6)]
