r"""Scale-invariant 3D Rosenbrock: momentum GD inflates ‖w‖; weight decay and the projection of SGDP curb it.

Heo, B., Chun, S., Oh, S. J., Han, D., Yun, S., Kim, G., Uh, Y. and Ha, J.-W. (2021). AdamP: Slowing Down the
Slowdown for Momentum Optimizers on Scale-invariant Weights. ICLR. Section 2.3 / Figure 3 (toy example) and its
appendix. The paper minimises a function of the direction of w ∈ R³ only, so ∇h ⊥ w and every step of plain or
momentum GD increases ‖w‖ (its effective step size shrinks as 1/‖w‖²). It reports, over 200 iterations from
(ψ, φ) = (−2, 2): r = ‖w‖ goes 1 → 3.16 with momentum, peaks at ≈ 2.53 with weight decay, and 1 → 1.12 with the
projection (SGDP).

Objective: with the spherical angles of w (ψ the azimuth, φ the polar angle),

.. math::
    ψ = \operatorname{atan2}(w_2, w_1),\quad φ = \operatorname{atan2}\big(\sqrt{w_1^2 + w_2^2}, w_3\big),\quad
    h(w) = (a - ψ)^2 + b\,(φ - ψ^2)^2,

a = 1, b = 100 (the classic Rosenbrock constants; the paper's text does not restate them), so h(cw) = h(w) for
c > 0. The start is w₀ = (sin φ cos ψ, sin φ sin ψ, cos φ) at (ψ, φ) = (−2, 2), r₀ = 1. w is a 1×3 tensor, so
SGDP treats it as one output channel of length 3 (its projection acts on tensors with ≥ 2 dims).

Methods (:data:`METHODS`): ``Momentum`` — ``torch.optim.SGD(momentum=μ)``; ``Momentum + WD`` — the same with
``weight_decay=λ`` (L2 added to the gradient); ``SGDP`` — ``optim.SGDP(momentum=μ)``, no weight decay, δ = 0.1.
Hyperparameters, found by the sweep this study runs (the paper does not state them in the main text): step size
η = 1e-4 and μ = 0.9 give r: 1 → 3.06 (momentum) and 1 → 1.13 (SGDP), within 3% and 1% of the paper's 3.16 and
1.12 (η ≈ 1.07e-4 would give 3.16, but a round 1e-4 looks like the paper's choice); λ = 10 with that η gives a
peak of 2.52 (paper ≈ 2.53). The sweep (η ∈ {3e-5, 1e-4, 3e-4, 1e-3}, λ ∈ {1, 3, 10, 30}) is part of the results.
Everything runs in float64 for 200 iterations (the paper's count) at every scale; the sweep is left out at
``tiny``. One more run stores h on a (ψ, φ) grid for the figure's contour lines (figures never compute).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from optim import SGDP
from studies.runner import Context, Study

A, B = 1.0, 100.0
START = (-2.0, 2.0)  # (ψ, φ)
STEPS = 200
LR, MOMENTUM, WEIGHT_DECAY = 1e-4, 0.9, 10.0
METHODS = ("Momentum", "Momentum + WD", "SGDP")
SWEEP_LRS = (3e-5, 1e-4, 3e-4, 1e-3)
SWEEP_WDS = (1.0, 3.0, 10.0, 30.0)


def angles(w: Tensor) -> tuple[Tensor, Tensor]:
    """Azimuth ψ and polar angle φ of the rows of ``w`` (…, 3); both scale invariant.

    Example:
        >>> psi, phi = angles(torch.tensor([[0.0, 2.0, 0.0]]))
        >>> round(psi.item(), 4), round(phi.item(), 4)
        (1.5708, 1.5708)
    """
    psi = torch.atan2(w[..., 1], w[..., 0])
    phi = torch.atan2(torch.sqrt(w[..., 0] ** 2 + w[..., 1] ** 2), w[..., 2])
    return psi, phi


def rosenbrock_on_sphere(w: Tensor, a: float = A, b: float = B) -> Tensor:
    r"""h(w) = (a − ψ)² + b(φ − ψ²)² of the spherical angles of ``w``: a scale-invariant Rosenbrock function.

    Example:
        >>> w = direction(1.0, 1.0)
        >>> float(rosenbrock_on_sphere(w)) < 1e-20, float(rosenbrock_on_sphere(3 * w)) < 1e-20
        (True, True)
    """
    psi, phi = angles(w)
    return ((a - psi) ** 2 + b * (phi - psi**2) ** 2).sum()


def direction(psi: float, phi: float) -> Tensor:
    """The unit vector (1×3, float64) with azimuth ψ and polar angle φ."""
    return torch.tensor(
        [[math.sin(phi) * math.cos(psi), math.sin(phi) * math.sin(psi), math.cos(phi)]], dtype=torch.float64
    )


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """The three methods at the chosen (η, μ, λ) and the h(ψ, φ) contour grid; outside ``tiny`` also the sweep."""
    configs = [dict(method=m, lr=LR, weight_decay=WEIGHT_DECAY if m == "Momentum + WD" else 0.0) for m in METHODS]
    if scale != "tiny":
        for lr in SWEEP_LRS:
            configs += [dict(method=m, lr=lr, weight_decay=0.0) for m in ("Momentum", "SGDP")]
            configs += [dict(method="Momentum + WD", lr=lr, weight_decay=wd) for wd in SWEEP_WDS]
    unique = list({(c["method"], c["lr"], c["weight_decay"]): c for c in configs}.values())
    runs = [dict(c, role="main" if c in configs[:3] else "sweep", momentum=MOMENTUM, steps=STEPS) for c in unique]
    return [dict(c, psi0=START[0], phi0=START[1], a=A, b=B) for c in [*runs, dict(method="contour", role="contour")]]


def contour(a: float = A, b: float = B, size: int = 121) -> pd.DataFrame:
    """Values of h on a ``size``×``size`` grid of (ψ, φ) ∈ [−2.5, 1.5] × [0, π] (for contour lines), tidy.

    Example:
        >>> contour(size=3)["quantity"].unique().tolist()
        ['h_grid']
    """
    psi, phi = torch.meshgrid(
        torch.linspace(-2.5, 1.5, size, dtype=torch.float64),
        torch.linspace(0, math.pi, size, dtype=torch.float64),
        indexing="ij",
    )
    h = (a - psi) ** 2 + b * (phi - psi**2) ** 2
    return pd.DataFrame(
        {"grid_psi": psi.reshape(-1), "grid_phi": phi.reshape(-1), "quantity": "h_grid", "value": h.reshape(-1)}
    )


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Optimise h from (ψ₀, φ₀) for ``steps`` iterations; rows per step of r, h, ψ, φ, w₁..w₃ (and SGDP's flag).

    The ``contour`` config instead returns :func:`contour`.
    """
    if config["method"] == "contour":
        return contour(config["a"], config["b"])
    w = direction(config["psi0"], config["phi0"]).requires_grad_(True)
    hyper = dict(lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"])
    optimizer = SGDP([w], **hyper) if config["method"] == "SGDP" else torch.optim.SGD([w], **hyper)
    rows: list[tuple[int, str, float]] = []

    def record(step: int, loss: float) -> None:
        psi, phi = angles(w.detach())
        values = {"r": w.detach().norm(), "h": loss, "psi": psi, "phi": phi}
        values |= {f"w{i + 1}": w.detach()[0, i] for i in range(3)}
        if config["method"] == "SGDP" and step > 0:
            values["projected"] = float(optimizer.state[w]["projection"] != "none")
        rows.extend((step, name, float(value)) for name, value in values.items())

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = rosenbrock_on_sphere(w, config["a"], config["b"])
        loss.backward()
        return loss

    record(0, float(rosenbrock_on_sphere(w.detach(), config["a"], config["b"])))
    for step in range(1, config["steps"] + 1):
        optimizer.step(closure)
        record(step, float(rosenbrock_on_sphere(w.detach(), config["a"], config["b"])))
    frame = pd.DataFrame(rows, columns=["step", "quantity", "value"])
    frame["value"] = frame["value"].where(np.isfinite(frame["value"]))  # divergence is recorded as NaN
    return frame


STUDY = Study(name="heo2021adamp", title="Scale-invariant 3D Rosenbrock (Heo et al. 2021, AdamP)", grid=grid, run=run)
