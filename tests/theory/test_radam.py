import numpy as np
import pytest
import sympy as sp

from theory import radam
from theory.radam import EXACT, FIRST_ORDER, R_T, RHO_T, rho_, rho_t_, t_, tau_

CHECKS = ["center_of_mass", "scaled_inv_chi2_moments", "exact_variance", "rectification", "adaptive_lr_monte_carlo"]


@pytest.fixture(scope="module")
def defaults():
    return {name: getattr(radam, name)() for name in CHECKS}


@pytest.mark.parametrize("name", CHECKS)
def test_paper_formulas_pass(defaults, name):
    result = defaults[name]
    assert result.symbolic_ok and result.numeric_ok and result.passed, result.note


def test_center_of_mass_rejects_rho_t_minus_one():
    result = radam.center_of_mass(formula=RHO_T - 1)
    assert not result.symbolic_ok and not result.numeric_ok and not result.passed


def test_center_of_mass_rejects_sign_error():
    beta2 = sp.Symbol("beta_2", positive=True)
    result = radam.center_of_mass(formula=RHO_T + 4 * t_ * beta2**t_ / (1 - beta2**t_))
    assert not result.symbolic_ok and not result.numeric_ok


@pytest.mark.parametrize(
    "kwargs",
    [
        {"formula": 2 * FIRST_ORDER},
        {"mean": rho_ * tau_**2 / (rho_ - 1)},
        {"variance": rho_**2 * tau_**4 / ((rho_ - 2) ** 2 * (rho_ - 4))},
    ],
)
def test_moments_reject_wrong_formulas(kwargs):
    result = radam.scaled_inv_chi2_moments(samples=100_000, **kwargs)
    assert not result.symbolic_ok and not result.numeric_ok


def test_exact_variance_rejects_sign_error():
    wrong = tau_**2 * (rho_ / (rho_ - 2) + rho_ * sp.gamma((rho_ - 1) / 2) ** 2 / (2 * sp.gamma(rho_ / 2) ** 2))
    result = radam.exact_variance(formula=wrong, samples=50_000)
    assert not result.symbolic_ok and not result.numeric_ok


def test_rectification_rejects_rho_t_minus_one():
    result = radam.rectification(formula=R_T.subs(rho_t_, rho_t_ - 1))
    assert not result.symbolic_ok and not result.numeric_ok


def test_adaptive_lr_rejects_rho_minus_one():
    result = radam.adaptive_lr_monte_carlo(formula=EXACT.subs(rho_, rho_ - 1), samples=10_000)
    assert not result.symbolic_ok and not result.numeric_ok


def test_first_order_is_poor_at_small_rho_and_the_note_says_so(defaults):
    result = defaults["exact_variance"]
    assert "first-order 0.3763 (+1" in defaults["adaptive_lr_monte_carlo"].note  # +100% or more at t = 6
    assert "0.8333 vs exact 0.252" in result.note
    assert float(radam.first_order_variance(5.0)) / 0.252 > 3


def test_variance_curves_values_and_shape():
    frame = radam.variance_curves(np.array([5.0, 6.0, 500.0]))
    assert set(frame.columns) == {"rho", "quantity", "value"}
    wide = frame.pivot(index="rho", columns="quantity", values="value")
    # hand values: first order 5/(2*3*1); exact 5/3 - 5*Gamma(2)^2/(2*Gamma(5/2)^2) with Gamma(5/2) = 3*sqrt(pi)/4
    assert wide.loc[5.0, "first_order"] == pytest.approx(5 / 6, rel=1e-14)
    assert wide.loc[5.0, "exact"] == pytest.approx(5 / 3 - 5 / (2 * 9 * np.pi / 16), rel=1e-12)
    assert np.allclose(wide["difference"], wide["first_order"] - wide["exact"])
    with pytest.raises(ValueError, match="rho"):
        radam.variance_curves(np.array([4.0]))


def test_simulated_variance_frame_and_rectified_start():
    frame = radam.simulated_adaptive_lr_variance(steps=12, samples=2000, seed=1)
    assert set(frame["quantity"]) == {"adam", "rectified", "rho_t"}
    # rho_5 = 4.996 > 4 with beta2 = 0.999: rectification starts at t = 5 under the paper's threshold 4
    assert frame[frame.quantity == "rectified"].t.min() == 5
    wide = frame.pivot(index="t", columns="quantity", values="value")
    assert (wide["rectified"].dropna() < wide.loc[wide["rectified"].notna(), "adam"]).all()
    with pytest.raises(ValueError, match="beta"):
        radam.simulated_adaptive_lr_variance(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="threshold"):
        radam.simulated_adaptive_lr_variance(threshold=3.0)
