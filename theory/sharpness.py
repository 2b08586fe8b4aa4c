r"""Sharpness measures on problems with known answers (Keskar et al. 2017; Dinh et al. 2017).

Keskar et al., "On Large-Batch Training for Deep Learning: Generalization Gap and Sharp Minima", ICLR 2017, Eq. (4):
with the box C_ε = {y : |y_i| ≤ ε(|x_i| + 1)},

.. math::

    \phi_{x,f}(\epsilon) = 100\,\frac{\max_{y\in C_\epsilon} f(x+y) - f(x)}{1 + f(x)},

which for f = ½xᵀHx, H = diag(h) ⪰ 0, at x = 0 is 100·½ε²tr(H), attained at a vertex.
Dinh et al., "Sharp Minima Can Generalize For Deep Nets", ICML 2017, Sec. 4: for f = w₂ relu(w₁x) on the datum
(1, 1) with L = ½(f − 1)², every (α, 1/α) is a minimum with L = 0 and Hessian eigenvalues {0, α² + α⁻²}.
Checks 16-17.
"""

from __future__ import annotations

import itertools

import sympy as sp
import torch
from torch import nn

from theory._result import CheckResult, checked_formula, is_zero, make_result

__all__ = ["dinh_reparametrization", "keskar_box_maximum"]

eps_, alpha_ = sp.symbols("epsilon alpha", positive=True)
h_ = sp.symbols("h1:4", positive=True)
BOX_MAXIMUM = eps_**2 * sum(h_) / 2
TOP_EIGENVALUE = alpha_**2 + alpha_**-2


class _Quadratic(nn.Module):
    """f(x) = ½xᵀdiag(h)x as a model whose output is the loss (one scalar per input row)."""

    def __init__(self, h: list[float]) -> None:
        super().__init__()
        self.register_buffer("h", torch.tensor(h, dtype=torch.float64))
        self.x = nn.Parameter(torch.zeros(len(h), dtype=torch.float64))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (0.5 * self.h * self.x**2).sum().expand(len(inputs))


def keskar_box_maximum(
    formula: sp.Expr | None = None, h: tuple[float, ...] = (1.0, 2.0, 3.0), epsilon: float = 1e-3
) -> CheckResult:
    r"""Item 16: max over the box of ½yᵀdiag(h)y is ½ε²tr(H) at a vertex; landscape's L-BFGS-B φ finds it.

    Args:
        formula: Claimed box maximum in ``epsilon``, ``h1..h3``.
        h: Diagonal of H in the numeric half (three entries).
        epsilon: Box size ε.

    Returns:
        The check result; value = φ from ``landscape.sharpness.epsilon_sharpness`` (or a scipy L-BFGS-B fallback),
        reference = 100·formula/(1 + f(0)).
    """
    formula = checked_formula(formula, BOX_MAXIMUM)
    y = sp.symbols("y1:4", real=True)
    f = sum(hi * yi**2 for hi, yi in zip(h_, y, strict=True)) / 2
    stationary = sp.solve([sp.diff(f, yi) for yi in y], y, dict=True)
    interior_min = stationary == [dict.fromkeys(y, 0)] and f.subs(stationary[0]) == 0
    vertices = [f.subs(dict(zip(y, signs, strict=True))) for signs in itertools.product((-eps_, eps_), repeat=3)]
    vertex_ok = all(is_zero(v - formula) for v in vertices)
    # separable and convex per coordinate: on each edge y_i in [-eps, eps] the maximum sits at an endpoint
    edge_ok = all(sp.diff(f, yi, 2).is_positive for yi in y)

    model = _Quadratic(list(h))
    data = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    try:
        from landscape.sharpness import epsilon_sharpness
    except ImportError:
        epsilon_sharpness = None
    if epsilon_sharpness is not None:
        phi = epsilon_sharpness(model, data, epsilon=epsilon, loss_fn=lambda out, target: out.mean()).value
        numeric = "landscape.sharpness.epsilon_sharpness (L-BFGS-B)"
    else:
        from scipy.optimize import Bounds, minimize

        diag = torch.tensor(h, dtype=torch.float64).numpy()
        result = minimize(
            lambda v: (-0.5 * float(diag @ v**2), -diag * v),
            x0=torch.full((len(h),), epsilon / 2, dtype=torch.float64).numpy(),
            jac=True,
            method="L-BFGS-B",
            bounds=Bounds(-epsilon, epsilon),
        )
        phi = 100.0 * -float(result.fun)
        numeric = "scipy L-BFGS-B"
    reference = 100.0 * float(formula.subs({eps_: epsilon, **dict(zip(h_, h, strict=True))}))
    return make_result(
        id="sharpness.keskar_box_maximum",
        item=16,
        title="Keskar epsilon-sharpness of a quadratic: 100 eps^2 tr(H)/2",
        formula=sp.Eq(sp.Symbol(r"\max_{C_\epsilon} f"), formula),
        method="solve grad f = 0 (interior min); second derivatives > 0; all 8 vertices simplify to the claim",
        symbolic_ok=interior_min and vertex_ok and edge_ok,
        value=phi,
        reference=reference,
        tolerance=1e-12 * reference,  # L-BFGS-B ends on the box's vertex: measured deviation 0 (float64)
        numeric=numeric,
        source="Keskar et al. 2017, Eq. (4)",
        note=(
            f"interior stationary point is the minimum: {interior_min}; every vertex gives the claim: {vertex_ok}; "
            f"convex per coordinate: {edge_ok}. H=diag{h}, eps={epsilon}, f(0)=0: phi={phi:.10g} vs "
            f"{reference:.10g} (tolerance 1e-12 relative)."
        ),
    )


def _dinh_loss(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """½(w₂ relu(w₁·1) − 1)²."""
    return 0.5 * (w2 * torch.relu(w1 * 1.0) - 1.0) ** 2


def dinh_reparametrization(
    formula: sp.Expr | None = None, alphas: tuple[float, ...] = (0.1, 0.5, 1.0, 3.0, 10.0)
) -> CheckResult:
    r"""Item 17: at (α, 1/α) the loss is 0 and the Hessian eigenvalues are {0, α² + α⁻²}.

    Args:
        formula: Claimed nonzero eigenvalue in ``alpha``.
        alphas: α values of the numeric half.

    Returns:
        The check result; value = max relative deviation of the dense Hessian's top eigenvalue (torch.func) from
        the formula over ``alphas``. The models rescaled by ``landscape.reparam.rescale_relu_layers`` must compute the
        same outputs and have the predicted eigenvalue.
    """
    formula = checked_formula(formula, TOP_EIGENVALUE)
    w1, w2 = sp.symbols("w1 w2", real=True)
    loss = (w2 * sp.Max(0, w1 * 1) - 1) ** 2 / 2
    point = {w1: alpha_, w2: 1 / alpha_}
    zero_loss = is_zero(loss.subs(point))
    hessian = sp.hessian(loss, (w1, w2)).subs(point).doit()
    hessian = hessian.applyfunc(lambda e: sp.simplify(e.replace(sp.Heaviside, lambda *a: sp.Integer(1))))
    eigenvalues = list(hessian.eigenvals())
    eigen_ok = (
        len(eigenvalues) == 2
        and any(is_zero(e) for e in eigenvalues)
        and any(is_zero(e - formula) for e in eigenvalues)
    )

    deviations = []
    for alpha in alphas:
        w = torch.tensor([alpha, 1 / alpha], dtype=torch.float64)
        h = torch.func.hessian(lambda v: _dinh_loss(v[0], v[1]))(w)
        top = float(torch.linalg.eigvalsh(h)[-1])
        claimed = float(formula.subs(alpha_, alpha))
        deviations.append(abs(top - claimed) / claimed)
    numeric = "torch.func.hessian of the ReLU net"
    rescaled_ok, text = _landscape_rescaling(formula, alphas)
    if rescaled_ok is not None:
        numeric += " + landscape.reparam.rescale_relu_layers"
    return make_result(
        id="sharpness.dinh_reparametrization",
        item=17,
        title="Dinh rescaling: same loss 0, Hessian eigenvalues {0, a^2 + a^-2}",
        formula=sp.Eq(sp.Symbol(r"\lambda_{\max}"), formula),
        method="hessian of 1/2(w2 relu(w1) - 1)^2 at (a, 1/a), eigenvals, simplify to 0",
        symbolic_ok=zero_loss and eigen_ok,
        value=max(deviations),
        reference=0.0,
        tolerance=1e-12,
        numeric=numeric,
        source="Dinh et al. 2017, Sec. 4 (Theorem 4)",
        note=(
            f"L(a, 1/a) = 0: {zero_loss}; eigenvalues {eigenvalues}: {eigen_ok}. Max relative deviation of the "
            f"dense top eigenvalue over alpha in {alphas}: {max(deviations):.2g}. {text}"
        ),
        numeric_extra_ok=rescaled_ok is not False,
    )


def _landscape_rescaling(formula: sp.Expr, alphas: tuple[float, ...]) -> tuple[bool | None, str]:
    """Rescale the (1, 1) ReLU net with landscape's utility: outputs unchanged, top eigenvalue = formula."""
    try:
        from landscape.reparam import rescale_relu_layers
    except ImportError:
        return None, "landscape.reparam not available."
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[2].weight.fill_(1.0)
    x = torch.ones(1, 1, dtype=torch.float64)
    worst_output, worst_eig = 0.0, 0.0
    for alpha in alphas:
        scaled = rescale_relu_layers(net, "0", "2", alpha)
        with torch.no_grad():
            worst_output = max(worst_output, float((scaled(x) - net(x)).abs().max()))
        w = torch.stack([scaled[0].weight.reshape(()), scaled[2].weight.reshape(())]).detach()
        top = float(torch.linalg.eigvalsh(torch.func.hessian(lambda v: _dinh_loss(v[0], v[1]))(w))[-1])
        claimed = float(formula.subs(alpha_, alpha))
        worst_eig = max(worst_eig, abs(top - claimed) / claimed)
    ok = worst_output <= 1e-15 and worst_eig <= 1e-12
    return ok, (
        f"landscape rescale_relu_layers from (1, 1): max output change {worst_output:.2g}, max relative "
        f"eigenvalue deviation {worst_eig:.2g}."
    )
