import pytest

from theory import sam
from theory.sam import EPSILON, QUADRATIC_MAX


@pytest.mark.parametrize("check", [sam.dual_norm, sam.quadratic_sharpness])
def test_paper_formulas_pass(check):
    result = check()
    assert result.symbolic_ok and result.numeric_ok and result.passed, result.note


def test_dual_norm_rejects_factor_two():
    result = sam.dual_norm(formula=2 * EPSILON)
    assert not result.symbolic_ok and not result.numeric_ok


def test_dual_norm_uses_the_implementation():
    assert "optim.SAM" in sam.dual_norm().numeric


def test_quadratic_sharpness_rejects_missing_half():
    result = sam.quadratic_sharpness(formula=2 * QUADRATIC_MAX, iterations=300)
    assert not result.symbolic_ok and not result.numeric_ok
