"""Stopping rules and domains of the curvature estimators, tested on both sides of each threshold and exactly on it."""

import math
import warnings

import numpy as np
import pytest

from landscape.curvature import hutchinson_trace, hutchpp_trace, lanczos_eigenpairs, power_iteration_eigenpairs

MATRIX = np.random.default_rng(0).standard_normal((12, 12))
MATRIX = MATRIX + MATRIX.T  # symmetric, indefinite, probes disagree


# ---------------------------------------------------------------- Hutchinson: stop once se <= max(atol, rtol|mean|)
def test_hutchinson_stops_at_min_samples_when_the_target_is_met_exactly():
    """On a diagonal matrix every Rademacher form z'Dz is tr D: se = 0 meets atol = rtol = 0 (<=, not <)."""
    diag = np.diag([1.0, 2.0, 3.0, 4.0])
    result = hutchinson_trace(diag, max_applications=50, atol=0.0, rtol=0.0, min_samples=7, block=1, seed=0)
    assert result.applications == 7 and result.estimate == 10.0 and result.standard_error == 0.0


@pytest.mark.parametrize("min_samples", [2, 5])
def test_hutchinson_target_on_both_sides(min_samples):
    def run(atol: float):
        return hutchinson_trace(
            MATRIX, max_applications=40, atol=atol, rtol=0.0, min_samples=min_samples, block=1, seed=3
        )

    first = hutchinson_trace(MATRIX, max_applications=min_samples, rtol=0.0, min_samples=min_samples, seed=3, block=1)
    se = first.standard_error  # the se after exactly min_samples probes (same seed, same probes)
    assert se > 0
    assert run(se).applications == min_samples  # se <= target: stops at min_samples, not one later
    assert run(math.nextafter(se, 0.0)).applications > min_samples
    assert run(se).estimate == first.estimate


@pytest.mark.parametrize(("min_samples", "ok"), [(2, True), (1, False)])
def test_hutchinson_min_samples_domain(min_samples, ok):
    if ok:
        assert hutchinson_trace(MATRIX, max_applications=2, min_samples=min_samples, seed=0).applications == 2
    else:
        with pytest.raises(ValueError, match="min_samples"):
            hutchinson_trace(MATRIX, max_applications=2, min_samples=min_samples, seed=0)


def test_hutchinson_budget_is_a_hard_limit():
    result = hutchinson_trace(MATRIX, max_applications=9, rtol=0.0, min_samples=2, block=4, seed=0)
    assert result.applications == 9 and len(result.samples) == 9


# ---------------------------------------------------------------- Hutch++: 2 * sketch + min_samples <= budget
@pytest.mark.parametrize(("sketch", "ok"), [(4, True), (5, False), (0, False)])
def test_hutchpp_sketch_size_domain(sketch, ok):
    kwargs = dict(max_applications=18, sketch_size=sketch, min_samples=10, rtol=0.0, seed=0)
    if ok:  # 2 * 4 + 10 == 18: the whole budget, exactly
        assert hutchpp_trace(MATRIX, **kwargs).applications == 18
    else:
        with pytest.raises(ValueError, match="sketch_size"):
            hutchpp_trace(MATRIX, **kwargs)


def test_hutchpp_exact_when_the_sketch_spans_the_space():
    low_rank = np.outer(np.arange(1.0, 5.0), np.arange(1.0, 5.0))  # rank one, trace 30
    result = hutchpp_trace(low_rank, max_applications=12, sketch_size=4, min_samples=4, rtol=0.0, seed=0)
    assert result.estimate == pytest.approx(30.0, rel=1e-12) and result.standard_error == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- power iteration: max_iter and tol
@pytest.mark.parametrize("max_iter", [1, 2, 7])
def test_power_iteration_uses_at_most_max_iter(max_iter):
    result = power_iteration_eigenpairs(MATRIX, k=1, max_iter=max_iter, tol=1e-300, seed=0)
    assert result.config["iterations"] == [max_iter]


def test_power_iteration_domain():
    for kwargs in (dict(max_iter=0), dict(tol=0.0), dict(k=0), dict(k=13)):
        with pytest.raises(ValueError):
            power_iteration_eigenpairs(MATRIX, **{"k": 1, **kwargs})
    assert len(power_iteration_eigenpairs(np.diag([1.0, 5.0]), k=2, tol=1e-12, seed=0).eigenvalues) == 2  # k == n


# ---------------------------------------------------------------- Lanczos: k, max_basis and the stop reasons
@pytest.mark.parametrize(("k", "method", "ok"), [(12, "lanczos", True), (13, "lanczos", False), (11, "arpack", True)])
def test_lanczos_k_domain(k, method, ok):
    if ok:
        result = lanczos_eigenpairs(MATRIX, k=k, method=method, seed=0)
        expected = np.sort(np.linalg.eigvalsh(MATRIX))[::-1][:k]
        assert np.allclose(result.eigenvalues, expected, atol=1e-9)
    else:
        with pytest.raises(ValueError, match="k"):
            lanczos_eigenpairs(MATRIX, k=k, method=method, seed=0)


def test_arpack_needs_k_below_n():
    with pytest.raises(ValueError, match="k"):
        lanczos_eigenpairs(MATRIX, k=12, method="arpack", seed=0)


def test_lanczos_full_basis_stops_with_every_eigenvalue():
    result = lanczos_eigenpairs(MATRIX, k=12, seed=0)
    assert result.config["stop"] == "full" and result.config["basis_size"] == 12


@pytest.mark.parametrize(("max_basis", "ok"), [(3, True), (2, False), (12, True), (13, False)])
def test_lanczos_max_basis_domain(max_basis, ok):
    if ok:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # 3 vectors need not converge
            result = lanczos_eigenpairs(MATRIX, k=3, max_basis=max_basis, seed=0)
        assert result.config["basis_size"] <= max_basis
    else:
        with pytest.raises(ValueError, match="max_basis"):
            lanczos_eigenpairs(MATRIX, k=3, max_basis=max_basis, seed=0)


def test_lanczos_max_basis_reached_warns():
    with pytest.warns(RuntimeWarning, match="max_basis"):
        result = lanczos_eigenpairs(MATRIX, k=3, max_basis=3, tol=1e-14, seed=0)
    assert result.config["stop"] == "max_basis" and result.config["basis_size"] == 3


def test_converged_flag_includes_equality():
    """converged = residual <= residual_tol * max|eigenvalue|: a tolerance that gives exactly the residual counts."""
    first = power_iteration_eigenpairs(MATRIX, k=1, max_iter=5, tol=1e-300, seed=0)
    residual, scale = float(first.residuals[0]), float(np.abs(first.eigenvalues).max())
    assert residual > 0
    tol = residual / scale
    while tol * scale < residual:  # the float tolerance whose product with the scale is the residual exactly
        tol = math.nextafter(tol, math.inf)
    while tol * scale > residual:
        tol = math.nextafter(tol, 0.0)
    assert tol * scale == residual

    def converged(residual_tol: float) -> bool:
        again = power_iteration_eigenpairs(MATRIX, k=1, max_iter=5, tol=1e-300, seed=0, residual_tol=residual_tol)
        assert float(again.residuals[0]) == residual  # same seed, same iterate
        return bool(again.converged[0])

    assert (converged(tol), converged(math.nextafter(tol, 0.0))) == (True, False)
    with pytest.warns(RuntimeWarning, match="maps every vector tried to zero"):
        zero = lanczos_eigenpairs(np.zeros((3, 3)), k=1, seed=0)  # residual 0 against a clamped scale: converged
    assert zero.eigenvalues.tolist() == [0.0] and zero.converged.tolist() == [True]
