import numpy as np
import pytest
import torch

from landscape.curvature.lanczos import lanczos_eigenpairs
from landscape.curvature.operator import HessianOperator
from landscape.curvature.power import power_iteration_eigenpairs


@pytest.fixture(scope="module")
def hessian():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    op = HessianOperator(model, torch.nn.functional.cross_entropy, (x, y), batch_size=16)
    names = [n for n, _ in model.named_parameters()]

    def loss(theta):
        params = dict(zip(names, op.unflatten(theta), strict=True))
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, params, x), y)

    dense = torch.func.hessian(loss)(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return op, dense.numpy()


def clustered_matrix():
    rng = np.random.default_rng(0)
    eigenvalues = np.concatenate([[1.0, 0.99, 0.98], rng.uniform(0, 0.9, 97)])
    q = np.linalg.qr(rng.standard_normal((100, 100)))[0]
    return q @ np.diag(eigenvalues) @ q.T, eigenvalues


def test_lanczos_top3_equals_dense_eigvalsh(hessian):
    op, dense = hessian
    exact = np.linalg.eigvalsh(dense)[::-1]
    before = op.applications
    result = lanczos_eigenpairs(op, k=3, seed=0)
    np.testing.assert_allclose(result.eigenvalues, exact[:3], rtol=0, atol=1e-8)
    assert result.converged.all() and (result.residuals < 1e-10).all()
    assert result.applications == op.applications - before
    for i in range(3):  # eigenvectors are unit and satisfy the dense eigen-equation
        v = result.eigenvectors[:, i]
        np.testing.assert_allclose(dense @ v, exact[i] * v, atol=1e-9)
    frame = result.frame()
    assert list(frame.columns) == ["index", "eigenvalue", "residual", "converged", "method", "applications"]
    assert len(frame) == 3


def test_lanczos_is_reproducible_and_finds_smallest(hessian):
    op, dense = hessian
    a, b = lanczos_eigenpairs(op, k=2, seed=3), lanczos_eigenpairs(op, k=2, seed=3)
    assert a.applications == b.applications
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    smallest = lanczos_eigenpairs(op, k=2, which="SA", seed=0)
    np.testing.assert_allclose(np.sort(smallest.eigenvalues), np.linalg.eigvalsh(dense)[:2], atol=1e-8)


def test_power_iteration_on_small_net(hessian):
    op, dense = hessian
    exact = np.linalg.eigvalsh(dense)[::-1]
    result = power_iteration_eigenpairs(op, k=3, seed=0)
    assert result.applications == sum(result.config["iterations"]) + 3
    np.testing.assert_allclose(result.eigenvalues, exact[:3], rtol=5e-3)  # PyHessian's rule: ~1e-3 accuracy
    tight = power_iteration_eigenpairs(op, k=1, max_iter=2000, tol=1e-14, seed=0)
    np.testing.assert_allclose(tight.eigenvalues[0], exact[0], rtol=1e-9)
    assert tight.converged[0]


def test_power_iteration_pyhessian_rule_stops_on_a_wrong_eigenvalue():
    matrix, eigenvalues = clustered_matrix()
    result = power_iteration_eigenpairs(matrix, k=3, seed=0)
    assert abs(result.eigenvalues[0] - 1.0) > 5e-3  # stopped between lambda_1 = 1 and lambda_2 = 0.99
    assert not result.converged.any() and (result.residuals > 1e-2).all()
    lanczos = lanczos_eigenpairs(matrix, k=3, seed=0)
    np.testing.assert_allclose(lanczos.eigenvalues, [1.0, 0.99, 0.98], atol=1e-12)
    assert lanczos.converged.all()


def test_residual_bounds_equal_explicit_residuals(hessian):
    """beta_m |e_m^T s_i| is the true residual ||H y - theta y|| to rounding, so no application is spent on it."""
    op, dense = hessian
    norm = np.abs(np.linalg.eigvalsh(dense)).max()
    for tol in (1e-3, 1e-7):
        result = lanczos_eigenpairs(op, k=4, tol=tol, seed=1)
        vectors, values = result.eigenvectors, result.eigenvalues
        explicit = np.linalg.norm(dense @ vectors - vectors * values, axis=0)
        np.testing.assert_allclose(result.residuals, explicit, rtol=1e-6, atol=1e-13 * norm)
        assert (result.residuals <= tol * np.abs(values)).all()
        assert result.residuals.max() > 1e-3 * tol * np.abs(values).min()  # stopped early: bounds are not ~0
        assert result.applications == result.config["basis_size"] < op.shape[0]
        assert result.config["stop"] == "converged"
        np.testing.assert_allclose(vectors.T @ vectors, np.eye(4), atol=1e-12)


def test_arpack_method_kept_for_comparison(hessian):
    op, dense = hessian
    exact = np.linalg.eigvalsh(dense)[::-1]
    result = lanczos_eigenpairs(op, k=3, seed=0, method="arpack")
    np.testing.assert_allclose(result.eigenvalues, exact[:3], rtol=0, atol=1e-8)
    assert result.converged.all() and result.config["method"] == "arpack"


def test_breakdown_restarts_for_repeated_eigenvalues():
    """Eigenvalues 3, 2, 1 (each 4 times): one Krylov block breaks down after 3 steps and sees each once."""
    q = np.linalg.qr(np.random.default_rng(1).standard_normal((12, 12)))[0]
    eigenvalues = np.repeat([3.0, 2.0, 1.0], 4)
    matrix = q @ np.diag(eigenvalues) @ q.T
    result = lanczos_eigenpairs(matrix, k=4, seed=0)
    np.testing.assert_allclose(result.eigenvalues, [3.0, 3.0, 2.0, 2.0], atol=1e-12)
    assert result.config["restarts"] == 1 and result.applications == 6 and result.converged.all()
    explicit = np.linalg.norm(matrix @ result.eigenvectors - result.eigenvectors * result.eigenvalues, axis=0)
    assert (explicit < 1e-12).all() and (result.residuals < 1e-12).all()
    everything = lanczos_eigenpairs(matrix, k=12, seed=0)  # k = n: the basis spans the space
    np.testing.assert_allclose(everything.eigenvalues, eigenvalues, atol=1e-12)
    assert everything.config["restarts"] == 3 and everything.applications == 12
    magnitude = lanczos_eigenpairs(matrix - 2.2 * np.eye(12), k=4, which="LM", seed=0)  # 0.8, -0.2, -1.2 (x4)
    np.testing.assert_allclose(magnitude.eigenvalues, [0.8, 0.8, -1.2, -1.2], atol=1e-12)


def test_max_basis_reached_warns_and_flags():
    matrix, _ = clustered_matrix()
    with pytest.warns(RuntimeWarning, match="max_basis=6"):
        result = lanczos_eigenpairs(matrix, k=3, max_basis=6, seed=0)
    assert result.applications == 6 and result.config["stop"] == "max_basis"
    assert not result.converged.all()
    explicit = np.linalg.norm(matrix @ result.eigenvectors - result.eigenvectors * result.eigenvalues, axis=0)
    np.testing.assert_allclose(result.residuals, explicit, rtol=1e-8)


def test_invalid_arguments(hessian):
    op, _ = hessian
    n = op.shape[0]
    with pytest.raises(ValueError, match=f"Invalid k: {n + 1}"):
        lanczos_eigenpairs(op, k=n + 1)
    with pytest.raises(ValueError, match="Invalid k: 0"):
        lanczos_eigenpairs(op, k=0)
    with pytest.raises(ValueError, match=f"Invalid k: {n}"):
        lanczos_eigenpairs(op, k=n, method="arpack")
    with pytest.raises(ValueError, match="Invalid which"):
        lanczos_eigenpairs(op, which="BE")
    with pytest.raises(ValueError, match="Invalid method: 'eigsh'"):
        lanczos_eigenpairs(op, method="eigsh")
    with pytest.raises(ValueError, match="Invalid tol: -1"):
        lanczos_eigenpairs(op, tol=-1.0)
    with pytest.raises(ValueError, match="Invalid max_basis: 2"):
        lanczos_eigenpairs(op, k=3, max_basis=2)
    with pytest.raises(ValueError, match="Invalid max_basis: 10"):
        lanczos_eigenpairs(op, k=3, max_basis=10, method="arpack")
    with pytest.raises(ValueError, match="Invalid ncv: 20"):
        lanczos_eigenpairs(op, ncv=20)
    with pytest.raises(ValueError, match="Invalid maxiter: 5"):
        lanczos_eigenpairs(op, maxiter=5)
    with pytest.raises(ValueError, match="Invalid residual_tol: 0"):
        lanczos_eigenpairs(op, residual_tol=0.0)
    with pytest.raises(ValueError, match="Invalid tol"):
        power_iteration_eigenpairs(op, tol=0.0)
    with pytest.raises(ValueError, match="Invalid max_iter"):
        power_iteration_eigenpairs(op, max_iter=0)
    with pytest.raises(ValueError, match="square"):
        lanczos_eigenpairs(np.zeros((3, 4)))
    with pytest.raises(TypeError, match="seed"):
        lanczos_eigenpairs(op, seed=1.5)
