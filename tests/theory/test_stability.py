import pytest
import sympy as sp

from theory import stability
from theory.stability import ADAM, GD, HEAVY_BALL, NESTEROV, beta1_, beta2_, beta_, eta_


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("gd", GD), ("heavy_ball", HEAVY_BALL), ("nesterov", NESTEROV), ("adam", ADAM * stability.p_)],
)
def test_derived_thresholds(rule, expected):
    assert sp.simplify(stability.derived_threshold(rule) - expected) == 0


def test_nesterov_threshold_is_not_the_heavy_ball_one():
    # (2 + 2*0.9)/((1 + 1.8)*0.1) = 13.571..., far below heavy ball's 38 at the same lr and momentum.
    value = float(stability.derived_threshold("nesterov").subs({eta_: 0.1, beta_: 0.9}))
    assert value == pytest.approx(3.8 / 0.28, rel=1e-12)


@pytest.mark.parametrize(
    "check",
    [
        stability.gd_threshold,
        stability.heavy_ball_threshold,
        stability.nesterov_threshold,
        stability.adam_threshold,
        stability.tracker_preconditioned_sharpness,
    ],
)
def test_checks_pass(check):
    result = check()
    assert result.symbolic_ok and result.numeric_ok and result.passed, result.note


def test_gd_rejects_wrong_factor():
    result = stability.gd_threshold(formula=4 / eta_, steps=300)
    assert not result.symbolic_ok and not result.numeric_ok


def test_heavy_ball_rejects_wrong_sign():
    result = stability.heavy_ball_threshold(formula=(2 - 2 * beta_) / eta_, steps=300)
    assert not result.symbolic_ok and not result.numeric_ok


def test_nesterov_rejects_the_heavy_ball_formula():
    result = stability.nesterov_threshold(formula=HEAVY_BALL, steps=300)
    assert not result.symbolic_ok and not result.numeric_ok


def test_adam_rejects_beta2_instead_of_beta1():
    result = stability.adam_threshold(formula=ADAM.subs(beta1_, beta2_), steps=300)
    assert not result.symbolic_ok and not result.numeric_ok


def test_adam_rejects_missing_ema_factor():
    result = stability.adam_threshold(formula=(2 + 2 * beta1_) / eta_, steps=300)
    assert not result.symbolic_ok and not result.numeric_ok


def test_tracker_check_rejects_wrong_exponent():
    result = stability.tracker_preconditioned_sharpness(exponent=sp.Rational(1, 2), steps=3)
    assert not result.symbolic_ok and not result.numeric_ok
