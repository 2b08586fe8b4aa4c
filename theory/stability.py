r"""Stability thresholds of GD, heavy ball, Nesterov and Adam on a quadratic (edge of stability), and the tracker.

On :math:`L(x) = \tfrac12 x^\top H x` every update rule here is linear in its state, and in the eigenbasis of
:math:`H` (of :math:`P^{-1/2}HP^{-1/2}` for a frozen diagonal preconditioner :math:`P`) it splits into independent
one-dimensional iterations :math:`s_{t+1} = A(\lambda)s_t` with :math:`g = \lambda x`, written exactly as torch
computes them (η = ``lr``; β = ``momentum``; β₁ = ``betas[0]``):

* GD: :math:`x \leftarrow x - \eta g`;
* heavy ball (torch SGD): :math:`b \leftarrow \beta b + g,\ x \leftarrow x - \eta b`;
* Nesterov (torch SGD, ``nesterov=True``): :math:`b \leftarrow \beta b + g,\ x \leftarrow x - \eta(g + \beta b)`;
* Adam with frozen :math:`P`: :math:`m \leftarrow \beta_1 m + (1-\beta_1)g,\ x \leftarrow x - \eta m/p`.

The iteration is stable (:math:`s_t \to 0` for every start) iff every root of the characteristic polynomial
:math:`\chi(z) = \det(zI - A)` lies in the open unit disc. For a monic polynomial of degree 1 or 2 the Schur–Cohn
(Jury) conditions are: :math:`\chi(1) > 0`, :math:`(-1)^n\chi(-1) > 0` and, for :math:`n = 2`,
:math:`1 - |\chi(0)| > 0`, of which only :math:`\chi(0) < 1` is independent of the first two. Each condition
here is affine in λ, so the stable set of λ > 0 is an interval
:math:`(0, \lambda^*)` whose end is the smallest root of a condition that decreases in λ. sympy derives
:math:`\lambda^*`:

.. math::
    \text{GD: } \frac{2}{\eta},\quad \text{heavy ball: } \frac{2+2\beta}{\eta},\quad
    \text{Nesterov: } \frac{2+2\beta}{(1+2\beta)\eta},\quad
    \text{Adam: } \lambda^*/p = \frac{2+2\beta_1}{(1-\beta_1)\eta}.

(For Nesterov, :math:`\chi(z) = z^2 - (1+\beta)(1-\eta\lambda)z + \beta(1-\eta\lambda)` and the binding condition is
:math:`\chi(-1) = 1 + (1+2\beta)(1-\eta\lambda) > 0`; for Adam the EMA's :math:`1-\beta_1` scales the gradient, so
the heavy-ball bound holds for :math:`(1-\beta_1)\eta\lambda/p`.) With :math:`\beta_1 = 0.9` Adam's threshold on
:math:`\lambda_{\max}(P^{-1}H)` is 38/η (Cohen et al. 2022).

The numeric half iterates torch's own optimizers (``optim.make``) on a 3-dimensional quadratic whose top eigenvalue
is 0.99 and 1.01 times the claimed threshold: the first must converge (‖x_N‖ ≤ 1e-6‖x_0‖), the second diverge
(‖x‖ > 10³‖x_0‖). For Adam the preconditioner must be frozen, which torch's Adam cannot do itself (it refuses
β₂ = 1): before every step the state's ``exp_avg_sq`` is set to :math:`(v - (1-\beta_2)g^2)/\beta_2`, so torch's own
update :math:`v \leftarrow \beta_2 v + (1-\beta_2)g^2` lands on the fixed :math:`v` again, and the step counter is
set to 10⁶ so that both bias corrections are 1 in float64; the step is then exactly
:math:`x \leftarrow x - \eta m/(\sqrt v + \epsilon)`, torch's kernel with :math:`P = \sqrt v + \epsilon`, read back
through ``optim.preconditioner.stability``.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
import torch
from torch.nn import functional as F

from landscape.sharpness_dynamics import SharpnessDynamics
from optim import make
from optim.preconditioner import stability
from theory._result import CheckResult, checked_formula, is_zero, make_result

__all__ = [
    "ADAM",
    "GD",
    "HEAVY_BALL",
    "NESTEROV",
    "adam_threshold",
    "characteristic_polynomial",
    "derived_threshold",
    "gd_threshold",
    "heavy_ball_threshold",
    "nesterov_threshold",
    "tracker_preconditioned_sharpness",
]

SOURCE = "Cohen et al. 2021 (GD at the edge of stability), App.; Cohen et al. 2022 (adaptive methods at the EoS)"
eta_, lam_, beta_, beta1_, beta2_, p_ = sp.symbols("eta lambda beta beta_1 beta_2 p", positive=True)
z_, s_ = sp.symbols("z s", positive=True)

#: ‖x‖/‖x_0‖ above which an iteration counts as diverged (for Adam the pinned v stays exact to ~1e-4 below it).
DIVERGED = 1e3
GD = 2 / eta_
HEAVY_BALL = (2 + 2 * beta_) / eta_
NESTEROV = (2 + 2 * beta_) / ((1 + 2 * beta_) * eta_)
ADAM = (2 + 2 * beta1_) / ((1 - beta1_) * eta_)


def _update(rule: str) -> tuple[list[sp.Symbol], list[sp.Expr]]:
    """One step of ``rule`` on the 1-D quadratic g = λx, as torch writes it: (state symbols, their new values)."""
    x, b = sp.symbols("x b")
    if rule == "gd":
        return [x], [x - eta_ * lam_ * x]
    g = lam_ * x
    if rule == "heavy_ball":
        b_new = beta_ * b + g
        return [x, b], [x - eta_ * b_new, b_new]
    if rule == "nesterov":
        b_new = beta_ * b + g
        return [x, b], [x - eta_ * (g + beta_ * b_new), b_new]
    if rule == "adam":
        m_new = beta1_ * b + (1 - beta1_) * g
        return [x, b], [x - eta_ * m_new / p_, m_new]
    raise ValueError(f"Unknown rule: {rule!r}")


def characteristic_polynomial(rule: str) -> sp.Poly:
    r"""The characteristic polynomial :math:`\det(zI - A)` of the linear iteration of ``rule``, in ``z``.

    Example:
        >>> characteristic_polynomial("heavy_ball").as_expr()
        beta + z**2 + z*(-beta + eta*lambda - 1)
    """
    state, new = _update(rule)
    matrix = sp.Matrix(new).jacobian(state)
    return sp.Poly(sp.expand((z_ * sp.eye(len(state)) - matrix).det()), z_)


def jury_conditions(poly: sp.Poly) -> list[sp.Expr]:
    """Expressions that are all positive iff every root of the monic ``poly`` (degree 1 or 2) has modulus < 1."""
    n = poly.degree()
    expr = poly.as_expr()
    if n == 1:
        return [expr.subs(z_, 1), -expr.subs(z_, -1)]
    if n == 2:
        # |χ(0)| < 1; its lower half χ(0) > -1 follows from χ(1) + χ(-1) = 2 + 2χ(0) > 0
        return [expr.subs(z_, 1), expr.subs(z_, -1), 1 - expr.subs(z_, 0)]
    raise ValueError(f"Jury conditions are written out for degree 1 and 2, got {n}")


def _positive(expr: sp.Expr) -> bool:
    """Whether ``expr`` is positive for all η, λ, p > 0 and β, β₁ ∈ (0, 1) (β = 1/(1+s), s > 0), by sympy."""
    substituted = sp.factor(sp.simplify(expr.subs({beta_: 1 / (1 + s_), beta1_: 1 / (1 + s_)})))
    return bool(substituted.is_positive)


def derived_threshold(rule: str) -> sp.Expr:
    r"""The stability threshold λ* of ``rule`` derived from the Jury conditions of its characteristic polynomial.

    Every condition must be affine in λ; the threshold is the smallest root among conditions that decrease in λ,
    and every condition must hold on (0, λ*) (checked at λ → 0⁺ through its slope and at λ*).

    Example:
        >>> derived_threshold("nesterov")
        2*(beta + 1)/(eta*(2*beta + 1))
    """
    conditions = [sp.expand(c) for c in jury_conditions(characteristic_polynomial(rule))]
    roots = []
    for condition in conditions:
        if sp.degree(condition, lam_) > 1:
            raise ValueError(f"condition {condition} is not affine in lambda")
        slope, intercept = condition.coeff(lam_, 1), condition.coeff(lam_, 0)
        if slope != 0 and _positive(-slope):
            roots.append(sp.factor(sp.simplify(-intercept / slope)))
        elif not (_positive(condition) or (is_zero(intercept) and _positive(slope))):
            raise ValueError(f"condition {condition} can fail for small lambda")
    smallest = [r for r in roots if all(r == other or _positive(other - r) for other in roots)]
    if len(smallest) != 1:
        raise ValueError(f"no single smallest root among {roots}")
    threshold = smallest[0]
    for condition in conditions:  # at the threshold all conditions hold or vanish (the one that binds)
        value = sp.simplify(condition.subs(lam_, threshold))
        if not (value == 0 or _positive(value)):
            raise ValueError(f"condition {condition} fails before the threshold")
    return threshold


def _iterate(optimizer_name: str, hyper: dict, top: float, steps: int, seed: int) -> tuple[float, bool]:
    """Iterate torch's optimizer on ½xᵀHx with λ_max(H) = ``top``: (log10 ‖x_end‖/‖x_0‖, diverged)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=generator))
    hessian = q @ torch.diag(torch.tensor([1.0, 0.6, 0.3], dtype=torch.float64) * top) @ q.T
    x = torch.nn.Parameter(torch.randn(3, dtype=torch.float64, generator=generator))
    start = float(x.detach().norm())
    optimizer = make(optimizer_name, [x], **hyper)
    for _ in range(steps):
        x.grad = hessian @ x.detach()
        optimizer.step()
        norm = float(x.detach().norm())
        if not math.isfinite(norm) or norm > DIVERGED * start:
            return math.inf, True
    return math.log10(norm / start), False


def _threshold_check(
    rule: str, item: int, title: str, formula: sp.Expr, optimizer_name: str, hyper: dict, steps: int
) -> CheckResult:
    """Derive ``rule``'s threshold, compare with ``formula``, iterate torch's optimizer at 0.99 and 1.01 times it."""
    derived = derived_threshold(rule)
    symbolic_ok = is_zero(derived - formula)
    claimed = float(formula.subs({eta_: hyper["lr"], beta_: hyper.get("momentum", 0.0)}))
    outcomes = {c: _iterate(optimizer_name, hyper, c * claimed, steps, seed=item) for c in (0.99, 1.01)}
    converged = not outcomes[0.99][1] and outcomes[0.99][0] <= -6
    diverged = outcomes[1.01][1]
    text = "; ".join(
        f"{c} x threshold: " + ("diverged" if d else f"log10 |x_N|/|x_0| = {g:.3g}") for c, (g, d) in outcomes.items()
    )
    return make_result(
        id=f"stability.{rule}_threshold",
        item=item,
        title=title,
        formula=sp.Eq(sp.Symbol(r"\lambda^*"), formula),
        method="Jacobian of torch's update -> charpoly det(zI - A) -> Jury conditions (affine in lambda) -> root",
        symbolic_ok=symbolic_ok,
        value=int(converged) + int(diverged),
        reference=2,
        tolerance=0,
        numeric=f"optim.make({optimizer_name!r}) on a 3-d quadratic, {steps} steps",
        source=SOURCE,
        note=f"derived threshold {derived}; claimed {claimed:.6g} at {hyper}: {text}.",
    )


def gd_threshold(formula: sp.Expr | None = None, lr: float = 0.1, steps: int = 1000) -> CheckResult:
    """Item 22: gradient descent is stable on a quadratic iff λ_max(H) < 2/η."""
    formula = checked_formula(formula, GD)
    return _threshold_check("gd", 22, "GD stability threshold 2/eta", formula, "sgd", {"lr": lr}, steps)


def heavy_ball_threshold(
    formula: sp.Expr | None = None, lr: float = 0.1, momentum: float = 0.9, steps: int = 1000
) -> CheckResult:
    """Item 23: heavy-ball momentum (torch SGD) is stable iff λ_max(H) < (2 + 2β)/η."""
    formula = checked_formula(formula, HEAVY_BALL)
    hyper = {"lr": lr, "momentum": momentum}
    title = "Heavy-ball stability threshold (2+2 beta)/eta"
    return _threshold_check("heavy_ball", 23, title, formula, "momentum", hyper, steps)


def nesterov_threshold(
    formula: sp.Expr | None = None, lr: float = 0.1, momentum: float = 0.9, steps: int = 1000
) -> CheckResult:
    """Item 24: Nesterov momentum (torch SGD) is stable iff λ_max(H) < (2 + 2β)/((1 + 2β)η)."""
    formula = checked_formula(formula, NESTEROV)
    hyper = {"lr": lr, "momentum": momentum}
    title = "Nesterov stability threshold (2+2 beta)/((1+2 beta) eta)"
    return _threshold_check("nesterov", 24, title, formula, "nesterov", hyper, steps)


def _pinned_adam(hyper: dict, factor: float, steps: int, seed: int, formula: sp.Expr) -> tuple[float, bool, float]:
    """Adam of torch with its second moment pinned (see the module docstring) on a quadratic with a_max = factor·claim.

    Returns:
        ``(log10 ‖x_end‖/‖x_0‖, diverged, max |v − v_pinned|)``.
    """
    generator = torch.Generator().manual_seed(seed)
    v = torch.exp(2.8 * torch.rand(3, dtype=torch.float64, generator=generator) - 1.4)  # in [1/4, 4]
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=generator))
    base = q @ torch.diag(torch.tensor([1.0, 0.6, 0.3], dtype=torch.float64)) @ q.T
    x = torch.nn.Parameter(torch.randn(3, dtype=torch.float64, generator=generator))
    x0 = x.detach().clone()
    optimizer = make("adam", [x], **hyper)
    beta1, beta2 = hyper["betas"]
    x.grad = torch.zeros(3, dtype=torch.float64)
    optimizer.step()  # creates the state, which is then overwritten
    state = optimizer.state[x]
    state["step"].fill_(1e6)
    state["exp_avg"].zero_()
    state["exp_avg_sq"].copy_(v)
    d = stability(optimizer).preconditioner[x].rsqrt()  # P = sqrt(v) + eps, read as the tracker reads it
    a_max = float(torch.linalg.eigvalsh(d[:, None] * base * d[None, :]).max())
    claim = float(formula.subs({eta_: hyper["lr"], beta1_: beta1, beta2_: beta2}))
    hessian = base * factor * claim / a_max
    with torch.no_grad():
        x.copy_(x0)
    drift = 0.0
    for _ in range(steps):
        g = hessian @ x.detach()
        x.grad = g
        state["exp_avg_sq"].copy_((v - (1 - beta2) * g * g) / beta2)
        optimizer.step()
        drift = max(drift, float((state["exp_avg_sq"] - v).abs().max() / v.max()))
        norm = float(x.detach().norm())
        if not math.isfinite(norm) or norm > DIVERGED * float(x0.norm()):
            return math.inf, True, drift
    return math.log10(norm / float(x0.norm())), False, drift


def adam_threshold(
    formula: sp.Expr | None = None, lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.999), steps: int = 1000
) -> CheckResult:
    """Item 25: Adam with a frozen P is stable iff λ_max(P⁻¹H) < (2 + 2β₁)/((1 − β₁)η) (38/η for β₁ = 0.9)."""
    formula = checked_formula(formula, ADAM, beta2_)  # the claim may use β₂: it is given one
    derived = derived_threshold("adam")
    symbolic_ok = is_zero(derived / p_ - formula)
    hyper = {"lr": lr, "betas": betas, "eps": 1e-8}
    outcomes = {c: _pinned_adam(hyper, c, steps, seed=25, formula=formula) for c in (0.99, 1.01)}
    converged = not outcomes[0.99][1] and outcomes[0.99][0] <= -6
    diverged = outcomes[1.01][1]
    drift = max(o[2] for o in outcomes.values())
    claimed = float(formula.subs({eta_: lr, beta1_: betas[0], beta2_: betas[1]}))
    text = "; ".join(
        f"{c} x threshold: " + ("diverged" if d else f"log10 |x_N|/|x_0| = {g:.3g}")
        for c, (g, d, _) in outcomes.items()
    )
    return make_result(
        id="stability.adam_threshold",
        item=25,
        title="Adam (frozen P) threshold (2+2 beta1)/((1-beta1) eta) on lambda_max(P^-1 H)",
        formula=sp.Eq(sp.Symbol(r"\lambda^*(P^{-1}H)"), formula),
        method="Jacobian of Adam's update (EMA momentum, step m/p) -> charpoly -> Jury conditions; lambda*/p",
        symbolic_ok=symbolic_ok,
        value=int(converged) + int(diverged),
        reference=2,
        tolerance=0,
        numeric=f"torch.optim.Adam (optim.make) with exp_avg_sq pinned, 3-d quadratic, {steps} steps",
        source=SOURCE,
        note=(
            f"derived lambda*/p = {sp.factor(derived / p_)}; claimed {claimed:.6g} at lr={lr}, betas={betas}: "
            f"{text}; largest relative drift of the pinned v {drift:.2g} (tolerance 1e-3, well inside the 1% margin)."
        ),
        numeric_extra_ok=drift <= 1e-3,
    )


def tracker_preconditioned_sharpness(exponent: sp.Rational | None = None, steps: int = 10) -> CheckResult:
    r"""Item 26: the tracker's preconditioned sharpness equals the dense :math:`\lambda_{\max}(P^{-1/2}HP^{-1/2})`.

    Symbolic: :math:`P^{e}HP^{e}` has the characteristic polynomial of :math:`P^{-1}H` (the matrix whose eigenvalues
    govern Adam's stability) for a general symmetric 2×2 :math:`H` and diagonal :math:`P`, which holds for
    :math:`e = -1/2`. Numeric: a tanh MLP (3-5-3, cross-entropy, 24 examples, float64) after ``steps`` Adam steps;
    the reference is the dense Hessian (``torch.func.hessian``) scaled by :math:`P^{e}` with :math:`P` computed here
    from Adam's state, :math:`(1-\beta_1^t)(\sqrt{v_t/(1-\beta_2^t)}+\epsilon)`, independently of
    ``optim.preconditioner``; the value is ``landscape.SharpnessDynamics``'s ``preconditioned_sharpness``.

    Args:
        exponent: :math:`e` (default −1/2).
        steps: Adam steps before the measurement.
    """
    exponent = sp.Rational(-1, 2) if exponent is None else sp.Rational(exponent)
    h11, h12, h22, p1, p2 = sp.symbols("h11 h12 h22 p1 p2", positive=True)
    h = sp.Matrix([[h11, h12], [h12, h22]])
    p_diag = sp.diag(p1, p2)
    scaled = sp.diag(p1**exponent, p2**exponent) * h * sp.diag(p1**exponent, p2**exponent)
    symbolic_ok = is_zero(scaled.charpoly(z_).as_expr() - (p_diag.inv() * h).charpoly(z_).as_expr())

    generator = torch.Generator().manual_seed(26)
    inputs = torch.randn(24, 3, dtype=torch.float64, generator=generator)
    targets = torch.randint(0, 3, (24,), generator=generator)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
    rows = SharpnessDynamics(F.cross_entropy, (inputs, targets), tol=1e-8).measure(model, optimizer)
    value = next(r["value"] for r in rows if r["quantity"] == "preconditioned_sharpness")

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        chunks = vector.split([s.numel() for s in shapes])
        parts = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(model, parts, (inputs,)), targets)

    dense = torch.func.hessian(loss)(flat)
    beta1, beta2 = optimizer.param_groups[0]["betas"]
    eps = optimizer.param_groups[0]["eps"]
    diagonal = []
    for p in model.parameters():
        state = optimizer.state[p]
        t = float(state["step"])
        diagonal.append(((1 - beta1**t) * ((state["exp_avg_sq"] / (1 - beta2**t)).sqrt() + eps)).reshape(-1))
    power = torch.cat(diagonal) ** float(exponent)
    reference = float(np.linalg.eigvalsh((power[:, None] * dense * power[None, :]).numpy()).max())
    return make_result(
        id="stability.tracker_preconditioned_sharpness",
        item=26,
        title="Tracker's preconditioned sharpness = dense lambda_max(P^-1/2 H P^-1/2)",
        formula=sp.Eq(sp.Symbol(r"\lambda_{\max}(P^{-1}H)"), sp.Symbol(r"\lambda_{\max}(P^{-1/2}HP^{-1/2})")),
        method=f"charpoly of P^({exponent}) H P^({exponent}) minus charpoly of P^-1 H simplifies to 0 (2x2)",
        symbolic_ok=symbolic_ok,
        value=value,
        reference=reference,
        tolerance=1e-8 * abs(reference),
        numeric="landscape.SharpnessDynamics (Lanczos on PreconditionedOperator) vs dense torch.func.hessian",
        source="Cohen et al. 2022, Sec. 2 (preconditioned sharpness)",
        note=f"tracker {value:.12g} vs dense {reference:.12g} after {steps} Adam steps (lr 0.05), tanh MLP 3-5-3.",
    )
