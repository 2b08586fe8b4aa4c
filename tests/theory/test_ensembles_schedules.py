import pytest
import sympy as sp

from theory import ensembles, schedules
from theory.ensembles import ENSEMBLE_ERROR, c_, k_, v_
from theory.schedules import COSINE, T_, eta_max_, eta_min_, t_


@pytest.mark.parametrize("check", [ensembles.ensemble_error, schedules.cosine_annealing])
def test_paper_formulas_pass(check):
    result = check()
    assert result.symbolic_ok and result.numeric_ok and result.passed, result.note


def test_ensemble_rejects_uncorrelated_formula_and_missing_k():
    for wrong in (v_ / k_, v_ / k_ + c_):
        result = ensembles.ensemble_error(formula=wrong, samples=20_000)
        assert not result.symbolic_ok and not result.numeric_ok
    assert ENSEMBLE_ERROR.subs({c_: v_}).simplify() == v_


def test_cosine_rejects_sign_error_and_double_frequency():
    wrong_sign = eta_min_ + (eta_max_ - eta_min_) * (1 - sp.cos(sp.pi * t_ / T_)) / 2
    double = COSINE.subs(t_, 2 * t_)
    for wrong in (wrong_sign, double):
        result = schedules.cosine_annealing(formula=wrong, steps=30)
        assert not result.symbolic_ok and not result.numeric_ok
