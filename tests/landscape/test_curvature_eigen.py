import numpy as np
import pytest
import torch

from landscape.curvature.lanczos import lanczos_eigenpairs
from landscape.curvature.operator import HessianOperator
from landscape.curvature.power import power_iteration_eigenpairs


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny tensors: one intra-op thread is faster on a shared 2-core machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_invalid_arguments(hessian):
    op, _ = hessian
    with pytest.raises(ValueError, match="Invalid k"):
        lanczos_eigenpairs(op, k=op.shape[0])
    with pytest.raises(ValueError, match="Invalid which"):
        lanczos_eigenpairs(op, which="BE")
    with pytest.raises(ValueError, match="Invalid tol"):
        power_iteration_eigenpairs(op, tol=0.0)
    with pytest.raises(ValueError, match="Invalid max_iter"):
        power_iteration_eigenpairs(op, max_iter=0)
    with pytest.raises(ValueError, match="square"):
        lanczos_eigenpairs(np.zeros((3, 4)))
    with pytest.raises(TypeError, match="seed"):
        lanczos_eigenpairs(op, seed=1.5)
