import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate, stats

import optim
from landscape.adaptive_lr import (
    AdaptiveLR,
    adaptive_lr_state,
    adaptive_lr_variance_from_run,
    exact_mean,
    exact_variance,
    first_order_variance,
    rho,
    simulate_adaptive_lr,
)


@dataclass
class State:
    model: torch.nn.Module
    optimizer: Any
    step: int = 0
    epoch: int = 1
    loss: float = math.nan
    rows: list[dict[str, Any]] = field(default_factory=list)

    def log(self, quantity: str, value: float, **keys: Any) -> None:
        self.rows.append({"step": self.step, "epoch": self.epoch, "quantity": quantity, "value": value, **keys})


class Vector(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))


def run(optimizer_factory, gradients, callback, n=3):
    """Feed the given gradient sequence (one row per step) to the optimizer; the callback sees every step."""
    model = Vector(n)
    optimizer = optimizer_factory([model.theta])
    state = State(model, optimizer)
    for g in gradients:

        def closure(g=g):
            optimizer.zero_grad()
            loss = (model.theta * g).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        state.step += 1
        callback.on_step_end(state)
    return pd.DataFrame(state.rows), optimizer


def scaled_inverse_chi_moment(rho_t, power):
    """E[psi^power] for psi = sqrt(rho / X), X ~ chi2(rho), by quadrature."""
    upper = rho_t + 60 * math.sqrt(2 * rho_t)
    integrand = lambda x: (rho_t / x) ** (power / 2) * stats.chi2.pdf(x, rho_t)  # noqa: E731
    return integrate.quad(integrand, 0, upper, points=[rho_t], limit=500, epsabs=0, epsrel=1e-12)[0]


@pytest.mark.parametrize("rho_t", [5.0, 20.0, 200.0])
def test_exact_formulas_against_quadrature(rho_t):
    mean = scaled_inverse_chi_moment(rho_t, 1)
    variance = scaled_inverse_chi_moment(rho_t, 2) - mean**2
    assert exact_mean(rho_t) == pytest.approx(mean, rel=1e-8)
    assert exact_variance(rho_t) == pytest.approx(variance, rel=1e-6)
    assert exact_variance(rho_t, sigma=2.0) == pytest.approx(variance / 4, rel=1e-6)
    assert first_order_variance(rho_t) == pytest.approx(variance, rel=12 / rho_t)


def test_rho_values_and_domains():
    assert rho(0.999, 5) == pytest.approx(4.996, abs=5e-4)  # SPEC: first rectified step t = 5 under rho > 4
    assert rho(0.9, 10_000) == pytest.approx(19.0)
    assert np.isnan(exact_variance(2.0)) and np.isnan(first_order_variance(4.0))
    with pytest.raises(ValueError, match="beta2"):
        rho(1.0, 3)


def test_simulation_matches_exact_variance_at_large_rho():
    frame = simulate_adaptive_lr(beta2=0.99, steps=2000, trajectories=20_000, record=[1000, 1500, 2000], seed=0)
    assert (frame.rho > 198).all()
    z = (frame.empirical_var - frame.exact_var) / frame.standard_error
    assert (z.abs() < 4).all(), frame
    assert (frame.standard_error < 0.02 * frame.exact_var).all()


def test_simulation_transient_deviation_from_rho_t_is_visible():
    # rho_t matches the EMA's centre of mass, not its variance: mid-transient the formula overstates Var[psi]
    frame = simulate_adaptive_lr(beta2=0.99, steps=200, trajectories=20_000, record=[10, 200], seed=1)
    early, mid = frame.iloc[0], frame.iloc[1]
    assert abs(early.empirical_var - early.exact_var) < 4 * early.standard_error
    assert mid.exact_var > mid.empirical_var + 4 * mid.standard_error


def test_standard_error_matches_spread_over_seeds():
    frames = [simulate_adaptive_lr(beta2=0.9, steps=40, trajectories=2000, record=[40], seed=s) for s in range(30)]
    empirical = np.array([f.empirical_var.iloc[0] for f in frames])
    se = np.mean([f.standard_error.iloc[0] for f in frames])
    assert 0.7 < empirical.std(ddof=1) / se < 1.3


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (lambda p: torch.optim.Adam(p, lr=0.1), lambda g, t: 1 / g),
        (lambda p: torch.optim.AdamW(p, lr=0.1, amsgrad=True), lambda g, t: 1 / g),
        (lambda p: torch.optim.RAdam(p, lr=0.1), lambda g, t: 1 / g),
        (lambda p: optim.RAdam(p, lr=0.1), lambda g, t: 1 / g),
        (lambda p: optim.SAM(torch.optim.Adam(p, lr=0.1)), lambda g, t: 1 / g),
        (lambda p: torch.optim.RMSprop(p, lr=0.1, alpha=0.9), lambda g, t: 1 / (g * math.sqrt(1 - 0.9**t))),
        (lambda p: torch.optim.Adagrad(p, lr=0.1), lambda g, t: 1 / (g * math.sqrt(t))),
        (lambda p: optim.Expectigrad(p, lr=0.1), lambda g, t: 1 / g),
    ],
)
def test_psi_read_from_optimizer_state_for_constant_gradients(factory, expected):
    g = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    frame, optimizer = run(factory, g.repeat(3, 1), AdaptiveLR(every=1, quantiles=(0.0, 0.5), with_eps=False))
    psi = {t: np.array([expected(float(gi), t) for gi in g]) for t in (1, 2, 3)}
    found = adaptive_lr_state(optimizer, with_eps=False)
    ((values, t),) = found.values()
    assert t == 3
    np.testing.assert_allclose(values.numpy(), psi[3], rtol=1e-12)
    means = frame[frame.quantity == "psi_mean"].set_index("t").value
    variances = frame[frame.quantity == "psi_var"].set_index("t").value
    for step in (1, 2, 3):
        assert means[step] == pytest.approx(psi[step].mean(), rel=1e-12)
        assert variances[step] == pytest.approx(psi[step].var(ddof=1), rel=1e-12)
    quantiles = frame[(frame.quantity == "psi_quantile") & (frame.t == 3)].set_index("q").value
    assert quantiles[0.0] == pytest.approx(psi[3].min()) and quantiles[0.5] == pytest.approx(np.median(psi[3]))


def test_eps_enters_like_adams_denominator():
    g = torch.tensor([[1e-3, 1.0]], dtype=torch.float64)
    _, optimizer = run(lambda p: torch.optim.Adam(p, lr=0.1, eps=1e-3), g, AdaptiveLR(every=1), n=2)
    ((values, _),) = adaptive_lr_state(optimizer).values()
    np.testing.assert_allclose(values.numpy(), [1 / 2e-3, 1 / 1.001], rtol=1e-12)


def test_nothing_logged_for_sgd_and_bad_quantiles():
    frame, _ = run(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), torch.ones(2, 3), AdaptiveLR(every=1))
    assert frame.empty
    with pytest.raises(ValueError, match="quantiles"):
        AdaptiveLR(quantiles=(1.5,))


def test_run_with_gaussian_gradients_matches_simulation_and_formula_at_steady_state():
    # coordinates with i.i.d. N(0, 1) gradients are the simulation's independent trajectories
    generator = torch.Generator().manual_seed(0)
    gradients = (torch.randn(20_000, generator=generator, dtype=torch.float64) for _ in range(600))
    callback = AdaptiveLR(every=None, at=[5, 600], with_eps=False)
    frame, _ = run(lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.9, 0.99)), gradients, callback, n=20_000)
    result = adaptive_lr_variance_from_run(frame, beta2=0.99).set_index("t")
    simulated = simulate_adaptive_lr(beta2=0.99, steps=600, trajectories=20_000, record=[5, 600], seed=1)
    simulated = simulated.set_index("step")
    for t in (5, 600):
        se = simulated.standard_error[t]
        assert result.rho[t] == pytest.approx(simulated.rho[t])
        assert abs(result.empirical_var[t] - simulated.empirical_var[t]) < 4 * math.sqrt(2) * se
    assert abs(result.empirical_var[600] - result.exact_var[600]) < 4 * simulated.standard_error[600]
    assert result.empirical_cv2[600] == pytest.approx(result.exact_cv2[600], rel=0.05)
    known = adaptive_lr_variance_from_run(frame, beta2=0.99, sigma=1.0).set_index("t")
    assert known.exact_var[600] == pytest.approx(exact_variance(rho(0.99, 600)))
    assert known.first_order_var[600] == pytest.approx(first_order_variance(rho(0.99, 600)))
    with pytest.raises(ValueError, match="AdaptiveLR"):
        adaptive_lr_variance_from_run(frame.drop(columns="t"), beta2=0.99)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_state_is_read_in_float64(dtype):
    """v / (1 - β₂ᵗ) was divided in the state's dtype: float16 overflowed for |g| = 300 at t = 1 and gave ψ = 0."""
    p = torch.nn.Parameter(torch.tensor([300.0, 1.0, 1e-3], dtype=dtype))
    optimizer = torch.optim.Adam([p], lr=1e-3)
    p.grad = p.detach().clone()
    optimizer.step()
    psi, t = adaptive_lr_state(optimizer)[p]
    v = optimizer.state[p]["exp_avg_sq"].double()
    assert t == 1
    assert torch.equal(psi, 1 / ((v / (1 - 0.999)).sqrt() + 1e-8))
    assert psi[0].item() == pytest.approx(1 / 300, rel=1e-2)  # v holds (1 - β₂)g² to the dtype's rounding
