"""SAM/ASAM, XGrad and ExtraGradient against hand computations; wrapper plumbing (state_dict, schedulers)."""

import copy
import math

import pytest
import torch

import optim

A = [1.0, 3.0]
THETA0 = [1.0, -2.0]


def quadratic(p):
    return 0.5 * (torch.tensor(A, dtype=p.dtype) * p**2).sum()


def closure_for(opt, p):
    def closure():
        opt.zero_grad()
        loss = quadratic(p)
        loss.backward()
        return loss

    return closure


def grad_ref(th):
    return [a * x for a, x in zip(A, th, strict=True)]


def norm(x):
    return math.sqrt(sum(v * v for v in x))


# ---------------------------------------------------------------- SAM
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_by_hand(adaptive):
    lr, rho, eta = 0.1, 0.05, 0.01
    th, out = list(THETA0), []
    for _ in range(4):
        g = grad_ref(th)
        t = [abs(x) + eta if adaptive else 1.0 for x in th]
        tg_norm = norm([ti * gi for ti, gi in zip(t, g, strict=True)])
        e = [rho * ti * ti * gi / tg_norm for ti, gi in zip(t, g, strict=True)]
        g_perturbed = grad_ref([x + ei for x, ei in zip(th, e, strict=True)])
        th = [x - lr * gp for x, gp in zip(th, g_perturbed, strict=True)]
        out.append(th)

    p = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    sam = optim.SAM(torch.optim.SGD([p], lr=lr), rho=rho, adaptive=adaptive, eta=eta)
    for expected in out:
        loss = sam.step(closure_for(sam, p))
        assert torch.allclose(p, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-14)
    stats = sam.state["global"]
    assert stats["loss"] == pytest.approx(quadratic(torch.tensor(out[-2], dtype=torch.float64)).item(), abs=1e-14)
    assert stats["loss_rise"] == pytest.approx(stats["loss_perturbed"] - loss.item(), abs=1e-15)
    assert stats["loss_rise"] > 0


def test_sam_perturbation_has_norm_rho():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    sam = optim.SAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.07)
    points = []

    def closure():
        sam.zero_grad()
        points.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        sam.step(closure)
        assert torch.linalg.vector_norm(points[-1] - points[-2]).item() == pytest.approx(0.07, rel=1e-12)
        assert sam.state["global"]["e_norm"] == pytest.approx(0.07, rel=1e-12)


def test_sam_manual_half_steps_equal_step_and_restore_exactly():
    p = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    q = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    auto = optim.SAM(torch.optim.SGD([p], lr=0.1, momentum=0.9))
    manual = optim.SAM(torch.optim.SGD([q], lr=0.1, momentum=0.9))
    for _ in range(3):
        auto.step(closure_for(auto, p))
        closure_for(manual, q)()
        start = q.detach().clone()
        manual.first_step()
        closure_for(manual, q)()
        point = manual.state[q]["point"]
        assert torch.equal(point, start)
        manual.second_step()
        assert "point" not in manual.state[q]
    assert torch.equal(p, q)


def test_sam_state_dict_holds_base_momentum_and_scheduler_drives_it():
    p = torch.nn.Parameter(torch.tensor(THETA0))
    sam = optim.SAM(torch.optim.SGD([p], lr=0.1, momentum=0.9))
    scheduler = torch.optim.lr_scheduler.StepLR(sam, step_size=1, gamma=0.5)
    sam.step(closure_for(sam, p))
    scheduler.step()
    assert sam.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    state = sam.state_dict()
    assert "momentum_buffer" in state["base_optimizer"]["state"][0]
    assert state["base_optimizer"]["param_groups"][0]["sam_rho"] == 0.05
    assert optim.inspect(sam)["sam_global_e_norm"].iloc[0] == pytest.approx(0.05)


def test_asam_group_without_adaptive():
    w = torch.nn.Parameter(torch.tensor([[1.0, -2.0]], dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    base = torch.optim.SGD([{"params": [w]}, {"params": [b], "sam_adaptive": False}], lr=0.1)
    asam = optim.SAM(base, rho=0.5, adaptive=True)
    assert [g["sam_adaptive"] for g in asam.param_groups] == [True, False]
    w.grad = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    b.grad = torch.tensor([2.0], dtype=torch.float64)
    w0, b0 = w.detach().clone(), b.detach().clone()
    asam.first_step()
    t = w0.abs() + 0.01
    scaled_norm = math.sqrt(((t * w.grad) ** 2).sum().item() + 4.0)
    assert torch.allclose(w - w0, 0.5 * t**2 * w.grad / scaled_norm, atol=1e-15)
    assert torch.allclose(b - b0, 0.5 * b.grad / scaled_norm, atol=1e-15)


# ---------------------------------------------------------------- XGrad
BASES = {
    "sgdm": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    # torch's multi-tensor Nesterov SGD overwrites .grad with g + μb: XGrad must keep g from before the step
    "nesterov_foreach": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, foreach=True),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01),
    "rmsprop_momentum": lambda ps: torch.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "amsgrad": lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01),
    "adabelief": lambda ps: optim.AdaBelief(ps, lr=0.01),
    "adabelief_rectified": lambda ps: optim.AdaBelief(ps, lr=0.01, rectify=True),
    "adam3": lambda ps: optim.AdaM3(ps, lr=0.001),
    "radam": lambda ps: optim.RAdam(ps, lr=0.01),
}


def _nonquadratic(p):
    return (p**4).sum() + (p[0] * p[1]).sin()


@pytest.mark.parametrize("base", list(BASES))
def test_xgrad_steps_zero_is_base_bitwise(base):
    p = torch.nn.Parameter(torch.tensor([1.0, -0.7, 0.3], dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    plain = BASES[base]([p])
    wrapped = optim.XGrad(BASES[base]([q]), steps=0)
    for _ in range(10):
        for param, opt in ((p, plain), (q, wrapped)):

            def closure(param=param, opt=opt):
                opt.zero_grad()
                loss = _nonquadratic(param)
                loss.backward()
                return loss

            opt.step(closure)
    assert torch.equal(p, q)


@pytest.mark.parametrize("base", list(BASES))
def test_xgrad_prediction_is_the_last_update(base):
    """θ̂ − θ_t = −γ s Δ with Δ the step the base optimizer just took (no weight decay here): checks every rule."""
    p = torch.nn.Parameter(torch.tensor([1.0, -0.7, 0.3], dtype=torch.float64))
    xgrad = optim.XGrad(BASES[base]([p]), steps=2)
    for _ in range(7):
        before = p.detach().clone()

        def closure():
            xgrad.zero_grad()
            loss = _nonquadratic(p)
            loss.backward()
            return loss

        xgrad.step(closure)
    last_update = p.detach() - before
    if base == "adamw":  # remove AdamW's decoupled decay θ(1 − γλ) from the observed step
        last_update += 0.01 * 0.01 * before
    with xgrad.predicted():
        predicted = p.detach().clone()
    assert torch.allclose(predicted - p.detach(), 2 * last_update, rtol=1e-9, atol=1e-15)


def test_xgrad_sgdm_by_hand():
    lr, mu, s = 0.1, 0.9, 2
    th, b, out = list(THETA0), None, []
    for _ in range(4):
        predicted = th if b is None else [x - lr * s * bi for x, bi in zip(th, b, strict=True)]
        g = grad_ref(predicted)
        b = list(g) if b is None else [mu * bi + gi for bi, gi in zip(b, g, strict=True)]
        th = [x - lr * bi for x, bi in zip(th, b, strict=True)]
        out.append(th)
    p = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    xgrad = optim.XGrad(torch.optim.SGD([p], lr=lr, momentum=mu), steps=s)
    for expected in out:
        xgrad.step(closure_for(xgrad, p))
        assert torch.allclose(p, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-14)


def test_xgrad_adam_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    th, m, v, out = list(THETA0), [0.0, 0.0], [0.0, 0.0], []
    for t in range(1, 5):
        if t == 1:
            predicted = th
        else:
            k = t - 1
            predicted = [th[i] - lr * (m[i] / (1 - b1**k)) / (math.sqrt(v[i] / (1 - b2**k)) + eps) for i in range(2)]
        g = grad_ref(predicted)
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            th[i] -= lr * (m[i] / (1 - b1**t)) / (math.sqrt(v[i] / (1 - b2**t)) + eps)
        out.append(list(th))
    p = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    xgrad = optim.XGrad(torch.optim.Adam([p], lr=lr))
    for expected in out:
        xgrad.step(closure_for(xgrad, p))
        assert torch.allclose(p, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-13)


def test_xgrad_predicted_context_restores_bitwise_and_manual_loop_matches():
    p = torch.nn.Parameter(torch.tensor([0.3, -1.1], dtype=torch.float32))
    q = torch.nn.Parameter(p.detach().clone())
    auto = optim.XGrad(torch.optim.Adam([p], lr=0.1))
    manual = optim.XGrad(torch.optim.Adam([q], lr=0.1))
    for _ in range(5):
        auto.step(closure_for(auto, p))
        start = q.detach().clone()
        with manual.predicted():
            manual.zero_grad()
            quadratic(q).backward()
        assert torch.equal(q, start)
        manual.step()
    assert torch.equal(p, q)
    assert manual.state["global"]["displacement_norm"] > 0


# ---------------------------------------------------------------- ExtraGradient
def test_extragradient_sgd_by_hand():
    lr = 0.1
    th, out = list(THETA0), []
    for _ in range(4):
        extrapolated = [x - lr * g for x, g in zip(th, grad_ref(th), strict=True)]
        th = [x - lr * g for x, g in zip(th, grad_ref(extrapolated), strict=True)]
        out.append(th)
    p = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    eg = optim.ExtraGradient(torch.optim.SGD([p], lr=lr))
    for expected in out:
        loss = eg.step(closure_for(eg, p))
        assert torch.allclose(p, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    assert loss.item() == pytest.approx(quadratic(torch.tensor(out[-2], dtype=torch.float64)).item())


def test_extragradient_bilinear_game_converges_where_simultaneous_gd_spirals_out():
    def field(w):
        return torch.stack([w[1], -w[0]]).detach()  # min_x max_y x*y

    w = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    eg = optim.ExtraGradient(torch.optim.SGD([w], lr=0.3))

    def closure():
        w.grad = field(w)
        return 0.0

    for _ in range(100):
        eg.step(closure)
    assert w.norm().item() < 0.1
    v = torch.nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    gd = torch.optim.SGD([v], lr=0.3)
    for _ in range(100):
        v.grad = field(v)
        gd.step()
    assert v.norm().item() > 10


def test_extragradient_checkpoint_between_half_steps():
    p = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    eg = optim.ExtraGradient(torch.optim.Adam([p], lr=0.1))
    eg.step(closure_for(eg, p))
    closure_for(eg, p)()
    eg.extrapolate()
    saved = copy.deepcopy(eg.state_dict())
    saved_p = p.detach().clone()
    closure_for(eg, p)()
    eg.step()
    expected = p.detach().clone()

    q = torch.nn.Parameter(saved_p)
    resumed = optim.ExtraGradient(torch.optim.Adam([q], lr=0.1))
    resumed.load_state_dict(saved)
    closure_for(resumed, q)()
    resumed.step()
    assert torch.equal(q, expected)
    with pytest.raises(RuntimeError, match="extrapolate"):
        resumed.step()


@pytest.mark.parametrize("base", list(BASES))
def test_xgrad_resumes_bitwise_for_every_base(base):
    def closure_on(opt, param):
        def closure():
            opt.zero_grad()
            loss = _nonquadratic(param)
            loss.backward()
            return loss

        return closure

    p = torch.nn.Parameter(torch.tensor([1.0, -0.7, 0.3], dtype=torch.float64))
    xgrad = optim.XGrad(BASES[base]([p]), steps=2)
    for _ in range(4):
        xgrad.step(closure_on(xgrad, p))
    saved, saved_p = copy.deepcopy(xgrad.state_dict()), p.detach().clone()
    for _ in range(4):
        xgrad.step(closure_on(xgrad, p))
    q = torch.nn.Parameter(saved_p)
    resumed = optim.XGrad(BASES[base]([q]), steps=2)
    resumed.load_state_dict(saved)
    for _ in range(4):
        resumed.step(closure_on(resumed, q))
    assert torch.equal(p, q)


# ---------------------------------------------------------------- all wrappers
@pytest.mark.parametrize(
    ("wrap", "expected"),
    [(optim.SAM, 0.4465), (optim.XGrad, 0.5), (optim.ExtraGradient, 0.2214)],
    ids=["SAM", "XGrad", "ExtraGradient"],
)
def test_a_group_added_to_the_base_after_wrapping_takes_the_wrappers_defaults(wrap, expected):
    """Momentum SGD (γ = 0.1, μ = 0.9) on Σ w² + Σ v², every coordinate 1, v's group added to the base after
    wrapping (it raised KeyError 'sam_adaptive' / 'xgrad_steps'). By hand, g = 2θ, two steps: SAM (ρ = 0.05, four
    equal coordinates: ε̂ = 0.025 each) 1 → 0.795 → 0.4465; XGrad (θ̂ = θ - γb) 1 → 0.8 → 0.5; ExtraGradient
    (b updated at θ̃ too) 1 → 0.66 → 0.2214."""
    w, v = (
        torch.nn.Parameter(torch.ones(2, dtype=torch.float64)),
        torch.nn.Parameter(torch.ones(2, dtype=torch.float64)),
    )
    base = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    opt = wrap(base)
    base.add_param_group({"params": [v]})

    def closure():
        opt.zero_grad()
        loss = (w**2).sum() + (v**2).sum()
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
    assert w.tolist() == pytest.approx([expected] * 2, rel=1e-12)
    assert v.tolist() == pytest.approx([expected] * 2, rel=1e-12)
    assert all(base.param_groups[1][key] == default for key, default in opt.defaults.items())


def _embedding_closure(opt, emb):
    def closure():
        opt.zero_grad()
        loss = emb(torch.tensor([1, 2])).pow(2).sum()
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("wrap", [optim.SAM, optim.XGrad], ids=["SAM", "XGrad"])
def test_sparse_gradients_are_refused_by_name_before_anything_moves(wrap):
    """An nn.Embedding(sparse=True) under momentum SGD (which takes sparse gradients): SAM's and XGrad's norms
    raised NotImplementedError from deep in torch (XGrad's after moving θ to θ̂); now a RuntimeError naming the
    wrapper, θ as it was. XGrad also refuses a sparse Δ left by a base step taken without it."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(4, 2, sparse=True)
    base = torch.optim.SGD(emb.parameters(), lr=0.1, momentum=0.9)
    opt = wrap(base)
    closure = _embedding_closure(opt, emb)
    start = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match=f"{wrap.__name__} does not support sparse gradients"):
        opt.step(closure)
    assert torch.equal(emb.weight, start)
    if wrap is optim.XGrad:
        base.step()  # the sparse momentum buffer is XGrad's Δ
        start = emb.weight.detach().clone()
        with pytest.raises(RuntimeError, match="XGrad does not support sparse gradients"):
            opt.step(closure)
        assert torch.equal(emb.weight, start)


def test_xgrad_restores_the_weights_when_moving_to_the_prediction_fails(monkeypatch):
    """Two tensors, one per list (foreach=False): the second's displacement norm raises after the first tensor
    would have moved; every tensor must be back at θ_t bit for bit."""
    p, q = torch.nn.Parameter(torch.tensor([1.0, -2.0])), torch.nn.Parameter(torch.tensor([0.5]))
    xgrad = optim.XGrad(torch.optim.SGD([p, q], lr=0.1, momentum=0.9), foreach=False)

    def closure():
        xgrad.zero_grad()
        loss = (p**2).sum() + (q**2).sum()
        loss.backward()
        return loss

    xgrad.step(closure)
    start = [p.detach().clone(), q.detach().clone()]
    norms = torch._foreach_norm
    calls = []

    def failing_norm(tensors, *args, **kwargs):
        calls.append(len(tensors))
        if len(calls) == 2:
            raise RuntimeError("norm failed")
        return norms(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", failing_norm)
    with pytest.raises(RuntimeError, match="norm failed"):
        xgrad.step(closure)
    assert torch.equal(p, start[0]) and torch.equal(q, start[1])


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_perturbs_by_rho_where_the_gradient_norm_overflows_float32(adaptive, foreach):
    """1000 float32 gradients of 1e20 (finite; ‖g‖ = 3.2e21, whose square overflows float32): ‖g‖ was inf, ε̂ = 0
    and e_norm NaN. By hand at w = 0, with T = 1 (SAM) or η = 0.01 (ASAM): ε̂_i = ρT²g/(Tg√1000) = ρT/√1000 and
    ‖ε̂‖ = ρT."""
    rho, t = 0.05, (0.01 if adaptive else 1.0)
    w = torch.nn.Parameter(torch.zeros(1000))
    sam = optim.SAM(torch.optim.SGD([w], lr=0.0), rho=rho, adaptive=adaptive, foreach=foreach)
    w.grad = torch.full((1000,), 1e20)
    sam.first_step()
    assert w.detach() == pytest.approx(torch.full((1000,), rho * t / math.sqrt(1000)), rel=1e-6)
    stats = sam.state["global"]
    assert stats["e_norm"] == pytest.approx(rho * t, rel=1e-6)
    assert stats["grad_norm"] == pytest.approx(1e20 * math.sqrt(1000), rel=1e-6)
    assert sam.state[w]["e_norm"] == pytest.approx(rho * t, rel=1e-6)
