"""Generic tests every registry entry passes on both paths, per tensor and multi-tensor (modelled on torch's
common_optimizers)."""

import copy
import math

import pytest
import torch

import optim

DT = torch.float64


@pytest.fixture(params=[False, True], ids=["per_tensor", "foreach"])
def kwargs_for(request, kwargs_for):
    """The shared overrides with ``foreach`` set, so that every test here runs both paths."""
    return lambda name, problem="quadratic": {**kwargs_for(name, problem), "foreach": request.param}


def quadratic_problem(dtype=DT, seed=0):
    """½ Σ a ⊙ (W − C)² + ½ ‖b − d‖² with a 3×4 weight and a bias, started away from the minimum."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(3, 4, generator=gen, dtype=dtype) + 0.5
    target_w = torch.randn(3, 4, generator=gen, dtype=dtype)
    target_b = torch.randn(3, generator=gen, dtype=dtype)
    w = torch.nn.Parameter(torch.randn(3, 4, generator=gen, dtype=dtype) + 2.0)
    b = torch.nn.Parameter(torch.randn(3, generator=gen, dtype=dtype))

    def loss_fn():
        return 0.5 * (a * (w - target_w) ** 2).sum() + 0.5 * ((b - target_b) ** 2).sum()

    return [w, b], loss_fn


def make_closure(opt, loss_fn):
    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    return closure


def run(opt, loss_fn, steps):
    closure = make_closure(opt, loss_fn)
    for _ in range(steps):
        opt.step(closure)


def test_decreases_quadratic(name, kwargs_for):
    torch.manual_seed(0)
    params, loss_fn = quadratic_problem()
    start = loss_fn().item()
    opt = optim.make(name, params, **kwargs_for(name))
    run(opt, loss_fn, 200)
    assert loss_fn().item() < 0.5 * start


def test_decreases_rosenbrock(name, kwargs_for):
    torch.manual_seed(0)
    xy = torch.nn.Parameter(torch.tensor([-0.5, 1.5], dtype=DT))

    def loss_fn():
        return (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2

    start = loss_fn().item()
    opt = optim.make(name, [xy], **kwargs_for(name, "rosenbrock"))
    run(opt, loss_fn, 300)
    final = loss_fn().item()
    assert final < 0.05 * start, (start, final)


def assert_same_values(found, expected):
    """Nested dicts, lists and tuples of equal structure whose leaves are equal (NaN equals NaN, tensors bitwise)."""
    assert type(found) is type(expected), (found, expected)
    if isinstance(expected, dict):
        assert found.keys() == expected.keys()
        for key in expected:
            assert_same_values(found[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert len(found) == len(expected)
        for a, b in zip(found, expected, strict=True):
            assert_same_values(a, b)
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(found, expected, rtol=0, atol=0, equal_nan=True)
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(found)
    else:
        assert found == expected


def test_state_dict_round_trip_is_bitwise(name, kwargs_for):
    torch.manual_seed(0)
    params, loss_fn = quadratic_problem()
    opt = optim.make(name, params, **kwargs_for(name))
    run(opt, loss_fn, 5)
    saved_state = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in params]
    run(opt, loss_fn, 7)
    uninterrupted = [p.detach().clone() for p in params]

    resumed_params, resumed_loss_fn = quadratic_problem()
    with torch.no_grad():
        for p, saved in zip(resumed_params, saved_params, strict=True):
            p.copy_(saved)
    resumed = optim.make(name, resumed_params, **kwargs_for(name))
    resumed.load_state_dict(saved_state)
    assert_same_values(resumed.state_dict(), saved_state)  # strings too (torch's loader garbled them)
    run(resumed, resumed_loss_fn, 7)
    for p, q in zip(resumed_params, uninterrupted, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("copied", [False, True], ids=["as_made", "deepcopied"])
@pytest.mark.parametrize("other", ["adamp", "sgdp", "expectigrad"])
def test_kept_state_follows_a_user_hook_that_maps_the_saved_layout(other, copied):
    """A model whose parameters come in the other order, loaded through torch's documented way of adapting a saved
    state dict (a pre-hook of the user's, here reversing the saved parameter order): the strings and Expectigrad's
    counters, passed through as saved, land on their own parameters, also in a deep copy of the optimizer (whose
    hooks torch does not copy)."""

    def problem():
        gen = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=DT)) for s in ((3, 4), (3,))]

    w, b = problem()
    opt = optim.make(other, [w, b], lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        ((w / w.norm()).sum() + (b * torch.tensor([0.0, 1.0, 2.0], dtype=DT)).square().sum()).backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    w2, b2 = problem()
    resumed = optim.make(other, [b2, w2], lr=0.1)
    if copied:
        resumed = copy.deepcopy(resumed)
        b2, w2 = resumed.param_groups[0]["params"]  # the copy's own parameters
    resumed.register_load_state_dict_pre_hook(
        lambda _, state_dict: {**state_dict, "param_groups": [{**state_dict["param_groups"][0], "params": [1, 0]}]}
    )
    resumed.load_state_dict(saved)
    for new, index in ((w2, 0), (b2, 1)):
        assert_same_values(resumed.state[new], saved["state"][index])


def test_param_groups_equal_separate_optimizers(name, kwargs_for):
    if name in ("sam", "asam"):
        pytest.skip("SAM's perturbation uses the gradient norm over all groups, so groups are coupled by design")
    torch.manual_seed(0)
    kwargs = kwargs_for(name)
    (w, b), loss_fn = quadratic_problem()
    lrs = (kwargs["lr"], kwargs["lr"] * 0.5)
    grouped = optim.make(name, [{"params": [w], "lr": lrs[0]}, {"params": [b], "lr": lrs[1]}], **kwargs)
    run(grouped, loss_fn, 10)

    (w2, b2), loss_fn2 = quadratic_problem()
    separate = [
        optim.make(name, [w2], **{**kwargs, "lr": lrs[0]}),
        optim.make(name, [b2], **{**kwargs, "lr": lrs[1]}),
    ]
    for _ in range(10):

        def closure():
            for opt in separate:
                opt.zero_grad()
            loss = loss_fn2()
            loss.backward()
            return loss

        # Each optimizer evaluates the (separable) closure itself; the other's gradients are not used.
        for opt in separate:
            opt.step(closure)
    assert torch.equal(w, w2)
    assert torch.equal(b, b2)


def _floating_state(opt):
    tensors = []
    while opt is not None:
        for state in opt.state.values():
            tensors += [v for k, v in state.items() if isinstance(v, torch.Tensor) and k != "step" and v.dim() > 0]
        opt = getattr(opt, "base_optimizer", None)
    return tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(name, dtype, kwargs_for):
    torch.manual_seed(0)
    params, loss_fn = quadratic_problem(dtype=dtype)
    opt = optim.make(name, params, **kwargs_for(name))
    run(opt, loss_fn, 5)
    assert all(p.dtype == dtype for p in params)
    assert all(torch.isfinite(p).all() for p in params)
    state = _floating_state(opt)
    assert state or name in ("sgd", "extragradient")
    assert all(t.dtype == dtype for t in state)


@pytest.mark.parametrize("name", ["radam", "adam2k", "adamp", "sgdp", "expectigrad", "adabelief", "adam3"])
def test_bfloat16_parameters_stay_bfloat16_and_finite(name, kwargs_for):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.bfloat16))
    opt = optim.make(name, [w], **kwargs_for(name))
    run(opt, lambda: (w.float() ** 2).sum(), 5)
    assert w.dtype == torch.bfloat16 and torch.isfinite(w).all()
