import pytest
import sympy as sp

from theory import curvature, filter_normalization, sharpness
from theory.curvature import VARIANCE, diag2_, frob2_
from theory.filter_normalization import SCALE, d_, theta_
from theory.sharpness import BOX_MAXIMUM, TOP_EIGENVALUE, alpha_

CHECKS = {
    "keskar": (sharpness.keskar_box_maximum, "landscape.sharpness.epsilon_sharpness"),
    "dinh": (sharpness.dinh_reparametrization, "landscape.reparam"),
    "filter": (filter_normalization.filter_normalization, "landscape.surface_1d"),
    "hutchinson": (curvature.hutchinson, "landscape.curvature"),
}


@pytest.mark.parametrize("name", CHECKS)
def test_paper_formulas_pass_and_call_landscape(name):
    check, implementation = CHECKS[name]
    result = check()
    assert result.symbolic_ok and result.numeric_ok and result.passed, result.note
    assert implementation in result.numeric


def test_keskar_rejects_missing_half():
    result = sharpness.keskar_box_maximum(formula=2 * BOX_MAXIMUM)
    assert not result.symbolic_ok and not result.numeric_ok


def test_dinh_rejects_wrong_eigenvalue():
    result = sharpness.dinh_reparametrization(formula=TOP_EIGENVALUE + 1, alphas=(0.5, 2.0))
    assert not result.symbolic_ok and not result.numeric_ok


@pytest.mark.parametrize("wrong", [SCALE * sp.sqrt(theta_.dot(theta_)), 1 / sp.sqrt(d_.dot(d_))])
def test_filter_normalization_rejects_wrong_scaling(wrong):
    result = filter_normalization.filter_normalization(formula=wrong)
    assert not result.symbolic_ok and not result.numeric_ok


def test_hutchinson_rejects_sign_error_and_factor_two():
    for wrong in (2 * (frob2_ + diag2_), VARIANCE / 2):
        result = curvature.hutchinson(formula=wrong, samples=5000)
        assert not result.symbolic_ok and not result.numeric_ok


def test_dinh_eigenvalues_grow_without_bound():
    assert sp.limit(TOP_EIGENVALUE, alpha_, sp.oo) == sp.oo
