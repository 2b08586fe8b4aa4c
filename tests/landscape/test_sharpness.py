import math

import numpy as np
import pytest
import torch
from torch import nn

from landscape.sharpness import asam_sharpness, epsilon_sharpness, m_sharpness, sam_sharpness

H = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
DATA = (torch.zeros(2, 1), torch.zeros(2))


class Quadratic(nn.Module):
    """Per-example loss 1/2 w^T diag(h) w + b^T w, with w named ``weight``."""

    def __init__(self, w, h=H, b=None):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(w, dtype=torch.float64).clone())
        self.register_buffer("h", h)
        self.register_buffer("b", torch.zeros_like(h) if b is None else torch.as_tensor(b, dtype=torch.float64))

    def forward(self, x):
        return (0.5 * (self.h * self.weight**2).sum() + self.b @ self.weight).expand(len(x))


def mean_output(outputs, targets):
    return outputs.mean()


def quadratic_loss(w, h=H, b=None):
    b = torch.zeros_like(h) if b is None else torch.as_tensor(b, dtype=torch.float64)
    return float(0.5 * (h * w**2).sum() + b @ w)


def test_keskar_phi_on_diagonal_quadratic_at_minimum():
    eps = 1e-3
    s = epsilon_sharpness(Quadratic([0.0, 0.0, 0.0]), DATA, epsilon=eps, loss_fn=mean_output)
    assert s.value == pytest.approx(100 * 0.5 * eps**2 * float(H.sum()) / (1 + 0), rel=1e-9)
    assert s.loss == 0.0 and s.measure == "epsilon"


def test_keskar_phi_away_from_minimum_uses_scaled_box():
    eps, x = 1e-2, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    model = Quadratic(x)
    s = epsilon_sharpness(model, DATA, epsilon=eps, loss_fn=mean_output, seed=3)
    # separable: every coordinate moves to the bound eps(|x_i| + 1) away from 0
    best = x + torch.sign(x) * eps * (x.abs() + 1)
    f0 = quadratic_loss(x)
    assert s.value == pytest.approx(100 * (quadratic_loss(best) - f0) / (1 + f0), rel=1e-9)
    assert torch.equal(model.weight.detach(), x)


def test_keskar_random_subspace_of_dimension_one():
    eps, seed = 1e-3, 7
    s = epsilon_sharpness(Quadratic([0.0, 0.0, 0.0]), DATA, epsilon=eps, subspace_dim=1, loss_fn=mean_output, seed=seed)
    a = torch.as_tensor(np.random.default_rng(seed).standard_normal((3, 1))[:, 0])
    assert s.value == pytest.approx(100 * 0.5 * eps**2 * float(a @ (H * a)), rel=1e-9)
    assert s.config["subspace_dim"] == 1


def test_sam_first_order_matches_closed_form():
    w, b, rho = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), [1.0, 0.0, -1.0], 0.05
    s = sam_sharpness(Quadratic(w, b=b), DATA, rho=rho, loss_fn=mean_output)
    g = H * w + torch.tensor(b, dtype=torch.float64)
    unit = g / g.norm()
    assert s.value == pytest.approx(rho * float(g.norm()) + 0.5 * rho**2 * float(unit @ (H * unit)), rel=1e-10)
    ascent = sam_sharpness(Quadratic(w, b=b), DATA, rho=rho, method="ascent", steps=20, loss_fn=mean_output)
    upper = rho * float(g.norm()) + 0.5 * rho**2 * float(H.max())
    assert s.value <= ascent.value <= upper


def test_sam_ascent_finds_top_eigenvalue_at_minimum():
    rho = 0.1
    model = Quadratic([0.0, 0.0, 0.0])
    with pytest.warns(RuntimeWarning, match="gradient is zero at w"):
        first = sam_sharpness(model, DATA, rho=rho, loss_fn=mean_output)
    ascent = sam_sharpness(model, DATA, rho=rho, method="ascent", steps=60, loss_fn=mean_output)
    assert first.value == 0.0  # zero gradient: the first-order point is w itself
    assert ascent.value == pytest.approx(0.5 * 3.0 * rho**2, rel=1e-6)
    assert ascent.value <= 0.5 * 3.0 * rho**2 * (1 + 1e-12)


def test_asam_first_order_matches_closed_form_and_leaves_bias_unscaled():
    class WeightAndBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.tensor([0.5, -2.0], dtype=torch.float64))
            self.bias = nn.Parameter(torch.tensor([0.3], dtype=torch.float64))

        def forward(self, x):
            w, c = self.weight, self.bias
            return (w[0] ** 2 + 3 * w[1] ** 2 + w[0] * c[0] + c[0] ** 2).expand(len(x))

    def loss(w, c):
        return w[0] ** 2 + 3 * w[1] ** 2 + w[0] * c[0] + c[0] ** 2

    rho, eta = 0.5, 0.01
    s = asam_sharpness(WeightAndBias(), DATA, rho=rho, eta=eta, loss_fn=mean_output)
    w, c = np.array([0.5, -2.0]), np.array([0.3])
    g = np.array([2 * w[0] + c[0], 6 * w[1], w[0] + 2 * c[0]])
    t = np.concatenate([np.abs(w) + eta, [1.0]])
    e = rho * t**2 * g / np.linalg.norm(t * g)
    expected = loss(w + e[:2], c + e[2:]) - loss(w, c)
    assert s.value == pytest.approx(expected, rel=1e-10)
    assert s.measure == "asam" and s.config["eta"] == eta


def test_m_sharpness_averages_disjoint_batches():
    class Centre(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.tensor([0.2, -0.1], dtype=torch.float64))

        def forward(self, x):
            return self.weight.expand(len(x), 2)

    def half_squared_distance(outputs, targets):
        return 0.5 * ((outputs - targets) ** 2).sum(dim=1).mean()

    g = torch.Generator().manual_seed(0)
    targets = torch.randn(10, 2, generator=g, dtype=torch.float64)
    data, rho, m = (torch.zeros(10, 1), targets), 0.05, 3
    s = m_sharpness(Centre(), data, m=m, rho=rho, loss_fn=half_squared_distance, progress=False)
    w = torch.tensor([0.2, -0.1], dtype=torch.float64)
    # L_B(w) = 1/2 mean ||w - y_i||^2 has gradient w - mean(y_B) and Hessian I
    per_batch = [rho * float((w - targets[i * m : (i + 1) * m].mean(0)).norm()) + 0.5 * rho**2 for i in range(3)]
    np.testing.assert_allclose(s.config["per_batch"], per_batch, rtol=1e-10)
    assert s.value == pytest.approx(np.mean(per_batch), rel=1e-10)
    assert (s.config["n_batches"], s.config["n_left_out"]) == (3, 1)
    whole = m_sharpness(Centre(), data, m=10, rho=rho, loss_fn=half_squared_distance, progress=False)
    assert whole.value == pytest.approx(sam_sharpness(Centre(), data, rho, loss_fn=half_squared_distance).value)


def test_sharpness_on_a_network_restores_the_model_and_is_positive():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    before = [p.detach().clone() for p in model.parameters()] + [b.clone() for b in model.buffers()]
    results = [
        epsilon_sharpness(model, data, epsilon=1e-2),
        epsilon_sharpness(model, data, epsilon=1e-2, subspace_dim=5),
        sam_sharpness(model, data, method="ascent", steps=5),
        asam_sharpness(model, data),
        m_sharpness(model, data, m=8, progress=False),
    ]
    after = [p.detach() for p in model.parameters()] + list(model.buffers())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert model.training and model[1].training
    assert all(r.value > 0 and math.isfinite(r.value) for r in results)
    assert list(results[0].frame().columns[:4]) == ["measure", "value", "loss", "perturbed_loss"]


def test_invalid_hyperparameters_raise():
    model = Quadratic([0.0, 0.0, 0.0])
    for call, message in [
        (lambda: epsilon_sharpness(model, DATA, epsilon=0.0), "epsilon: 0.0"),
        (lambda: epsilon_sharpness(model, DATA, subspace_dim=0), "subspace_dim: 0"),
        (lambda: epsilon_sharpness(model, DATA, maxiter=0), "maxiter: 0"),
        (lambda: sam_sharpness(model, DATA, rho=-1.0), "rho: -1.0"),
        (lambda: sam_sharpness(model, DATA, method="exact"), "method: 'exact'"),
        (lambda: sam_sharpness(model, DATA, steps=0), "steps: 0"),
        (lambda: sam_sharpness(model, DATA, step_size=0.0), "step_size: 0.0"),
        (lambda: asam_sharpness(model, DATA, eta=-0.1), "eta: -0.1"),
        (lambda: m_sharpness(model, DATA, m=0), "m: 0"),
        (lambda: m_sharpness(model, DATA, m=5), "exceeds"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
