"""Float64 reference values derived by hand from the spec formulas, in plain Python floats.

Each optimizer is fed a fixed sequence of gradients (``p.grad`` set directly), and a few lines of scalar Python
that transcribe the formula of each paper compute the expected parameters after every step.
"""

import math

import pytest
import torch

import optim

THETA0 = [1.0, -2.0, 0.5]
# The third coordinate never sees a gradient (Expectigrad's 0/0 case).
GRADS = [
    [0.5, -1.0, 0.0],
    [0.2, 0.4, 0.0],
    [-0.3, 0.1, 0.0],
    [1.0, -0.5, 0.0],
    [0.1, 0.2, 0.0],
    [-0.6, 0.3, 0.0],
    [0.4, -0.2, 0.0],
]
TOL = 1e-12


def run_fed(factory, grads=GRADS, theta0=THETA0):
    p = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
    opt = factory([p])
    trajectory = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        trajectory.append(p.tolist())
    return trajectory, opt, p


def assert_close(got, expected, tol=TOL):
    for row_got, row_expected in zip(got, expected, strict=True):
        for a, b in zip(row_got, row_expected, strict=True):
            assert abs(a - b) <= tol * max(1.0, abs(b)), (got, expected)


# ---------------------------------------------------------------- RAdam
def radam_ref(lr, b1, b2, eps, wd, decoupled, threshold, degenerate):
    th, m, v = list(THETA0), [0.0] * 3, [0.0] * 3
    rho_inf = 2 / (1 - b2) - 1
    out = []
    for t, g in enumerate(GRADS, 1):
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        rect = rho > threshold
        skip = degenerate == "skip" and not rect
        for i in range(3):
            gi = g[i]
            if wd and decoupled and not skip:
                th[i] *= 1 - lr * wd
            if wd and not decoupled:
                gi += wd * th[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            if skip:
                continue
            m_hat = m[i] / (1 - b1**t)
            if rect:
                r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                th[i] -= lr * r * m_hat * math.sqrt(1 - b2**t) / (math.sqrt(v[i]) + eps)
            else:
                th[i] -= lr * m_hat
        out.append(list(th))
    return out


@pytest.mark.parametrize("threshold", [4.0, 5.0])
@pytest.mark.parametrize("degenerate", ["sgd", "skip"])
@pytest.mark.parametrize(("wd", "decoupled"), [(0.0, False), (0.1, False), (0.1, True)])
def test_radam_by_hand(threshold, degenerate, wd, decoupled):
    kwargs = dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    got, opt, p = run_fed(
        lambda ps: optim.RAdam(
            ps, **kwargs, decoupled_weight_decay=decoupled, threshold=threshold, degenerate=degenerate
        )
    )
    assert_close(got, radam_ref(0.1, 0.9, 0.999, 1e-8, wd, decoupled, threshold, degenerate))


def test_radam_first_rectified_step():
    def first_rectified(**kwargs):
        p = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
        opt = optim.RAdam([p], **kwargs)
        for t in range(1, 10):
            p.grad = torch.ones_like(p)
            opt.step()
            if opt.state[p]["rectified"]:
                assert not math.isnan(opt.state[p]["r_t"])
                return t, opt.state[p]["rho_t"]
            assert math.isnan(opt.state[p]["r_t"])
        raise AssertionError("never rectified")

    t4, rho5 = first_rectified(threshold=4.0)
    assert t4 == 5 and abs(rho5 - 4.996) < 1e-3
    assert first_rectified()[0] == 6
    assert first_rectified(degenerate="skip")[0] == 6


@pytest.mark.parametrize(("wd", "decoupled"), [(0.0, False), (0.1, False), (0.1, True)])
def test_radam_equals_torch(wd, decoupled):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    w2 = torch.nn.Parameter(w.detach().clone())
    ours = optim.RAdam([w], lr=0.01, weight_decay=wd, decoupled_weight_decay=decoupled)
    theirs = torch.optim.RAdam([w2], lr=0.01, weight_decay=wd, decoupled_weight_decay=decoupled)
    for _ in range(30):
        for p, opt in ((w, ours), (w2, theirs)):
            opt.zero_grad()
            (p**4).sum().backward()
            opt.step()
    assert torch.allclose(w, w2, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- Adam-2k
def test_adam2k_by_hand():
    lr, b1, b2, eps, k = 0.1, 0.9, 0.999, 1e-8, 3
    th, m, v, out = list(THETA0), [0.0] * 3, [0.0] * 3, []
    for t, g in enumerate(GRADS, 1):
        for i in range(3):
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            if t > k:
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                th[i] -= lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m[i] / (math.sqrt(v[i]) + eps)
        out.append(list(th))
    got, opt, p = run_fed(lambda ps: optim.Adam2k(ps, lr=lr, freeze_steps=k))
    assert_close(got, out)
    assert got[2] == THETA0 and got[3] != THETA0


# ---------------------------------------------------------------- AdaBelief
@pytest.mark.parametrize(("wd", "decoupled"), [(0.0, True), (0.1, True), (0.1, False)])
def test_adabelief_by_hand(wd, decoupled):
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-16
    th, m, s, out = list(THETA0), [0.0] * 3, [0.0] * 3, []
    for t, g in enumerate(GRADS, 1):
        for i in range(3):
            gi = g[i]
            if wd and decoupled:
                th[i] *= 1 - lr * wd
            if wd and not decoupled:
                gi += wd * th[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            s[i] = b2 * s[i] + (1 - b2) * (gi - m[i]) ** 2 + eps
            th[i] -= lr / (1 - b1**t) * m[i] / (math.sqrt(s[i]) / math.sqrt(1 - b2**t) + eps)
        out.append(list(th))
    got, _, _ = run_fed(lambda ps: optim.AdaBelief(ps, lr=lr, weight_decay=wd, decoupled=decoupled))
    assert_close(got, out)


def test_adabelief_rectified_by_hand():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-16
    rho_inf = 2 / (1 - b2) - 1
    th, m, s, out = list(THETA0), [0.0] * 3, [0.0] * 3, []
    for t, g in enumerate(GRADS, 1):
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        for i in range(3):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            s[i] = b2 * s[i] + (1 - b2) * (g[i] - m[i]) ** 2 + eps
            if rho >= 5:
                r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                th[i] -= lr * r * math.sqrt(1 - b2**t) / (1 - b1**t) * m[i] / (math.sqrt(s[i]) + eps)
            else:
                th[i] -= lr * m[i] / (1 - b1**t)
        out.append(list(th))
    got, opt, p = run_fed(lambda ps: optim.AdaBelief(ps, lr=lr, rectify=True))
    assert_close(got, out)
    assert opt.state[p]["rectified"]


# ---------------------------------------------------------------- AdaM3
def test_adam3_by_hand():
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-16, 0.1
    th, m, v, out = list(THETA0), [0.0] * 3, [0.0] * 3, []
    for t, g in enumerate(GRADS, 1):
        for i in range(3):
            th[i] *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * m[i] ** 2 + eps
            th[i] -= lr / (1 - b1**t) * m[i] / (math.sqrt(v[i]) / math.sqrt(1 - b2**t))
        out.append(list(th))
    got, _, _ = run_fed(lambda ps: optim.AdaM3(ps, lr=lr, weight_decay=wd))
    assert_close(got, out)
    # early steps are sign-like: the first is γ/(1-β₁)·sign(g) up to ε (m/√(m²(1-β₂))·√(1-β₂) = ±1)
    first_steps = [THETA0[i] * (1 - lr * wd) - got[0][i] for i in range(2)]
    assert all(abs(step - lr / (1 - b1) * math.copysign(1, GRADS[0][i])) < 1e-9 for i, step in enumerate(first_steps))


# ---------------------------------------------------------------- Expectigrad
@pytest.mark.parametrize("beta", [0.9, 0.0])
@pytest.mark.parametrize("sparse", [True, False])
def test_expectigrad_by_hand(beta, sparse):
    lr, eps = 0.1, 1e-8
    grads = [list(g) for g in GRADS]
    grads[1][0] = 0.0  # a zero gradient in an otherwise active coordinate: sparse and dense counters differ
    th, s, n, m, out = list(THETA0), [0.0] * 3, [0] * 3, [0.0] * 3, []
    for t, g in enumerate(grads, 1):
        for i in range(3):
            s[i] += g[i] ** 2
            n[i] += (g[i] != 0) if sparse else 1
            a = s[i] / n[i] if n[i] > 0 else 0.0
            u = g[i] / (math.sqrt(a) + eps)
            if beta > 0:
                m[i] = beta * m[i] + (1 - beta) * u
                th[i] -= lr / (1 - beta**t) * m[i]
            else:
                th[i] -= lr * u
        out.append(list(th))
    got, opt, p = run_fed(lambda ps: optim.Expectigrad(ps, lr=lr, beta=beta, sparse_counter=sparse), grads=grads)
    assert_close(got, out)


def test_expectigrad_zero_over_zero_and_nan():
    got, opt, p = run_fed(lambda ps: optim.Expectigrad(ps, lr=0.1))
    assert all(row[2] == THETA0[2] for row in got)  # always-zero coordinate: exactly no update
    assert all(torch.isfinite(v).all() for v in opt.state[p].values() if isinstance(v, torch.Tensor))
    p.grad = torch.tensor([float("nan"), 0.0, 0.0], dtype=torch.float64)
    opt.step()
    assert math.isnan(p[0].item())  # a NaN gradient is not masked into a silent step
    assert p[2].item() == THETA0[2]


# ---------------------------------------------------------------- AdamP and SGDP (no projection: 1-D)
@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_one_dim_by_hand(nesterov):
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.1
    th, m, v, out = list(THETA0), [0.0] * 3, [0.0] * 3, []
    for t, g in enumerate(GRADS, 1):
        for i in range(3):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            denom = math.sqrt(v[i]) / math.sqrt(1 - b2**t) + eps
            u = (b1 * m[i] + (1 - b1) * g[i]) / denom if nesterov else m[i] / denom
            th[i] *= 1 - lr * wd  # 1-D tensors are never projected: wd_ratio does not apply
            th[i] -= lr / (1 - b1**t) * u
        out.append(list(th))
    got, opt, p = run_fed(lambda ps: optim.AdamP(ps, lr=lr, weight_decay=wd, nesterov=nesterov))
    assert_close(got, out)
    assert opt.state[p]["projection"] == "none"


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_one_dim_by_hand(nesterov):
    lr, mu, tau, wd = 0.1, 0.9, 0.0 if nesterov else 0.2, 0.01
    th, b, out = list(THETA0), [0.0] * 3, []
    for g in GRADS:
        for i in range(3):
            b[i] = mu * b[i] + (1 - tau) * g[i]
            d = g[i] + mu * b[i] if nesterov else b[i]
            th[i] *= 1 - lr * wd / (1 - mu)
            th[i] -= lr * d
        out.append(list(th))
    got, _, _ = run_fed(
        lambda ps: optim.SGDP(ps, lr=lr, momentum=mu, dampening=tau, weight_decay=wd, nesterov=nesterov)
    )
    assert_close(got, out)


def _project_row(theta, u, eps):
    norm = math.sqrt(sum(x * x for x in theta))
    unit = [x / (norm + eps) for x in theta]
    coefficient = sum(a * b for a, b in zip(unit, u, strict=True))
    return [b - a * coefficient for a, b in zip(unit, u, strict=True)]


def test_adamp_channel_projection_by_hand():
    """One row, gradients orthogonal to θ: |cos| = 0 < δ/√2, so every step projects (wd scaled by wd_ratio)."""
    lr, b1, b2, eps, wd, wd_ratio = 0.1, 0.9, 0.999, 1e-8, 0.1, 0.1
    th, m, v, out = [3.0, 4.0], [0.0, 0.0], [0.0, 0.0], []
    grads = []
    for t in range(1, 5):
        g = [-th[1] * 0.5 * t, th[0] * 0.5 * t]  # orthogonal to the current θ
        grads.append(g)
        for i in range(2):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
        u = [m[i] / (math.sqrt(v[i]) / math.sqrt(1 - b2**t) + eps) for i in range(2)]
        u = _project_row(th, u, eps)
        th = [x * (1 - lr * wd * wd_ratio) for x in th]
        th = [x - lr / (1 - b1**t) * ui for x, ui in zip(th, u, strict=True)]
        out.append([list(th)])

    p = torch.nn.Parameter(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    opt = optim.AdamP([p], lr=lr, weight_decay=wd, wd_ratio=wd_ratio)
    got = []
    for g in grads:
        # the optimizer sees the same gradients the hand computation used (they depend on θ only through it)
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        got.append(p.tolist())
        assert opt.state[p]["projection"] == "channel"
        assert opt.state[p]["max_cosine"] < 1e-12
    for a, b in zip(got, out, strict=True):
        assert_close(a, b)
