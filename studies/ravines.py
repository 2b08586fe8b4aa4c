r"""Ravines: SGD, momentum, Adagrad, RMSprop and Adam in narrow 2D valleys, aligned, rotated, and from sparse features.

The classic picture of why momentum and per-coordinate step sizes help (Ruder, S. (2016). An overview of gradient
descent optimization algorithms. arXiv:1609.04747, Sections 4.1-4.6; Sutton, R. S. (1986), ravines and momentum;
Duchi, J., Hazan, E. and Singer, Y. (2011). Adaptive Subgradient Methods for Online Learning and Stochastic
Optimization. JMLR 12, Section 1, rare but informative features). Three problems (:data:`PROBLEMS`) share the
minimum θ* = (1, 1), the start θ₀ = (−2.5, 3) and the Hessian eigenvalues {1, 100} (condition number 100):

* ``aligned`` — :math:`f(θ) = \tfrac12 (θ-θ^*)^\top \operatorname{diag}(1, 100)(θ-θ^*)`: the valley runs along
  θ₁, so per-coordinate scaling (Adagrad, RMSprop, Adam) rescales exactly the right directions;
* ``rotated`` — the same valley turned by 45°, :math:`H = R_{45°}\operatorname{diag}(1, 100)R_{45°}^\top`: both
  coordinates mix the steep and the flat direction, and per-coordinate scaling no longer undoes the ravine;
* ``sparse`` — least squares :math:`\tfrac1{2n}\lVert Xθ - y\rVert^2` with a dense feature x₁ ~ N(0, 10²) and a
  sparse one x₂ = 10 z b, z ~ N(0, 1), b ~ Bernoulli(0.01) (nonzero in about 1% of the n = 4000 examples),
  y = Xθ* + ε, ε ~ N(0, 0.1²) (so the loss cannot go below about 0.005); E[xxᵀ] ≈ diag(100, 1), so the valley runs
  along the rare feature. Mini-batches of 10 (seeded): the rare coordinate's gradient is exactly 0 in about 9 of
  10 steps, the setting Adagrad's per-coordinate step size was designed for.

Optimizers (:data:`OPTIMIZERS`, all ``torch.optim`` with their papers' or torch's defaults besides the step
size: momentum μ = 0.9, RMSprop α = 0.99, Adam β = (0.9, 0.999), ε = 1e-8). The problems do not come from a paper
with tuned values, so each step size γ is swept over four values per method (:data:`LEARNING_RATES`; SGD's largest,
0.019, is just under 2/λ_max = 0.02 and zigzags across the ravine) and the figure shows, per problem, the best
(lowest mean loss over the last 10% of the steps); the tiny scale runs only the third value of each list. Each run
records per step the iterate, the full-data loss, the gradient used and the step Δθ per coordinate (``delta1``,
``delta2``; the "per-coordinate step size" is :math:`|Δθ_i|`); one more run per problem stores the loss on a grid
for the contour lines. Steps: 60 (tiny), 150 (quick), 500 (full), float64 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from studies.runner import Context, Study

THETA_STAR = (1.0, 1.0)
START = (-2.5, 3.0)
EIGENVALUES = (1.0, 100.0)
SPARSE = {"n": 4000, "p": 0.01, "scale": 10.0, "noise": 0.1, "batch_size": 10}
WINDOW = ((-3.5, 3.5), (-2.5, 4.5))  # (θ₁ range, θ₂ range) of the contour grid
PROBLEMS = ("aligned", "rotated", "sparse")
#: name -> (torch.optim class name, hyperparameters besides the step size); see the module docstring.
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD": ("SGD", {}),
    "Momentum": ("SGD", {"momentum": 0.9}),
    "Adagrad": ("Adagrad", {}),
    "RMSprop": ("RMSprop", {"alpha": 0.99}),
    "Adam": ("Adam", {"betas": (0.9, 0.999), "eps": 1e-8}),
}
#: name -> step sizes γ tried on every problem; the third is the one run at the tiny scale.
LEARNING_RATES: dict[str, tuple[float, ...]] = {
    "SGD": (0.0025, 0.005, 0.01, 0.019),
    "Momentum": (0.001, 0.002, 0.004, 0.008),
    "Adagrad": (0.5, 1.0, 2.0, 4.0),
    "RMSprop": (0.015, 0.03, 0.06, 0.12),
    "Adam": (0.05, 0.1, 0.2, 0.4),
}
_STEPS = {"tiny": 60, "quick": 150, "full": 500}


def hessian(problem: str) -> Tensor:
    """The (expected) Hessian of ``problem``: diag(1, 100), rotated by 45°, or E[xxᵀ] = diag(100, 1) for sparse.

    Example:
        >>> hessian("rotated").round(decimals=10).tolist()
        [[50.5, -49.5], [-49.5, 50.5]]
    """
    low, high = EIGENVALUES
    if problem == "aligned":
        return torch.diag(torch.tensor([low, high], dtype=torch.float64))
    if problem == "rotated":
        c = math.sqrt(0.5)
        rotation = torch.tensor([[c, -c], [c, c]], dtype=torch.float64)
        return rotation @ torch.diag(torch.tensor([low, high], dtype=torch.float64)) @ rotation.T
    if problem == "sparse":
        return torch.diag(torch.tensor([high, low], dtype=torch.float64))
    raise ValueError(f"Unknown problem {problem!r}; choose one of {', '.join(PROBLEMS)}")


def sparse_data(seed: int = 0) -> tuple[Tensor, Tensor]:
    """The sparse-feature regression data (X, y): x₁ dense, x₂ nonzero in a fraction p of the rows."""
    g = torch.Generator().manual_seed(seed)
    n, scale = SPARSE["n"], SPARSE["scale"]
    dense = scale * torch.randn(n, generator=g, dtype=torch.float64)
    active = torch.rand(n, generator=g, dtype=torch.float64) < SPARSE["p"]
    rare = scale * torch.randn(n, generator=g, dtype=torch.float64) * active
    x = torch.stack([dense, rare], dim=1)
    y = x @ torch.tensor(THETA_STAR, dtype=torch.float64) + SPARSE["noise"] * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    return x, y


def losses(problem: str, seed: int = 0) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor, int], Tensor]]:
    """``(full_loss, step_loss)``: the full objective of θ (…, 2), and the loss a step differentiates at step t.

    For the quadratics both are the exact quadratic; for ``sparse`` the step loss is a seeded mini-batch of 10.

    Example:
        >>> full, _ = losses("aligned")
        >>> full(torch.tensor([[1.0, 2.0]], dtype=torch.float64)).tolist()
        [50.0]
    """
    star = torch.tensor(THETA_STAR, dtype=torch.float64)
    if problem != "sparse":
        h = hessian(problem)

        def quadratic(theta: Tensor) -> Tensor:
            d = theta - star
            return 0.5 * ((d @ h) * d).sum(-1)

        return quadratic, lambda theta, t: quadratic(theta)
    x, y = sparse_data(seed)
    batches = torch.Generator().manual_seed(seed + 1)

    def full(theta: Tensor) -> Tensor:
        return 0.5 * ((theta @ x.T - y) ** 2).mean(-1)

    def minibatch(theta: Tensor, t: int) -> Tensor:
        idx = torch.randint(len(y), (SPARSE["batch_size"],), generator=batches)
        return 0.5 * ((x[idx] @ theta - y[idx]) ** 2).mean()

    return full, minibatch


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """Every optimizer at every step size on every problem (one step size at tiny), plus the contour grids."""
    steps = _STEPS[scale]
    runs = [
        dict(problem=p, optimizer=name, lr=lr, steps=steps, seed=0, role="run")
        for p in PROBLEMS
        for name, lrs in LEARNING_RATES.items()
        for lr in (lrs[2:3] if scale == "tiny" else lrs)
    ]
    return runs + [dict(problem=p, optimizer="none", seed=0, role="contour", size=81) for p in PROBLEMS]


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """One optimizer on one problem (rows per step: θ₁, θ₂, loss, g₁, g₂, Δθ₁, Δθ₂), or the contour grid."""
    full, step_loss = losses(config["problem"], config["seed"])
    if config["role"] == "contour":
        (lo1, hi1), (lo2, hi2) = WINDOW
        a, b = torch.meshgrid(
            torch.linspace(lo1, hi1, config["size"], dtype=torch.float64),
            torch.linspace(lo2, hi2, config["size"], dtype=torch.float64),
            indexing="ij",
        )
        values = full(torch.stack([a.reshape(-1), b.reshape(-1)], dim=1))
        grid_frame = {"grid_theta1": a.reshape(-1), "grid_theta2": b.reshape(-1), "quantity": "loss_grid"}
        return pd.DataFrame(grid_frame | {"value": values})
    theta = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    cls_name, hyper = OPTIMIZERS[config["optimizer"]]
    optimizer = getattr(torch.optim, cls_name)([theta], lr=config["lr"], **hyper)
    rows: list[tuple[int, str, float]] = []

    def record(t: int, **values: Tensor) -> None:
        for name, value in values.items():
            rows.extend((t, f"{name}{i + 1}", float(value[i])) for i in range(2))

    rows.append((0, "loss", float(full(theta.detach()))))
    record(0, theta=theta.detach())
    for step in range(1, config["steps"] + 1):
        before = theta.detach().clone()
        optimizer.zero_grad()
        step_loss(theta, step).backward()
        grad = theta.grad.detach().clone()
        optimizer.step()
        after = theta.detach()
        rows.append((step, "loss", float(full(after))))
        record(step, theta=after, grad=grad, delta=after - before)
    return pd.DataFrame(rows, columns=["step", "quantity", "value"])


STUDY = Study(name="ravines", title="Ravines: aligned, rotated and sparse-feature valleys", grid=grid, run=run)
