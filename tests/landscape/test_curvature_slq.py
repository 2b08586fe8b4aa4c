import numpy as np
import pytest
import scipy.linalg
import torch

from landscape.curvature._common import TorchOperator, rademacher, rng
from landscape.curvature.operator import HessianOperator
from landscape.curvature.slq import lanczos_tridiagonal, slq_density


@pytest.fixture(scope="module")
def hessian():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    op = HessianOperator(model, torch.nn.functional.cross_entropy, (x, y))
    return op, op.matmat(np.eye(op.shape[0]))


def test_density_integrates_to_one_and_first_moment_is_normalised_trace(hessian):
    op, dense = hessian
    n = op.shape[0]
    result = slq_density(op, probes=30, steps=20, seed=0)
    assert result.applications == 30 * 20
    assert np.trapezoid(result.density, result.grid) == pytest.approx(1.0, abs=1e-8)
    density_mean = np.trapezoid(result.grid * result.density, result.grid)
    assert density_mean == pytest.approx(result.moment(1), abs=1e-8)
    per_probe = result.nodes_frame().assign(m=lambda f: f.weight * f.node).groupby("probe").m.sum().to_numpy()
    np.testing.assert_allclose(result.nodes_frame().groupby("probe").weight.sum(), 1.0, atol=1e-12)
    # the quadrature's first moment of each probe is exactly v^T H v for that probe
    z = rademacher(rng(0), n, 1)[:, 0]
    assert per_probe[0] == pytest.approx(z @ dense @ z / n, abs=1e-12)
    se = per_probe.std(ddof=1) / np.sqrt(len(per_probe))
    assert abs(result.moment(1) - np.trace(dense) / n) <= 4 * se


def test_full_lanczos_recovers_the_spectrum_edges_and_second_moment(hessian):
    op, dense = hessian
    n = op.shape[0]
    eigenvalues = np.linalg.eigvalsh(dense)
    result = slq_density(op, probes=20, steps=n, seed=1)
    nodes = result.nodes_frame()
    first = nodes[nodes.probe == 0].node
    assert first.max() == pytest.approx(eigenvalues[-1], abs=1e-8)
    assert first.min() == pytest.approx(eigenvalues[0], abs=1e-8)
    per_probe = nodes.assign(m=nodes.weight * nodes.node**2).groupby("probe").m.sum()
    se = per_probe.std(ddof=1) / np.sqrt(len(per_probe))
    assert abs(result.moment(2) - np.trace(dense @ dense) / n) <= 4 * se


def test_grid_sigma_and_frame():
    result = slq_density(np.diag([0.0, 1.0]), probes=2, steps=2, sigma=0.1, grid=np.linspace(-1, 2, 301), seed=0)
    assert list(result.frame().columns) == ["eigenvalue", "density"]
    peak = result.frame().set_index("eigenvalue").density
    assert peak.idxmax() == pytest.approx(0.0, abs=1e-12) or peak.idxmax() == pytest.approx(1.0, abs=1e-12)
    assert np.trapezoid(result.density, result.grid) == pytest.approx(1.0, abs=1e-6)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="probes"):
        slq_density(np.eye(3), probes=0)
    with pytest.raises(ValueError, match="steps"):
        slq_density(np.eye(3), steps=0)
    with pytest.raises(ValueError, match="sigma"):
        slq_density(np.eye(3), sigma=-1.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [("probes", 2.5), ("steps", "80"), ("block", True), ("num_grid", 1), ("sigma", float("nan")), ("sigma", "1")],
)
def test_a_wrong_type_or_value_is_one_line_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=f"Invalid {name}: "):
        slq_density(np.eye(3), **{name: value})


def test_probes_run_together_give_the_same_quadrature(hessian):
    op, dense = hessian
    alone = slq_density(op, probes=5, steps=12, seed=3, block=1)
    together = slq_density(op, probes=5, steps=12, seed=3, block=5)
    pairs = slq_density(op, probes=5, steps=12, seed=3, block=2)
    assert together.config["block"] == 5 and together.applications == alone.applications == 60
    for other in (together, pairs):
        np.testing.assert_array_equal(other.probe, alone.probe)
        np.testing.assert_allclose(other.nodes, alone.nodes, rtol=0, atol=1e-12)
        np.testing.assert_allclose(other.weights, alone.weights, rtol=0, atol=1e-12)
    # a probe that meets an invariant subspace stops early while the others go on
    early = slq_density(np.diag([1.0, 1.0, 2.0, 2.0, 3.0]), probes=3, steps=5, seed=0, block=3)
    assert early.applications == 9 and len(early.nodes) == 9


def test_default_block_follows_the_operators_graph_policy(hessian):
    op, _ = hessian
    model, data = op.model, op.batches
    kept = HessianOperator(model, torch.nn.functional.cross_entropy, data, graph="reuse")
    rebuilt = HessianOperator(model, torch.nn.functional.cross_entropy, data, graph="recompute")
    single, together = slq_density(kept, probes=3, steps=4, seed=0), slq_density(rebuilt, probes=3, steps=4, seed=0)
    assert single.config["block"] == 1 and together.config["block"] == 3
    np.testing.assert_allclose(single.nodes, together.nodes, rtol=0, atol=1e-12)
    assert slq_density(np.eye(3), probes=2, steps=2, seed=0).config["block"] == 2


@pytest.mark.parametrize("columns", [1, 3])
def test_full_reorthogonalisation_finds_every_eigenvalue_once(columns):
    """n steps on n eigenvalues spread over six decades: with the basis kept orthonormal, T has the operator's
    eigenvalues, each once (without reorthogonalisation the largest come back as copies and others go missing)."""
    eigenvalues = np.geomspace(1e-3, 1e3, 60)
    start = torch.randn(60, columns, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for alphas, betas in lanczos_tridiagonal(TorchOperator(np.diag(eigenvalues)), start, 60):
        assert len(alphas) == 60
        found = scipy.linalg.eigvalsh_tridiagonal(alphas, betas)
        np.testing.assert_allclose(found, eigenvalues, rtol=1e-9, atol=1e-12 * eigenvalues.max())
