import pytest
import sympy as sp

from theory import adamp
from theory.adamp import GRADIENT_SCALE, P_, beta_, gamma_, k_, t_


@pytest.mark.parametrize("check", [adamp.scale_invariance, adamp.norm_growth])
def test_paper_formulas_pass(check):
    result = check()
    assert result.symbolic_ok and result.numeric_ok and result.passed, result.note


def test_scale_invariance_rejects_wrong_power():
    result = adamp.scale_invariance(formula=GRADIENT_SCALE**2)
    assert not result.symbolic_ok and not result.numeric_ok


@pytest.mark.parametrize("sign, factor", [(-1, 2), (1, 1)])
def test_norm_growth_rejects_sign_error_and_missing_factor_two(sign, factor):
    wrong = gamma_**2 * P_[t_] + sign * factor * gamma_**2 * sp.Sum(beta_ ** (t_ - k_) * P_[k_], (k_, 1, t_ - 1))
    result = adamp.norm_growth(formula=wrong, steps=5)
    assert not result.symbolic_ok and not result.numeric_ok
