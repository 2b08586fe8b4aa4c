"""Every threshold in optim, tested on both sides and exactly on it (a ``>`` written as ``>=`` must fail a test)."""

import math
import warnings

import pytest
import torch

import optim
import optim.adabelief
import optim.radam

below, above = (lambda x: math.nextafter(x, -math.inf)), (lambda x: math.nextafter(x, math.inf))


# ---------------------------------------------------------------- RAdam: rectify iff rho_t > threshold
def _radam_step6(threshold: float) -> tuple[bool, float, torch.Tensor]:
    """Six steps of RAdam under g = 1; (rectified at step 6, rho_6, the parameter after step 6)."""
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = optim.RAdam([p], lr=0.1, threshold=threshold)
    for _ in range(6):
        p.grad = torch.ones_like(p)
        before = p.detach().clone()
        opt.step()
    return opt.state[p]["rectified"], opt.state[p]["rho_t"], p.detach() - before


def test_radam_threshold_is_strict():
    rectified, rho_6, _ = _radam_step6(4.0)
    assert rectified and 5 < rho_6 < 6
    on, _, step_on = _radam_step6(rho_6)  # rho_t == threshold: not rectified (rho_t > threshold)
    just_below, _, step_below = _radam_step6(below(rho_6))
    just_above, _, _ = _radam_step6(above(rho_6))
    assert (just_below, on, just_above) == (True, False, False)
    # the branches differ in the step: 'sgd' moves by lr * m_hat = 0.1 under g = 1; rectified by lr * r_t < lr
    assert float(step_on) == pytest.approx(-0.1, rel=1e-12)
    _, r_6 = optim.radam.rectification(6, 0.999)
    assert float(step_below) == pytest.approx(-0.1 * r_6, rel=1e-6)  # eps = 1e-8 on sqrt(v_6) = 0.077


def test_radam_rectification_nan_up_to_rho_four():
    # rho_5 = 4.996 at beta2 = 0.999 (r_t undefined), rho_6 = 5.99 (defined); rho_t <= 4 -> NaN
    assert math.isnan(optim.radam.rectification(4, 0.999)[1])
    rho_5, r_5 = optim.radam.rectification(5, 0.999)
    assert 4 < rho_5 < 5 and r_5 > 0


@pytest.mark.parametrize(("threshold", "ok"), [(4.0, True), (below(4.0), False), (math.inf, False)])
def test_radam_threshold_domain(threshold, ok):
    p = torch.nn.Parameter(torch.zeros(1))
    if ok:
        optim.RAdam([p], threshold=threshold)
    else:
        with pytest.raises(ValueError, match="threshold"):
            optim.RAdam([p], threshold=threshold)


# ---------------------------------------------------------------- AdaBelief: rectify iff rho_t >= 5 (authors' code)
@pytest.mark.parametrize(("rho", "rectified"), [(5.0, True), (below(5.0), False), (above(5.0), True)])
def test_adabelief_rectifies_from_rho_five_inclusive(monkeypatch, rho, rectified):
    monkeypatch.setattr(optim.adabelief, "rectification", lambda step, beta2: (rho, 0.5))
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = optim.AdaBelief([p], lr=0.1, rectify=True)
    p.grad = torch.ones_like(p)
    opt.step()
    assert opt.state[p]["rectified"] is rectified
    # m_1 = 0.1 = 1 - beta1: the sgd branch moves by lr * m_1 / (1 - beta1) = 0.1; the rectified one by
    # lr * r_t * sqrt(1 - beta2) / sqrt(s_1) = 0.1 * 0.5 * sqrt(0.001) / sqrt(0.001 * 0.9^2) = 0.05 / 0.9
    moved = -float(p.detach())
    assert moved == pytest.approx(0.05 / 0.9 if rectified else 0.1, rel=1e-6)


# ---------------------------------------------------------------- Adam-2k: theta frozen for steps t <= k
@pytest.mark.parametrize("k", [0, 1, 2])
def test_adam2k_first_move_at_step_k_plus_one(k):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = optim.Adam2k([p], lr=0.1, freeze_steps=k)
    moved = []
    for _ in range(k + 2):
        p.grad = torch.ones_like(p)
        before = p.detach().clone()
        opt.step()
        moved.append(bool(p.detach() != before))
    assert moved == [False] * k + [True, True]
    assert opt.state[p]["frozen"] is False


@pytest.mark.parametrize(("k", "ok"), [(0, True), (-1, False)])
def test_adam2k_freeze_steps_domain(k, ok):
    p = torch.nn.Parameter(torch.zeros(1))
    if ok:
        optim.Adam2k([p], freeze_steps=k)
    else:
        with pytest.raises(ValueError, match="freeze_steps"):
            optim.Adam2k([p], freeze_steps=k)


# ---------------------------------------------------------------- Expectigrad: the sparse counter
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_expectigrad_counter_counts_only_nonzero_gradients(dtype, foreach):
    """Coordinate 0: g = 0, 0, 3 (n = 1 at step 3); coordinate 1: g = 2, 0, 2 (n = 2); coordinate 2: always 0.

    The multi-tensor path takes the fused (n = t) kernel at step 1 and the counting path afterwards."""
    p = torch.nn.Parameter(torch.zeros(3, dtype=dtype))
    opt = optim.Expectigrad([p], lr=1.0, beta=0.0, eps=1e-30, foreach=foreach)
    grads = [[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 2.0, 0.0]]
    for g in grads[:2]:
        p.grad = torch.tensor(g, dtype=dtype)
        opt.step()
    assert p.detach().tolist() == [0.0, -1.0, 0.0]  # step 1 of coordinate 1: 2 / sqrt(4 / 1) = 1
    before = p.detach().clone()
    p.grad = torch.tensor(grads[2], dtype=dtype)
    opt.step()
    # n counts the first nonzero gradient as 1 (not 0 or t = 3): 3 / sqrt(9 / 1) = 1; 2 / sqrt(8 / 2) = 1
    assert (before - p.detach()).tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("foreach", [False, True])
def test_expectigrad_dense_counter_is_the_step(foreach):
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = optim.Expectigrad([p], lr=1.0, beta=0.0, eps=1e-30, sparse_counter=False, foreach=foreach)
    for g in (0.0, 3.0):
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
    assert float(p.detach()) == pytest.approx(-3.0 / math.sqrt(9.0 / 2.0), rel=1e-15)


@pytest.mark.parametrize("beta", [0.0, 0.9])
@pytest.mark.parametrize("foreach", [False, True])
def test_expectigrad_dense_counter_in_float16_keeps_an_always_zero_coordinate(foreach, beta):
    """ε = 1e-8 is 0 in float16: s/n, √(s/n) + ε and u were made in the sum's dtype, and a coordinate whose gradient
    was always zero got 0/0 = NaN. By hand, two steps of g = (0.5, 0, -0.25): u = g/|g| = (1, 0, -1) each time, so
    θ moves by 2γ·sign g (β = 0.9: m/(1-β^t) is u too) and the middle coordinate stays 2."""
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16))
    opt = optim.Expectigrad([p], lr=0.1, beta=beta, sparse_counter=False, foreach=foreach)
    for _ in range(2):
        p.grad = torch.tensor([0.5, 0.0, -0.25], dtype=torch.float16)
        opt.step()
    assert p.tolist() == [float(torch.tensor(v, dtype=torch.float16)) for v in (0.8, 2.0, 3.2)]


def test_expectigrad_counter_stays_float32_through_a_state_dict_of_bfloat16_parameters():
    """torch casts loaded state to the parameter's dtype; a bfloat16 counter would round 257 to 256 and stop there."""
    p = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    opt = optim.Expectigrad([p])
    p.grad = torch.ones(2, dtype=torch.bfloat16)
    opt.step()
    opt.state[p]["counter"].fill_(257.0)
    q = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    resumed = optim.Expectigrad([q])
    resumed.load_state_dict(opt.state_dict())
    assert resumed.state[q]["counter"].dtype == torch.float32
    assert resumed.state[q]["counter"].tolist() == [257.0, 257.0]
    assert resumed.state[q]["sum_sq"].dtype == torch.bfloat16
    broken = opt.state_dict()
    broken["state"][0]["counter"] = "257"
    with pytest.raises(ValueError, match="a counter must be a floating-point tensor"):
        optim.Expectigrad([q]).load_state_dict(broken)


def test_expectigrad_warns_once_when_its_float32_counter_stops_counting():
    p = torch.nn.Parameter(torch.ones(2))
    opt = optim.Expectigrad([p])
    p.grad = torch.ones(2)
    opt.step()
    opt.state[p]["step"] = 2**24 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # step 2^24: still exact
    assert opt.state[p]["counter"].dtype == torch.float32
    with pytest.warns(RuntimeWarning, match="beyond what its torch.float32 counter"):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()


# ---------------------------------------------------------------- AdamP / SGDP: project iff cos < delta / sqrt(d)
def _projection(make, weight, grad, delta):
    p = torch.nn.Parameter(weight.clone())
    opt = make([p], delta)
    p.grad = grad.clone()
    opt.step()
    return opt.state[p]


MAKERS = {
    "sgdp": lambda ps, delta: optim.SGDP(ps, lr=0.1, momentum=0.9, delta=delta),
    "adamp": lambda ps, delta: optim.AdamP(ps, lr=0.1, delta=delta),
}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_channel_projection_at_delta_over_sqrt_row_length(kind):
    # two identical rows of length 4 (sqrt 4 = 2 exactly): channel and layer cosines are equal, c = 0.1 here
    row = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    grad_row = torch.tensor([0.3, -0.1, 0.2, 1.0], dtype=torch.float64)
    weight, grad = torch.stack([row, row]), torch.stack([grad_row, grad_row])
    cosine = _projection(MAKERS[kind], weight, grad, 0.1)["max_cosine"]
    assert 0 < cosine < 1
    views = {d: _projection(MAKERS[kind], weight, grad, d)["projection"] for d in (below(2 * cosine), 2 * cosine)}
    views[above(2 * cosine)] = _projection(MAKERS[kind], weight, grad, above(2 * cosine))["projection"]
    # delta/2 == cos: not below the threshold; the layer test (delta/sqrt(8) < cos) fails too
    assert list(views.values()) == ["none", "none", "channel"]


@pytest.mark.parametrize("kind", list(MAKERS))
def test_layer_projection_at_delta_over_sqrt_numel(kind):
    # a (4, 1) weight: every channel cosine is 1 (never projected for delta <= 1); numel 4, sqrt 4 = 2 exactly
    weight = torch.tensor([[1.0], [2.0], [-1.0], [0.5]], dtype=torch.float64)
    grad = torch.tensor([[0.3], [0.2], [0.4], [1.0]], dtype=torch.float64)
    state = _projection(MAKERS[kind], weight, grad, 0.1)
    cosine = state["layer_cosine"]
    assert state["max_cosine"] == pytest.approx(1.0) and 0 < cosine < 0.5
    views = [_projection(MAKERS[kind], weight, grad, d)["projection"] for d in (2 * cosine, above(2 * cosine))]
    assert views == ["none", "layer"]


def test_one_dimensional_tensors_are_never_projected():
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = optim.SGDP([p], lr=0.1, delta=100.0)
    p.grad = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)  # orthogonal to p: cos = 0
    opt.step()
    assert opt.state[p]["projection"] == "none"


# ---------------------------------------------------------------- SAM: no perturbation iff the gradient norm is 0
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize(("g", "moves"), [(0.0, False), (1e-100, True), (1.0, True)])
def test_sam_perturbs_iff_gradient_norm_positive(adaptive, g, moves):
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    sam = optim.SAM(torch.optim.SGD([w], lr=0.1), rho=0.05, adaptive=adaptive, eta=0.01)
    w.grad = torch.full((2,), g, dtype=torch.float64)
    sam.first_step()
    eps = w.detach() - 1.0
    assert torch.isfinite(eps).all()
    if moves:
        scaled = (eps / (1.0 + 0.01)) if adaptive else eps  # |T^-1 eps| = rho with T = |w| + eta
        assert float(scaled.norm()) == pytest.approx(0.05, rel=1e-9)
    else:
        assert float(eps.abs().max()) == 0.0


# ---------------------------------------------------------------- XGrad: steps >= 0; 0 steps predict theta itself
def test_xgrad_zero_steps_predicts_the_current_weights():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = optim.XGrad(torch.optim.SGD([w], lr=0.1, momentum=0.9), steps=0)
    w.grad = torch.ones_like(w)
    opt.step()
    after = w.detach().clone()
    with opt.predicted():
        assert torch.equal(w.detach(), after)
    with pytest.raises(ValueError, match="steps"):
        optim.XGrad(torch.optim.SGD([w], lr=0.1), steps=-1)


# ---------------------------------------------------------------- shared validation boundaries
@pytest.mark.parametrize(
    ("kwargs", "ok"),
    [
        (dict(lr=0.0), True),
        (dict(lr=-1e-12), False),
        (dict(betas=(0.0, 0.0)), True),
        (dict(betas=(below(1.0), below(1.0))), True),
        (dict(betas=(1.0, 0.999)), False),
        (dict(betas=(0.9, 1.0)), False),
        (dict(eps=1e-300), True),
        (dict(eps=0.0), False),
    ],
)
def test_adam_family_validation_boundaries(kwargs, ok):
    p = torch.nn.Parameter(torch.zeros(1))
    for cls in (optim.RAdam, optim.AdaBelief, optim.AdamP):
        if ok:
            cls([p], **kwargs)
        else:
            with pytest.raises(ValueError):
                cls([p], **kwargs)
