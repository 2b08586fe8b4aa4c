"""SharpnessDynamics, PreconditionedOperator and the Lanczos warm start against dense and hand-derived values."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import optim
from landscape import (
    HessianOperator,
    PreconditionedOperator,
    SharpnessDynamics,
    hutchpp_trace,
    lanczos_eigenpairs,
    slq_density,
)
from studies.data import Dataset
from studies.train import train


def _quadratic(n=12, samples=40, seed=0):
    """A linear model with MSE: L(w) = mean((Xw − y)²), whose Hessian is 2XᵀX/N at every w."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, n, dtype=torch.float64, generator=generator) * torch.linspace(0.2, 2.0, n).double()
    y = torch.randn(samples, 1, dtype=torch.float64, generator=generator)
    model = torch.nn.Linear(n, 1, bias=False).double()
    return model, (x, y), 2 * x.T @ x / samples


def _rows(rows, quantity):
    return [r["value"] for r in rows if r["quantity"] == quantity]


def test_quadratic_exact_sharpness_and_threshold_for_gd():
    model, data, hessian = _quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rows = SharpnessDynamics(F.mse_loss, data, k=3, tol=1e-10).measure(model, opt)
    exact = torch.linalg.eigvalsh(hessian).flip(0)[:3].numpy()
    np.testing.assert_allclose(_rows(rows, "hessian_eigenvalue"), exact, rtol=1e-9)
    assert _rows(rows, "stability_threshold") == [pytest.approx(40.0)]
    assert _rows(rows, "sharpness_ratio")[0] == pytest.approx(exact[0] / 40.0, rel=1e-9)
    assert not _rows(rows, "preconditioned_sharpness")
    assert _rows(rows, "probe_loss")[0] == pytest.approx(float(F.mse_loss(model(data[0]), data[1]).detach()))


@pytest.mark.parametrize(
    "factory",
    [
        lambda ps: torch.optim.Adam(ps, lr=0.01),
        lambda ps: torch.optim.RMSprop(ps, lr=0.001),
        lambda ps: torch.optim.Adagrad(ps, lr=0.01),
    ],
)
def test_quadratic_exact_preconditioned_sharpness(factory):
    model, data, hessian = _quadratic()
    opt = factory(model.parameters())
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(model(data[0]), data[1]).backward()
        opt.step()
    state = opt.state[model.weight]
    if "exp_avg_sq" in state:  # Adam: P = (1 − β₁ᵗ)(√(v/(1 − β₂ᵗ)) + ε) by hand
        P = (1 - 0.9**5) * ((state["exp_avg_sq"] / (1 - 0.999**5)).sqrt() + 1e-8)
        threshold = 38 / 0.01
    elif "square_avg" in state:
        P, threshold = state["square_avg"].sqrt() + 1e-8, 2 / 0.001
    else:
        P, threshold = state["sum"].sqrt() + 1e-10, 2 / 0.01
    d = P.reshape(-1).rsqrt()
    exact = float(torch.linalg.eigvalsh(d[:, None] * hessian * d[None, :]).max())
    rows = SharpnessDynamics(F.mse_loss, data, tol=1e-10).measure(model, opt)
    assert _rows(rows, "preconditioned_sharpness")[0] == pytest.approx(exact, rel=1e-9)
    assert _rows(rows, "sharpness")[0] == pytest.approx(float(torch.linalg.eigvalsh(hessian).max()), rel=1e-9)
    assert _rows(rows, "sharpness_ratio")[0] == pytest.approx(exact / threshold, rel=1e-9)
    no_p = SharpnessDynamics(F.mse_loss, data, preconditioned=False).measure(model, opt)
    assert not _rows(no_p, "preconditioned_sharpness") and np.isnan(_rows(no_p, "sharpness_ratio")[0])


def _mlp_run(tracker, steps=60, lr=0.3):
    torch.manual_seed(0)
    x = torch.randn(64, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (64,))
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tracker.batches = [(x, y)]
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        tracker.step(model, opt, step, loss)
    return tracker.frame()


def test_warm_start_costs_fewer_products_than_cold_and_agrees():
    probe = (torch.zeros(1, 6, dtype=torch.float64), torch.zeros(1, dtype=torch.long))
    warm = _mlp_run(SharpnessDynamics(F.cross_entropy, probe, every=5, tol=1e-6))
    cold = _mlp_run(SharpnessDynamics(F.cross_entropy, probe, every=5, tol=1e-6, warm_start=False))
    products = {name: f[f["quantity"] == "lanczos_products"] for name, f in (("warm", warm), ("cold", cold))}
    assert list(products["warm"]["start"]) == ["cold"] + ["warm"] * 11
    after_first = {name: p["value"].iloc[1:].mean() for name, p in products.items()}
    print(f"products per measurement after the first: warm {after_first['warm']:.2f}, cold {after_first['cold']:.2f}")
    assert after_first["warm"] < 0.8 * after_first["cold"]
    sharp = {name: f.loc[f["quantity"] == "sharpness", "value"].to_numpy() for name, f in (("w", warm), ("c", cold))}
    np.testing.assert_allclose(sharp["w"], sharp["c"], rtol=1e-8)
    assert list(warm.loc[warm["quantity"] == "train_loss", "step"]) == list(range(5, 61, 5))


def test_callback_with_the_training_runner():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=generator), torch.randint(0, 2, (32,), generator=generator)
    data = Dataset("toy", x, y, x[:8], y[:8], 2)
    tracker = SharpnessDynamics(F.cross_entropy, (x, y), every=3)
    result = train(
        lambda: torch.nn.Linear(4, 2),
        lambda m: torch.optim.Adam(m.parameters(), lr=0.01),
        data,
        epochs=7,
        batch_size=32,
        callbacks=[tracker],
        progress=False,
    )
    rows = result.metrics[result.metrics["quantity"] == "preconditioned_sharpness"]
    assert list(rows["step"]) == [3, 6]
    assert list(tracker.frame().query("quantity == 'preconditioned_sharpness'")["value"]) == list(rows["value"])
    threshold = result.metrics.loc[result.metrics["quantity"] == "stability_threshold", "value"]
    assert np.allclose(threshold, 3800.0)


def test_preconditioned_operator_works_with_the_estimators():
    model, data, hessian = _quadratic(n=6)
    diagonal = torch.linspace(0.5, 3.0, 6, dtype=torch.float64)
    operator = PreconditionedOperator(HessianOperator(model, F.mse_loss, data, dtype=torch.float64), diagonal)
    d = diagonal.rsqrt()
    dense = d[:, None] * hessian * d[None, :]
    np.testing.assert_allclose(operator.matmat(np.eye(6)), dense.numpy(), rtol=1e-12, atol=1e-14)
    assert operator.applications == 6 and operator.inner.applications == 6
    trace = hutchpp_trace(operator, max_applications=22, sketch_size=6, seed=0)  # sketch spans the space: exact
    assert trace.estimate == pytest.approx(float(torch.trace(dense)), rel=1e-9)
    density = slq_density(operator, probes=50, steps=6, seed=0)
    assert density.moment(1) * density.dimension == pytest.approx(float(torch.trace(dense)), rel=0.2)
    with pytest.raises(ValueError, match="positive"):
        PreconditionedOperator(operator.inner, -diagonal)
    with pytest.raises(ValueError, match="6 entries"):
        PreconditionedOperator(operator.inner, diagonal[:3])


def test_lanczos_v0_exact_eigenvector_needs_one_product():
    matrix = np.diag([5.0, 3.0, 2.0, 1.0])
    result = lanczos_eigenpairs(matrix, k=1, v0=np.array([1.0, 0.0, 0.0, 0.0]))
    assert result.applications == 1 and result.eigenvalues[0] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="4 entries"):
        lanczos_eigenpairs(matrix, v0=np.ones(3))
    with pytest.raises(ValueError, match="non-zero"):
        lanczos_eigenpairs(matrix, v0=np.zeros(4))


def test_unsupported_optimizer_fails_before_training():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 2, generator=generator), torch.randint(0, 2, (8,), generator=generator)
    data = Dataset("toy", x, y, x, y, 2)
    tracker = SharpnessDynamics(F.cross_entropy, (x, y), every=1)
    with pytest.raises(TypeError, match="No stability model for SAM"):
        train(
            lambda: torch.nn.Linear(2, 2),
            lambda m: optim.make("sam", m),
            data,
            epochs=1,
            batch_size=8,
            callbacks=[tracker],
            progress=False,
        )


def test_preconditioned_operator_follows_and_frees_the_inner_graphs():
    from landscape.curvature import HessianOperator, PreconditionedOperator

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    inner = HessianOperator(model, torch.nn.functional.cross_entropy, data, dtype=torch.float64, graph="reuse")
    op = PreconditionedOperator(inner, torch.full((inner.shape[0],), 4.0))
    assert op.graph_policy == "reuse" and op.graph_mode is None and op.mode == "eval"
    v = torch.randn(inner.shape[0], 1, dtype=torch.float64)
    torch.testing.assert_close(op.apply(v), inner.apply(v / 2) / 2)  # P^-1/2 = 1/2
    assert op.graph_mode == "reuse" and inner.graph_nbytes > 0
    op.close()
    assert inner.graph_mode is None and inner.graph_nbytes == 0
