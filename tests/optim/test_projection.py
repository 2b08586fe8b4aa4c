"""AdamP/SGDP: which view is projected on scale-invariant losses, and what AdamP is without a projection."""

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import optim
from optim._compiled import pieces
from optim._projection import _ROW_SUMS, compiled_radial_views, cosines, projected_step, radial_views

TARGET = torch.tensor([[0.3, -0.5, 0.2, 0.7, -0.1], [0.0, 0.4, -0.9, 0.1, 0.5], [0.6, 0.1, 0.1, -0.3, 0.2]])


def row_invariant_loss(w):
    """Each row enters only through its direction: f(diag(1/‖w_r‖) w)."""
    return ((w / w.norm(dim=1, keepdim=True) - TARGET.to(w.dtype)) ** 2).sum()


def layer_invariant_loss(w):
    """The tensor enters only through w/‖w‖_F; single rows are not scale invariant."""
    return ((w / w.norm() - TARGET.to(w.dtype)) ** 2).sum()


def _train(opt_factory, loss_fn, steps=10, seed=0):
    torch.manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(3, 5, dtype=torch.float64))
    opt = opt_factory([w])
    views = []
    for _ in range(steps):
        before = w.detach().clone()

        def closure():
            opt.zero_grad()
            loss = loss_fn(w)
            loss.backward()
            return loss

        opt.step(closure)
        views.append(opt.state[w]["projection"])
    return w, opt, before, views


FACTORIES = {
    "adamp": lambda ps, **path: optim.AdamP(ps, lr=0.01, weight_decay=0.1, **path),
    "sgdp": lambda ps, **path: optim.SGDP(ps, lr=0.1, momentum=0.9, weight_decay=0.1, **path),
}


@pytest.mark.compiled
@pytest.mark.parametrize("loss_fn", [row_invariant_loss, layer_invariant_loss], ids=["channel", "layer"])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_compiled_path_projects_as_the_per_tensor_path(name, loss_fn):
    (w, opt, _, views), (w_c, opt_c, _, views_c) = (
        _train(lambda ps, c=compiled: FACTORIES[name](ps, compiled=c), loss_fn) for compiled in (False, True)
    )
    assert views_c == views
    torch.testing.assert_close(w_c, w, rtol=1e-12, atol=1e-14)
    for key in ("max_cosine", "layer_cosine", "radial_norm"):
        assert opt_c.state[w_c][key] == pytest.approx(opt.state[w][key], rel=1e-9, abs=1e-15)


def _orthogonal(param, noise, view):
    """``noise`` without its radial part: per row (``"channel"``) or of the whole tensor (``"layer"``)."""
    theta, noise = param.reshape(len(param), -1), noise.reshape(len(param), -1)
    if view == "channel":
        grad = noise - (noise * theta).sum(1, keepdim=True) / theta.square().sum(1, keepdim=True) * theta
    else:
        grad = noise - (noise * theta).sum() / theta.square().sum() * theta
    return grad.view(param.shape)


def _both_paths(factory, shapes, gradient, *, steps, dtype=torch.float32):
    """Per-tensor, then compiled: each path's parameters and optimizer after ``steps`` steps, the gradient of
    every tensor drawn by ``gradient(θ, generator)``."""
    runs = []
    for compiled in (False, True):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
        opt = factory(params, compiled=compiled)
        for _ in range(steps):
            for p in params:
                p.grad = gradient(p.detach(), gen)
            opt.step()
        runs.append((params, opt))
    return runs


def _assert_projected_alike(runs, view, *, rel, rtol, atol):
    (expected, per_tensor), (found, compiled) = runs
    for p, q in zip(found, expected, strict=True):
        assert compiled.state[p]["projection"] == per_tensor.state[q]["projection"] == view
        assert compiled.state[p]["radial_norm"] == pytest.approx(per_tensor.state[q]["radial_norm"], rel=rel)
        torch.testing.assert_close(p.detach(), q.detach(), rtol=rtol, atol=atol)


@pytest.mark.compiled
@pytest.mark.parametrize("view", ["channel", "layer"])
@pytest.mark.parametrize(("name", "nesterov"), [("adamp", False), ("adamp", True), ("sgdp", False), ("sgdp", True)])
def test_compiled_projected_steps_of_long_rows_and_large_tensors_equal_the_per_tensor_path(name, nesterov, view):
    """Rows of 4608 (two pieces, one scale each), 4099 (whole) and 8192 in a tensor of 2^20 elements (its kernels on
    every intra-op thread), all projected, over three steps with gradients orthogonal to θ (per row or per tensor)."""
    runs = _both_paths(
        lambda ps, **path: FACTORIES[name](ps, nesterov=nesterov, **path),
        [(8, 512, 3, 3), (5, 4099), (128, 8192)],
        lambda theta, gen: _orthogonal(theta, torch.randn(theta.shape, generator=gen), view),
        steps=3,
    )
    _assert_projected_alike(runs, view, rel=1e-4, rtol=1e-5, atol=1e-6)


@pytest.mark.compiled
@pytest.mark.parametrize("view", ["channel", "layer"])
@pytest.mark.parametrize(("nesterov", "dampening"), [(False, 0.0), (False, 0.3), (True, 0.0), (True, 0.3)])
def test_compiled_sgdp_projects_gradients_with_a_radial_part_as_the_per_tensor_path(nesterov, dampening, view):
    """Projected gradients that keep a radial part (a cosine of 0.3 δ/√n, under the threshold): the compiled step
    takes θ·d from the projection test's θ·g and the buffer's θ·b, which only such gradients tell apart from θ·b
    alone. float64, rows of 4608 (two pieces) and 7, over four steps."""

    def gradient(theta, gen):
        grad = _orthogonal(theta, torch.randn(theta.shape, generator=gen, dtype=theta.dtype), view)
        rows = theta.reshape(len(theta) if view == "channel" else 1, -1)
        norms = rows.norm(dim=1, keepdim=True) / grad.reshape(rows.shape).norm(dim=1, keepdim=True)
        radial = (rows / norms).view(theta.shape)  # along θ, as long as the gradient (per row or tensor)
        return grad + 0.3 * 0.1 / rows.shape[1] ** 0.5 * radial

    hyper = dict(lr=0.1, momentum=0.9, dampening=dampening, weight_decay=0.1, nesterov=nesterov)
    runs = _both_paths(
        lambda ps, **path: optim.SGDP(ps, **hyper, **path),
        [(4, 512, 9), (6, 7)],
        gradient,
        steps=4,
        dtype=torch.float64,
    )
    _assert_projected_alike(runs, view, rel=1e-10, rtol=1e-12, atol=1e-14)


@pytest.mark.compiled
@pytest.mark.parametrize(
    ("dtype", "momentum", "tenth"),
    [(torch.float32, 0.0, 3.6e37), (torch.float64, 0.0, 1.9e307), (torch.float32, 0.9, 3.6e37)],
    ids=["f32", "f64", "f32-momentum"],
)
def test_compiled_sgdp_projects_after_a_buffer_whose_radial_dots_overflow(dtype, momentum, tenth):
    """A first step at learning rate 0 (a warm-up's) leaves a finite buffer whose θ·b overflows (without momentum
    the buffer counts 0 in the next step; with it, 0.9 of θ·b does not overflow), then an orthogonal gradient is
    projected: the compiled step's θ·d must stay finite, as the per-tensor path's d is (it was NaN or -inf)."""
    runs = []
    for compiled in (False, True):
        gen = torch.Generator().manual_seed(0)
        theta = torch.randn(4, 8, generator=gen, dtype=torch.float64)
        w = torch.nn.Parameter(theta.to(dtype))
        opt = optim.SGDP([w], lr=0.0, momentum=momentum, compiled=compiled)
        w.grad = (theta * (tenth / theta.square().sum(1, keepdim=True)) * 10).to(dtype)  # θ·g overflows per row
        opt.step()
        opt.param_groups[0]["lr"] = 1e-3
        w.grad = _orthogonal(w.detach(), torch.randn(w.shape, generator=gen, dtype=dtype), "channel")
        opt.step()
        runs.append((w.detach().clone(), opt.state[w]["projection"]))
    (expected, expected_view), (found, view) = runs
    assert view == expected_view == "channel" and found.isfinite().all() and expected.isfinite().all()
    if momentum == 0:  # with momentum the step cancels terms of 3e34 to 1e27 on both paths: rounding noise there
        torch.testing.assert_close(found, expected, rtol=1e-5, atol=0)


def test_float32_cosines_of_rows_whose_sums_overflow_together_equal_the_float64_ones():
    """Each row's θ·θ (2e38) is a float32 number, the whole tensor's (8e38) is not: the layer cosine is still the
    float64 one (it was 0, so a tensor with gradients almost along θ was projected as a layer)."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 2, generator=gen).sign() * 1e19
    grad = theta * 1e-19 + 0.1 * torch.randn(4, 2, generator=gen)
    found = cosines([theta], [grad], eps=1e-8)
    expected = cosines([theta.double()], [grad.double()], eps=1e-8)
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=0)
    assert radial_views([theta], [grad], delta=0.1, wd_ratio=0.1, eps=1e-8)[0].view == "none"


PATHS = [{"foreach": False}, {"foreach": True}, pytest.param({"compiled": True}, marks=pytest.mark.compiled)]


@pytest.mark.parametrize("path", PATHS, ids=["per_tensor", "foreach", "compiled"])
@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_a_radial_float32_gradient_whose_row_sums_overflow_is_not_projected(name, path):
    """g = 10¹⁹θ, finite in float32, but each row's g·g (about 10³⁹) overflows it: ‖g‖ read inf and
    |cos| = |g·θ|/inf = 0, so the purely radial gradient was projected per channel. By hand |cos| = 1, nothing is
    projected and the step is the plain one: AdamP's first update ĝ/(|ĝ| + ε) = sign θ (γ = 0.1), SGDP's
    γg = 0.1θ (γ = 10⁻²⁰), on every path (the compiled SGDP step differed from the others by 25%)."""
    theta = torch.tensor([[1.0, -0.5] * 8, [-1.5, 0.75] * 8, [0.5, 1.25] * 8])
    w = torch.nn.Parameter(theta.clone())
    cls, lr = (optim.AdamP, 0.1) if name == "adamp" else (optim.SGDP, 1e-20)
    opt = cls([w], lr=lr, **path)
    w.grad = theta * 1e19
    opt.step()
    state = opt.state[w]
    assert state["projection"] == "none"
    assert state["max_cosine"] == pytest.approx(1.0, rel=1e-6)
    assert state["layer_cosine"] == pytest.approx(1.0, rel=1e-6)
    expected = theta - 0.1 * theta.sign() if name == "adamp" else 0.9 * theta
    torch.testing.assert_close(w.detach(), expected, rtol=1e-6, atol=0)


def test_only_the_tensors_whose_sums_overflow_are_measured_again_in_float64():
    """One bucket of two float32 tensors: the first's rows overflow (g = 10¹⁹θ), the second's do not; each gets
    the cosines of its float64 copy (the first: 1, not 0), and cosines() flags the first only."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 16, generator=gen) for _ in range(2)]
    grads = [params[0] * 1e19, torch.randn(3, 16, generator=gen)]
    assert cosines(params, grads, eps=1e-8)[:, 2].tolist() == [1.0, 0.0]
    found = radial_views(params, grads, delta=0.1, wd_ratio=0.1, eps=1e-8)
    expected = cosines([p.double() for p in params], [g.double() for g in grads], eps=1e-8)
    for projection, (max_cosine, layer_cosine, _) in zip(found, expected.tolist(), strict=True):
        assert projection.max_cosine == pytest.approx(max_cosine, rel=1e-6)
        assert projection.layer_cosine == pytest.approx(layer_cosine, rel=1e-6)
    assert found[0].max_cosine == pytest.approx(1.0, rel=1e-6) and found[0].view == "none"


@pytest.mark.parametrize(("length", "count"), [(3, 1), (4096, 1), (4608, 2), (12288, 3), (4099, 1), (8194, 1)])
def test_rows_are_cut_into_the_fewest_equal_pieces_of_at_most_4096(length, count):
    assert pieces(length) == count  # 8194 = 2 x 4097: 3 to 6 pieces do not divide it, so it stays whole


@pytest.mark.compiled
@pytest.mark.parametrize(
    ("dtype", "eps"),
    [(torch.float32, 1e-8), (torch.float32, 1e-19), (torch.float64, 1e-8), (torch.float64, 1e-90)],
)
def test_compiled_cosines_of_long_rows_equal_the_per_tensor_ones(dtype, eps):
    """Rows of 4608 (two pieces), 4099 (prime: whole) and 300 elements, against the per-tensor cosines; tensors of
    6, 5 and 7 rows share one zero-padded table, whose padding must not count (at ε = 1e-90, ε⁴ underflows), nor
    must a row of zeros (its cosine 0). The smallest ε of each dtype whose square is a normal number is kept on
    the compiled path (smaller ones take the per-tensor path)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 512, 3, 3), (5, 4099), (7, 300)]
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    params[2][3] = 0.0
    grads = [torch.randn(s, generator=gen, dtype=dtype) + 0.01 * p for s, p in zip(shapes, params, strict=True)]
    found = compiled_radial_views("test", params, grads, delta=0.1, wd_ratio=0.1, eps=eps)
    expected = cosines([p.double() for p in params], [g.double() for g in grads], eps=eps)
    for projection, (max_cosine, layer_cosine) in zip(found, expected[:, :2].tolist(), strict=True):
        tolerance = 1e-12 if dtype == torch.float64 else 1e-5
        assert projection.max_cosine == pytest.approx(max_cosine, rel=tolerance)
        assert projection.layer_cosine == pytest.approx(layer_cosine, rel=tolerance)


@pytest.mark.compiled
@pytest.mark.parametrize("name", ["adamp", "sgdp"])
@pytest.mark.parametrize(("dtype", "eps"), [(torch.float32, 1e-20), (torch.float32, 1e-90), (torch.float64, 1e-200)])
def test_compiled_steps_with_eps_squared_below_the_normal_range_equal_the_per_tensor_steps(name, dtype, eps):
    """Where ε² is not a normal number in the parameters' dtype the per-tensor path's clamped norms multiply to 0 or
    a subnormal (an all-zero θ then has cosine 0/0 and takes a plain step): such tensors take that path, and the
    compiled optimizer's steps equal it (the compiled cosines, in float64, projected the zero θ and wrote NaN)."""
    cls, hyper = (optim.AdamP, {}) if name == "adamp" else (optim.SGDP, {"momentum": 0.9})
    results = []
    for compiled in (False, True):
        gen = torch.Generator().manual_seed(0)
        zero = torch.nn.Parameter(torch.zeros(4, 3, 3, 3, dtype=dtype))
        other = torch.nn.Parameter(torch.randn(5, 6, generator=gen, dtype=dtype))
        opt = cls([zero, other], lr=0.1, eps=eps, compiled=compiled, **hyper)
        for _ in range(3):
            zero.grad = torch.randn(zero.shape, generator=gen, dtype=dtype)
            other.grad = torch.randn(other.shape, generator=gen, dtype=dtype)
            opt.step()
        results.append([zero.detach(), other.detach(), [opt.state[p]["projection"] for p in (zero, other)]])
    (expected_zero, expected_other, expected_views), (zero, other, views) = results
    assert not zero.isnan().any() and views == expected_views
    torch.testing.assert_close(zero, expected_zero, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(other, expected_other, rtol=1e-5, atol=1e-6)


@pytest.mark.compiled
@pytest.mark.parametrize("scale", [1.0, 1e100, 1e155])
def test_compiled_cosines_of_huge_float64_tensors_equal_the_per_tensor_ones(scale):
    """Rows orthogonal to θ with |g||θ| near 1e200 (and θ·θ overflowing at 1e155): the compiled cosines squared
    g·θ and overflowed to inf/inf = NaN, so nothing was projected where the per-tensor path projects each channel."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 8, generator=gen, dtype=torch.float64) * scale
    grad = torch.randn(4, 8, generator=gen, dtype=torch.float64) * (scale if scale < 1e150 else 1.0)
    grad -= (grad * theta).sum(1, keepdim=True) / (theta * theta).sum(1, keepdim=True) * theta
    test = dict(delta=0.1, wd_ratio=0.1, eps=1e-8)
    (found,), (expected,) = (
        compiled_radial_views("test", [theta], [grad], **test),
        radial_views([theta], [grad], **test),
    )
    assert found.view == expected.view
    assert found.max_cosine == pytest.approx(expected.max_cosine, rel=1e-9, abs=1e-30)
    assert found.layer_cosine == pytest.approx(expected.layer_cosine, rel=1e-9, abs=1e-30)


@pytest.mark.compiled
def test_compiled_cosines_of_long_float32_rows_sum_in_pieces(monkeypatch):
    """A row of 4608 float32 values is summed as two pieces: no cascade-sum helper kept per row (a third slower)."""
    monkeypatch.setattr(_ROW_SUMS, "_ready", set())
    monkeypatch.setattr(_ROW_SUMS, "_compiled", {})
    param, grad = torch.randn(8, 512, 3, 3), torch.randn(8, 512, 3, 3)
    with torch._inductor.config.patch(force_disable_caches=True):
        _, code = run_and_get_code(compiled_radial_views, "test", [param], [grad], delta=0.1, wd_ratio=0.1, eps=1e-8)
    assert code and "CascadeSumHelper" not in "".join(code)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_row_wise_scale_invariance_projects_per_channel(name):
    w, opt, before, views = _train(FACTORIES[name], row_invariant_loss)
    assert views == ["channel"] * 10
    # the removed radial part was real, and the step (decay aside) is orthogonal to each row of θ
    assert opt.state[w]["radial_norm"] > 0
    wd_ratio, lr, wd = 0.1, opt.param_groups[0]["lr"], 0.1
    decay = 1 - lr * wd * wd_ratio / (1 - opt.param_groups[0].get("momentum", 0.0))
    step = w.detach() - before * decay
    cos = (step * before).sum(1) / (step.norm(dim=1) * before.norm(dim=1))
    assert cos.abs().max().item() < 1e-7


@pytest.mark.parametrize("name", list(FACTORIES))
def test_frobenius_normalisation_projects_per_layer(name):
    w, opt, before, views = _train(FACTORIES[name], layer_invariant_loss)
    assert views == ["layer"] * 10
    assert opt.state[w]["max_cosine"] >= 0.1 / 5**0.5  # the channel view was tried and rejected
    assert opt.state[w]["layer_cosine"] < 1e-10


def _plain_quadratic(w):
    """Σ a w² with a in 1..15: |cos(g, w)| ≥ 2√15/16 ≈ 0.48 (Kantorovich), far above δ/√5 — never projected."""
    return (w**2 * torch.arange(1, 16, dtype=w.dtype).view(3, 5)).sum()


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamp_on_a_plain_quadratic_never_projects_and_equals_adamw(wd):
    """Without a projection AdamP is AdamW with the same λ (decoupled θ(1 − γλ)), bitwise here."""
    w, opt, _, views = _train(lambda ps: optim.AdamP(ps, lr=0.05, weight_decay=wd), _plain_quadratic, steps=30)
    assert views == ["none"] * 30
    v, _, _, _ = _train(lambda ps: _AdamWWithDummyState(ps, lr=0.05, weight_decay=wd), _plain_quadratic, steps=30)
    assert torch.allclose(w, v, rtol=0, atol=1e-14)


class _AdamWWithDummyState(torch.optim.AdamW):
    """torch's AdamW, recording ``projection`` so that the shared training helper can read it."""

    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["projection"] = "none"
        return loss


def test_sgdp_leaves_the_momentum_buffer_unprojected():
    w, opt, _, _ = _train(lambda ps: optim.SGDP(ps, lr=0.1, momentum=0.9), row_invariant_loss, steps=1)
    # after one step b = g, which is itself orthogonal to θ row-wise here; check it equals the raw gradient
    assert torch.equal(opt.state[w]["momentum_buffer"], w.grad)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_a_tiny_eps_decides_alike_on_both_paths_for_tensors_with_different_row_counts(name, foreach):
    """Gradients orthogonal to every row: projected per channel. With ε² underflowing, the multi-tensor test pads
    the shorter tensor's rows, and those padded cosines (0/0) must not turn the decision into 'layer'."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(rows, 6, generator=gen)) for rows in (3, 8)]
    make = {"adamp": optim.AdamP, "sgdp": optim.SGDP}[name]
    opt = make(params, lr=0.1, eps=1e-30, foreach=foreach)
    for p in params:
        unit = p.detach() / p.detach().norm(dim=1, keepdim=True)
        noise = torch.randn(p.shape, generator=gen)
        p.grad = noise - (noise * unit).sum(dim=1, keepdim=True) * unit
    opt.step()
    assert [opt.state[p]["projection"] for p in params] == ["channel", "channel"]


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_parameters_without_elements_are_stepped_and_never_projected(name, foreach):
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((0, 3), (3, 0), (2, 3))]
    make = {"adamp": optim.AdamP, "sgdp": optim.SGDP}[name]
    opt = make(params, lr=0.1, foreach=foreach)
    for p in params:
        p.grad = torch.ones(p.shape)
    opt.step()
    assert [opt.state[p]["projection"] for p in params[:2]] == ["none", "none"]
    assert params[2].detach().ne(0).all()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_float16_cosines_do_not_overflow(name):
    """Rows of norm 300: the product of the norms (9e4) overflows float16, the cosine (0.7) must not become 0."""
    w = torch.nn.Parameter(torch.zeros(2, 4, dtype=torch.float16))
    w.data[:, 0] = 300.0
    make = {"adamp": optim.AdamP, "sgdp": optim.SGDP}[name]
    opt = make([w], lr=0.1)
    w.grad = torch.tensor([[210.0, 214.24, 0.0, 0.0]] * 2, dtype=torch.float16)
    opt.step()
    assert opt.state[w]["projection"] == "none"
    assert opt.state[w]["max_cosine"] == pytest.approx(0.7, abs=1e-3)


def _explicit_step(param, direction, view, step, decay, eps):
    """θ ← aθ - γ(d - θ̂ (θ̂·d)) with the radial part removed explicitly, in float64 (the authors' order)."""
    theta, d = param.double().reshape(len(param), -1), direction.double().reshape(len(param), -1)
    norms = theta.norm(dim=1, keepdim=True) if view == "channel" else theta.norm().expand(len(theta), 1)
    unit = theta / (norms + eps)
    coefficients = (unit * d).sum(1, keepdim=True) if view == "channel" else (unit * d).sum().expand(len(theta), 1)
    return (decay * theta - step * (d - unit * coefficients)).reshape(param.shape)


# float16 and bfloat16: one rounding of the exact result (half an ulp; float32 work adds far less)
HALF_ULP = {torch.float64: 1e-15, torch.float32: 2.0**-24 * 4, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@pytest.mark.parametrize("dtype", list(HALF_ULP), ids=str)
@pytest.mark.parametrize("view", ["channel", "layer"])
def test_projected_step_rounds_once_in_every_precision(dtype, view):
    """The folded step equals the explicit removal to the rounding of the parameter's own precision."""
    gen = torch.Generator().manual_seed(3)
    theta = (torch.randn(6, 4, 3, generator=gen, dtype=torch.float64) * 3).to(dtype)
    direction = (theta.double() * 0.4 + 1e-2 * torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)).to(dtype)
    expected = _explicit_step(theta, direction, view, step=0.05, decay=0.999, eps=1e-8)
    param = theta.clone()
    projected_step(param, direction, view, step=0.05, decay=0.999, eps=1e-8)
    error = (param.double() - expected).abs() / expected.abs()
    assert param.dtype == dtype and error.max().item() <= HALF_ULP[dtype]


def test_half_precision_projection_neither_overflows_nor_loses_the_projection():
    """float16: θ·d of rows of norm 300 overflows float16 (65504); bfloat16: a + γk rounds to 1 in bfloat16."""
    w = torch.nn.Parameter(torch.full((2, 4), 150.0, dtype=torch.float16))
    opt = optim.SGDP([w], lr=0.01, momentum=0.9)
    opt.state[w]["momentum_buffer"] = w.detach().clone()  # radial momentum, norm 300 per row
    w.grad = torch.tensor([[1.0, -1.0, 1.0, -1.0]] * 2, dtype=torch.float16)  # g ⟂ θ: the channel view
    opt.step()
    assert opt.state[w]["projection"] == "channel" and torch.isfinite(w).all()
    assert opt.state[w]["radial_norm"] == pytest.approx(0.9 * 0.01 * 300 * 2**0.5, rel=1e-3)
    v = torch.nn.Parameter(torch.full((2, 4), 0.5, dtype=torch.bfloat16))  # rows of norm 1
    opt = optim.SGDP([v], lr=0.1, momentum=0.9)
    opt.state[v]["momentum_buffer"] = (v.detach() / 27).clone()
    v.grad = torch.tensor([[1e-3, -1e-3, 1e-3, -1e-3]] * 2, dtype=torch.bfloat16)
    opt.step()  # the step is -0.1 g, tangential: each coordinate stays within rounding of 0.5
    assert opt.state[v]["projection"] == "channel" and v.detach().float().norm(dim=1).tolist() == [1.0, 1.0]
