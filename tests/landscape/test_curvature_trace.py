import numpy as np
import pytest
import torch

from landscape.curvature.operator import HessianOperator
from landscape.curvature.trace import hutchinson_trace, hutchpp_trace


@pytest.fixture(scope="module")
def hessian():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    op = HessianOperator(model, torch.nn.functional.cross_entropy, (x, y))
    return op, float(np.trace(op.matmat(np.eye(op.shape[0]))))


def low_rank_plus_noise():
    rng = np.random.default_rng(1)
    q = np.linalg.qr(rng.standard_normal((200, 200)))[0]
    eigenvalues = np.concatenate([100.0 / np.arange(1, 11) ** 2, rng.uniform(0, 0.05, 190)])
    return q @ np.diag(eigenvalues) @ q.T, eigenvalues.sum()


@pytest.mark.parametrize("estimator", [hutchinson_trace, hutchpp_trace])
def test_within_four_standard_errors_over_seeds(hessian, estimator):
    op, exact = hessian
    for seed in range(5):
        budget = 100 if estimator is hutchinson_trace else 45  # Hutch++: sketch 15 of n = 51
        result = estimator(op, max_applications=budget, rtol=0.0, seed=seed)
        assert result.applications == budget
        assert result.standard_error > 0
        assert abs(result.estimate - exact) <= 4 * result.standard_error, (seed, result.frame())


def test_standard_error_matches_spread_of_estimates():
    matrix, exact = low_rank_plus_noise()
    results = [hutchinson_trace(matrix, max_applications=40, rtol=0.0, seed=s) for s in range(40)]
    estimates = np.array([r.estimate for r in results])
    mean_se = np.mean([r.standard_error for r in results])
    assert abs(estimates.mean() - exact) < 4 * estimates.std(ddof=1) / np.sqrt(40)
    assert 0.7 < estimates.std(ddof=1) / mean_se < 1.3


def test_hutchpp_beats_hutchinson_on_decaying_spectrum_at_equal_budget():
    matrix, exact = low_rank_plus_noise()
    errors = {"hutchinson": [], "hutch++": []}
    for seed in range(10):
        for estimator in (hutchinson_trace, hutchpp_trace):
            result = estimator(matrix, max_applications=60, rtol=0.0, seed=seed)
            errors[result.method].append(abs(result.estimate - exact))
            assert abs(result.estimate - exact) <= 4 * result.standard_error
    assert np.mean(errors["hutch++"]) < 0.2 * np.mean(errors["hutchinson"])


def test_stops_on_standard_error_target(hessian):
    op, exact = hessian
    loose = hutchinson_trace(op, max_applications=1000, rtol=0.1, seed=0)
    assert loose.applications < 1000
    assert loose.standard_error <= 0.1 * abs(loose.estimate)
    pp = hutchpp_trace(op, max_applications=1000, sketch_size=10, atol=0.05, seed=0)
    assert pp.applications < 1000 and pp.standard_error <= 0.05
    assert abs(pp.estimate - exact) <= 4 * pp.standard_error
    assert list(pp.frame().columns) == ["method", "estimate", "standard_error", "applications", "probes"]


def test_exact_when_sketch_spans_the_space():
    matrix = np.diag(np.arange(1.0, 7.0))
    result = hutchpp_trace(matrix, max_applications=30, sketch_size=6, seed=0)
    assert result.estimate == pytest.approx(21.0, abs=1e-12)
    assert result.standard_error < 1e-12


def test_invalid_arguments(hessian):
    op, _ = hessian
    with pytest.raises(ValueError, match="max_applications"):
        hutchinson_trace(op, max_applications=0)
    with pytest.raises(ValueError, match="rtol"):
        hutchinson_trace(op, rtol=-1.0)
    with pytest.raises(ValueError, match="min_samples"):
        hutchinson_trace(op, min_samples=1)
    with pytest.raises(ValueError, match="sketch_size"):
        hutchpp_trace(op, max_applications=30, sketch_size=15)


def rotated(eigenvalues):
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((len(eigenvalues),) * 2))[0]
    return q @ np.diag(eigenvalues) @ q.T, float(np.sum(eigenvalues))


SPECTRA = {
    "flat": np.random.default_rng(1).uniform(1.0, 2.0, 200),
    "decaying": 1.0 / np.arange(1, 201) ** 2,
    "outliers": np.concatenate([np.full(10, 50.0), np.random.default_rng(2).uniform(0.0, 1.0, 190)]),
}


@pytest.mark.parametrize("spectrum", SPECTRA)
def test_hutchpp_default_spends_at_most_twice_hutchinson_for_no_worse_error(spectrum):
    matrix, exact = rotated(SPECTRA[spectrum])
    runs = {"hutchinson": [], "hutch++": []}
    for seed in range(60):
        for estimator in (hutchinson_trace, hutchpp_trace):
            result = estimator(matrix, max_applications=200, seed=seed)  # capped for speed; Hutchinson may reach it
            runs[result.method].append((result.applications, abs(result.estimate - exact) / result.standard_error))
            runs[result.method][-1] += (abs(result.estimate - exact),)
    plain, pp = np.array(runs["hutchinson"]), np.array(runs["hutch++"])
    assert pp[:, 0].mean() <= 2 * plain[:, 0].mean()
    assert pp[:, 2].mean() <= plain[:, 2].mean()
    # the reported standard error is honest: errors within 2 and 3 of them at about the t-distribution's rates
    assert (pp[:, 1] <= 2).mean() >= 0.85 and (pp[:, 1] <= 3).mean() >= 0.93


def test_hutchpp_default_on_a_flat_spectrum_is_hutchinson():
    matrix, exact = rotated(SPECTRA["flat"])
    pp, plain = hutchpp_trace(matrix, seed=4), hutchinson_trace(matrix, seed=4)
    assert pp.config["sketch_size"] == 0 and pp.applications == plain.applications == 10
    assert pp.estimate == pytest.approx(plain.estimate, rel=1e-12)
    fixed = hutchpp_trace(matrix, max_applications=60, rtol=0.0, seed=4)  # no target: the paper's m/3 split
    assert fixed.config["sketch_size"] == 20 and fixed.applications == 60 and len(fixed.samples) == 20


def test_one_probe_has_no_standard_error_and_says_so():
    """With one probe the standard error is NaN: it was written without a word."""
    operator = np.diag([1.0, 2.0, 3.0])
    with pytest.warns(RuntimeWarning, match="one probe gives no standard error"):
        result = hutchinson_trace(operator, max_applications=1, seed=0)
    assert result.estimate == 6.0 and np.isnan(result.standard_error)
