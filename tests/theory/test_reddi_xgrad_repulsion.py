import pytest
import sympy as sp

from theory import reddi, repulsion, xgrad
from theory.reddi import C_, DISPLACEMENT, gamma_
from theory.repulsion import DERIVATIVE
from theory.xgrad import PREDICTION, delta_, s_, theta_


@pytest.mark.parametrize("check", [reddi.reddi_counterexample, xgrad.weight_prediction, repulsion.kernel_gradient])
def test_paper_formulas_pass(check):
    result = check()
    assert result.symbolic_ok and result.numeric_ok and result.passed, result.note


def test_reddi_rejects_c_minus_one():
    wrong = -gamma_ * (C_ - 1) / sp.sqrt((C_**2 + 2) / 3)
    result = reddi.reddi_counterexample(formula=wrong, periods=300)
    assert not result.symbolic_ok and not result.numeric_ok


def test_reddi_rejects_sign_error():
    result = reddi.reddi_counterexample(formula=-DISPLACEMENT, periods=300)
    assert not result.symbolic_ok and not result.numeric_ok


def test_reddi_requires_c_above_two():
    with pytest.raises(ValueError, match="C"):
        reddi.reddi_counterexample(c=2.0)


def test_reddi_reference_loop_matches_the_implementation():
    from optim import Expectigrad

    traces = [
        reddi._run(lambda p, cls=cls: cls(p, lr=0.01, beta=0.9), 3.0, 60, clip=True)
        for cls in (Expectigrad, reddi._ReferenceExpectigrad)
    ]
    assert traces[0] == pytest.approx(traces[1], abs=1e-15)


def test_xgrad_rejects_s_minus_one():
    result = xgrad.weight_prediction(formula=theta_ - xgrad.gamma_ * (s_ - 1) * delta_)
    assert not result.symbolic_ok and not result.numeric_ok


def test_xgrad_rejects_factor_two():
    result = xgrad.weight_prediction(formula=2 * PREDICTION - theta_)
    assert not result.symbolic_ok and not result.numeric_ok


def test_repulsion_rejects_sign_error_and_factor_two():
    for wrong in (-DERIVATIVE, 2 * DERIVATIVE):
        result = repulsion.kernel_gradient(formula=wrong)
        assert not result.symbolic_ok and not result.numeric_ok
