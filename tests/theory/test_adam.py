import pytest

from theory import adam
from theory.adam import BIAS, RATIO, TERMINAL, beta2_, mu_, t_


@pytest.mark.parametrize("check", [adam.bias_correction, adam.sparse_step_bound, adam.momentum_terminal_velocity])
def test_paper_formulas_pass(check):
    result = check()
    assert result.symbolic_ok and result.numeric_ok and result.passed, result.note


def test_bias_correction_rejects_off_by_one_exponent():
    result = adam.bias_correction(formula=1 - beta2_ ** (t_ + 1), samples=20_000)
    assert not result.symbolic_ok and not result.numeric_ok


def test_bias_correction_rejects_factor_two():
    result = adam.bias_correction(formula=2 * BIAS, samples=20_000)
    assert not result.symbolic_ok and not result.numeric_ok


def test_sparse_step_bound_rejects_factor_two():
    result = adam.sparse_step_bound(formula=2 * RATIO, ts=(1, 5))
    assert not result.symbolic_ok and not result.numeric_ok


def test_sparse_step_bound_note_reports_non_monotone_curve():
    note = adam.sparse_step_bound(ts=(1,)).note
    assert "minimum 0.4814 at t=12" in note and "non-monotone: True" in note


def test_terminal_velocity_rejects_sign_error():
    result = adam.momentum_terminal_velocity(formula=TERMINAL * (1 - mu_) / (1 + mu_), steps=50)
    assert not result.symbolic_ok and not result.numeric_ok
