"""optim.preconditioner: P of every registered family against its update, and the thresholds."""

import math

import pytest
import torch

import optim
from optim.preconditioner import adam_threshold, registered, stability
from optim.radam import rectification


def _stepped(optimizer_factory, steps=8, seed=0):
    """An optimizer after ``steps`` steps on a random quadratic, and its parameter."""
    generator = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64, generator=generator))
    a = torch.rand(5, dtype=torch.float64, generator=generator) + 0.5
    opt = optimizer_factory([p])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (a * p * p).sum()).backward()
        opt.step()
    return opt, p, a


@pytest.mark.parametrize(
    ("factory", "family"),
    [
        (lambda ps: torch.optim.Adam(ps, lr=0.01), "adam"),
        (lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.0), "adam"),
        (lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True), "amsgrad"),
        (lambda ps: optim.AdaM3(ps, lr=0.01), "adam3"),
        (lambda ps: optim.AdaBelief(ps, lr=0.01), "adabelief"),
        (lambda ps: optim.RAdam(ps, lr=0.01), "radam"),
        (lambda ps: torch.optim.RAdam(ps, lr=0.01), "radam"),
        (lambda ps: optim.AdaBelief(ps, lr=0.01, rectify=True), "adabelief_rect"),
    ],
)
def test_adam_type_last_step_is_lr_times_p_inverse_m(factory, family):
    # The last step was θ_t − θ_{t−1} = −η P⁻¹ m_t with P from the state after step t (bias corrections folded in).
    for steps in (3, 9):  # RAdam/AdaBelief(rectify): not rectified at t = 3, rectified at t = 9
        opt, p, a = _stepped(factory, steps - 1)
        before = p.detach().clone()
        opt.zero_grad()
        (0.5 * (a * p * p).sum()).backward()
        opt.step()
        P = stability(opt).preconditioner[p]
        m = opt.state[p]["exp_avg"]
        torch.testing.assert_close(p.detach() - before, -0.01 * m / P, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_step_is_lr_times_p_inverse_g(centered):
    opt, p, a = _stepped(lambda ps: torch.optim.RMSprop(ps, lr=0.01, centered=centered), 4)
    before = p.detach().clone()
    opt.zero_grad()
    (0.5 * (a * p * p).sum()).backward()
    grad = p.grad.clone()
    opt.step()
    torch.testing.assert_close(p.detach() - before, -0.01 * grad / stability(opt).preconditioner[p], rtol=1e-10, atol=0)


def test_adagrad_step_with_lr_decay_is_lr_times_p_inverse_g():
    opt, p, a = _stepped(lambda ps: torch.optim.Adagrad(ps, lr=0.1, lr_decay=0.3), 4)
    before = p.detach().clone()
    opt.zero_grad()
    (0.5 * (a * p * p).sum()).backward()
    grad = p.grad.clone()
    opt.step()
    torch.testing.assert_close(p.detach() - before, -0.1 * grad / stability(opt).preconditioner[p], rtol=1e-10, atol=0)


def test_adam_preconditioner_by_hand():
    opt, p, _ = _stepped(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-3), 6)
    v = opt.state[p]["exp_avg_sq"]
    expected = (1 - 0.8**6) * ((v / (1 - 0.99**6)).sqrt() + 1e-3)
    torch.testing.assert_close(stability(opt).preconditioner[p], expected, rtol=1e-14, atol=0)


def test_radam_rectified_branch_uses_r_t():
    opt, p, _ = _stepped(lambda ps: optim.RAdam(ps, lr=0.01), 9)
    assert opt.state[p]["rectified"]
    v = opt.state[p]["exp_avg_sq"]
    _, r_t = rectification(9, 0.999)
    expected = (1 - 0.9**9) * (v.sqrt() + 1e-8) / (r_t * math.sqrt(1 - 0.999**9))
    torch.testing.assert_close(stability(opt).preconditioner[p], expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    ("factory", "rule", "threshold"),
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.1), "gd", 20.0),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), "heavy_ball", 38.0),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.5), "heavy_ball", 76.0),
        (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), "nesterov", 3.8 / 0.28),
        (lambda ps: torch.optim.Adam(ps, lr=0.01), "adam", 3800.0),
        (lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.5, 0.999)), "adam", 600.0),
        (lambda ps: torch.optim.RMSprop(ps, lr=0.1, momentum=0.5), "rmsprop", 30.0),
        (lambda ps: torch.optim.RMSprop(ps, lr=0.1), "rmsprop", 20.0),
        (lambda ps: torch.optim.Adagrad(ps, lr=0.1), "adagrad", 20.0),
    ],
)
def test_thresholds(factory, rule, threshold):
    opt, _, _ = _stepped(factory, 1)
    found = stability(opt)
    assert found.rule == rule and found.threshold == pytest.approx(threshold, rel=1e-12)
    assert (found.preconditioner is None) == (rule in ("gd", "heavy_ball", "nesterov"))


def test_adam_threshold_is_38_over_lr():
    assert adam_threshold(0.5, 0.9) == pytest.approx(76.0, rel=1e-12)


def test_errors():
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="before its first step"):
        stability(torch.optim.Adam([p]))
    with pytest.raises(ValueError, match="differ in 'lr'"):
        stability(torch.optim.SGD([{"params": [p], "lr": 0.1}, {"params": [q], "lr": 0.2}]))
    with pytest.raises(TypeError, match="No stability model for SAM"):
        stability(optim.make("sam", [p]))
    assert torch.optim.Adam in registered() and optim.AdaM3 in registered()
