r"""XGrad's weight prediction against the unrolled optimizer (Guan et al. 2024).

Guan et al., "XGrad: Boosting Gradient-Based Optimizers With Weight Prediction", IEEE TPAMI 2024, Algorithm 1.

γ is ``lr``, s the prediction ``steps``, Δ_i the base optimizer's update direction at step i (weight decay
excluded, as in the authors' code). Unrolling θ_i = θ_{i−1} − γΔ_i gives θ_s = θ₀ − γΣ_{i=1}^s Δ_i; XGrad predicts

.. math::

    \hat\theta = \theta_0 - \gamma\, s\, \Delta_1,

which equals θ_s exactly when Δ_i does not change over the s steps: under a constant gradient this holds for SGD,
for momentum SGD and RMSprop at their fixed points (b = g/(1−μ), v = g²), and for Adam at every step (bias
correction makes m̂_t = g, v̂_t = g² exactly). AdamW adds the decay term −γλΣ_{i<s}θ_i. Check 14.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
import torch

from theory._result import CheckResult, checked_formula, generic_branch, is_zero, make_result

__all__ = ["weight_prediction"]

SOURCE = "Guan et al. 2024 (XGrad), Algorithm 1"
theta_, gamma_, s_, delta_ = sp.symbols("theta gamma s Delta", real=True)
PREDICTION = theta_ - gamma_ * s_ * delta_


def _unroll(theta0: sp.Expr, state: sp.Expr, update: Callable, steps: int) -> list[sp.Expr]:
    """Iterates θ_0..θ_steps of a scalar rule ``update(theta, state) -> (theta, state)``."""
    thetas = [theta0]
    for _ in range(steps):
        theta, state = update(thetas[-1], state)
        thetas.append(theta)
    return thetas


def _symbolic(formula: sp.Expr, max_steps: int) -> dict[str, bool]:
    """Prediction vs the symbolically unrolled optimizers for s = 1..max_steps (constant gradient g > 0)."""
    g, mu, alpha, lam, eps = sp.symbols("g mu alpha lambda epsilon", positive=True)
    t, i = sp.symbols("t i", positive=True, integer=True)
    beta1, beta2 = sp.symbols("beta_1 beta_2", positive=True)
    theta0 = sp.Symbol("theta_0", real=True)
    out = {}

    def predicted(delta: sp.Expr, s: int) -> sp.Expr:
        return formula.subs({theta_: theta0, delta_: delta, s_: s})

    # SGD with momentum (torch, dampening 0): b <- mu b + g, theta <- theta - gamma b; Delta = stored b
    b = sp.Symbol("b")
    (b_star,) = sp.solve(sp.Eq(b, mu * b + g), b)

    def sgdm(theta: sp.Expr, buf: sp.Expr) -> tuple:
        buf = mu * buf + g
        return theta - gamma_ * buf, buf

    out["SGD momentum at b*=g/(1-mu)"] = all(
        is_zero(_unroll(theta0, b_star, sgdm, s)[-1] - predicted(b_star, s)) for s in range(1, max_steps + 1)
    )
    # RMSprop: v <- alpha v + (1 - alpha) g^2, theta <- theta - gamma g/(sqrt v + eps); Delta = g/(sqrt v + eps)
    v = sp.Symbol("v", positive=True)
    (v_star,) = sp.solve(sp.Eq(v, alpha * v + (1 - alpha) * g**2), v)

    def rmsprop(theta: sp.Expr, sq: sp.Expr) -> tuple:
        sq = alpha * sq + (1 - alpha) * g**2
        return theta - gamma_ * g / (sp.sqrt(sq) + eps), sq

    delta_rms = g / (sp.sqrt(v_star) + eps)
    out["RMSprop at v*=g^2"] = all(
        is_zero(_unroll(theta0, v_star, rmsprop, s)[-1] - predicted(delta_rms, s)) for s in range(1, max_steps + 1)
    )
    # Adam from zero state under constant g: m_t = g(1 - beta1^t), v_t = g^2(1 - beta2^t), so Delta_t = g/(g + eps)
    m_t = generic_branch(sp.summation((1 - beta1) * beta1 ** (t - i) * g, (i, 1, t)))
    v_t = generic_branch(sp.summation((1 - beta2) * beta2 ** (t - i) * g**2, (i, 1, t)))
    delta_adam = (m_t / (1 - beta1**t)) / (sp.sqrt(sp.factor(v_t / (1 - beta2**t))) + eps)
    adam_constant = is_zero(delta_adam - g / (g + eps))
    out["Adam (any t, zero init)"] = adam_constant and all(
        is_zero((theta0 - gamma_ * s * g / (g + eps)) - predicted(g / (g + eps), s)) for s in range(1, max_steps + 1)
    )

    # AdamW: theta <- theta(1 - gamma lambda) - gamma Delta: the gap is the decay term -gamma lambda sum theta_i
    def adamw(theta: sp.Expr, state: None) -> tuple:
        return theta * (1 - gamma_ * lam) - gamma_ * g / (g + eps), state

    adamw_ok = True
    for s in range(1, max_steps + 1):
        thetas = _unroll(theta0, None, adamw, s)
        gap = thetas[-1] - predicted(g / (g + eps), s)
        adamw_ok &= is_zero(gap + gamma_ * lam * sum(thetas[:-1]))
    out["AdamW gap = -gamma lambda sum theta_i"] = adamw_ok
    return out


def _own_delta(opt: torch.optim.Optimizer, p: torch.Tensor, last_grad: torch.Tensor) -> torch.Tensor:
    """Δ from the base optimizer's state, written out here independently of ``optim``'s code."""
    group, state = opt.param_groups[0], opt.state[p]
    if isinstance(opt, torch.optim.SGD):
        return state["momentum_buffer"].clone()
    if isinstance(opt, torch.optim.RMSprop):
        return last_grad / (state["square_avg"].sqrt() + group["eps"])
    beta1, beta2 = group["betas"]
    t = float(state["step"])
    return (state["exp_avg"] / (1 - beta1**t)) / ((state["exp_avg_sq"] / (1 - beta2**t)).sqrt() + group["eps"])


def _numeric(formula: sp.Expr, lr: float, s: int, warmup: int) -> tuple[float, float, float, list[str], str]:
    """Unroll torch optimizers under a constant gradient and compare θ_s with the prediction."""
    torch.manual_seed(0)
    grad = torch.rand(6, dtype=torch.float64) + 0.5
    theta0 = torch.randn(6, dtype=torch.float64)
    predict = sp.lambdify((theta_, gamma_, s_, delta_), formula, "math")
    cases = {
        "SGD momentum": (lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9), {"momentum_buffer": grad / (1 - 0.9)}),
        "RMSprop": (lambda p: torch.optim.RMSprop(p, lr=lr, alpha=0.99), {"square_avg": grad**2}),
        "Adam": (lambda p: torch.optim.Adam(p, lr=lr), None),
        "AdamW": (lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.1), None),
    }
    exact_dev, adamw_dev, impl_dev, notes, bound_ok = 0.0, 0.0, 0.0, [], False
    try:
        from optim import XGrad
    except ImportError:
        XGrad = None
    for name, (make, fixed_state) in cases.items():
        param = torch.nn.Parameter(theta0.clone())
        opt = make([param])
        # stepping through XGrad (no closure: base step only) lets it keep the last gradient RMSprop's Δ needs
        stepper = opt if XGrad is None else XGrad(opt, steps=s)
        for _ in range(warmup):
            param.grad = grad.clone()
            stepper.step()
        if fixed_state is not None:
            for key, value in fixed_state.items():
                opt.state[param][key].copy_(value)
        start = param.detach().clone()
        delta = _own_delta(opt, param, grad)
        predicted = torch.tensor(
            [predict(a, lr, s, d) for a, d in zip(start.tolist(), delta.tolist(), strict=True)], dtype=torch.float64
        )
        if XGrad is not None:
            with stepper.predicted():
                impl_dev = max(impl_dev, float((param.detach() - predicted).abs().max()))
        iterates = []
        for _ in range(s):
            iterates.append(param.detach().clone())
            param.grad = grad.clone()
            opt.step()
        gap = param.detach() - predicted
        if name == "AdamW":
            decay = -lr * 0.1 * torch.stack(iterates).sum(0)
            adamw_dev = float((gap - decay).abs().max())
            bound_ok = float(gap.abs().max()) <= lr * 0.1 * s * float(torch.stack(iterates).abs().max())
            bound = lr * 0.1 * s * float(torch.stack(iterates).abs().max())
            notes.append(f"AdamW gap {float(gap.abs().max()):.3g} <= gamma*lambda*s*max|theta| = {bound:.3g}")
        else:
            exact_dev = max(exact_dev, float(gap.abs().max()))
    notes += _approximate_cases(lr, s, grad, theta0)
    implementation = "torch SGD/RMSprop/Adam/AdamW unrolled" + (" + optim.XGrad.predicted()" if XGrad else "")
    return exact_dev, (adamw_dev if bound_ok else float("inf")), impl_dev, notes, implementation


def _approximate_cases(lr: float, s: int, grad: torch.Tensor, theta0: torch.Tensor) -> list[str]:
    """Relative prediction error of XGrad for AdaBelief and AdaM3, whose Δ drifts under a constant gradient."""
    try:
        from optim import AdaBelief, AdaM3, XGrad
    except ImportError:
        return ["AdaBelief/AdaM3 not available in optim"]
    notes = []
    for cls in (AdaBelief, AdaM3):
        param = torch.nn.Parameter(theta0.clone())
        opt = cls([param], lr=lr)
        for _ in range(3):
            param.grad = grad.clone()
            opt.step()
        start = param.detach().clone()
        with XGrad(opt, steps=s).predicted():
            predicted = param.detach().clone()
        for _ in range(s):
            param.grad = grad.clone()
            opt.step()
        error = float((param.detach() - predicted).norm() / (param.detach() - start).norm())
        notes.append(f"{cls.__name__} prediction relative error {error:.2g} (approximate)")
    return notes


def weight_prediction(formula: sp.Expr | None = None, lr: float = 0.01, s: int = 3, warmup: int = 5) -> CheckResult:
    r"""Item 14: θ̂ = θ − γsΔ equals the unrolled θ_s when Δ is constant; AdamW differs by −γλΣθ_i.

    Args:
        formula: Claimed prediction in ``theta``, ``gamma``, ``s``, ``Delta`` (default θ − γsΔ).
        lr: γ of the numeric half.
        s: Prediction steps of the numeric half (the symbolic half uses s = 1..4).
        warmup: Steps taken under the constant gradient before predicting.

    Returns:
        The check result; value = max |θ_s − θ̂| over SGD-momentum, RMSprop (at their fixed points) and Adam
        (float64). ``optim.XGrad``'s predicted weights must equal θ̂ computed from the base state here, and the
        AdamW gap must equal its decay term.
    """
    formula = checked_formula(formula, PREDICTION)
    symbolic = _symbolic(formula, 4)
    exact_dev, adamw_dev, impl_dev, notes, implementation = _numeric(formula, lr, s, warmup)
    return make_result(
        id="xgrad.weight_prediction",
        item=14,
        title="XGrad prediction equals the unrolled optimizer for a constant update",
        formula=sp.Eq(sp.Symbol(r"\hat\theta"), formula),
        method="solve fixed points; unroll s=1..4 steps symbolically, simplify to 0; summation (Adam moments)",
        symbolic_ok=all(symbolic.values()),
        value=exact_dev,
        reference=0.0,
        tolerance=1e-13,
        numeric=implementation,
        source=SOURCE,
        note=(
            f"symbolic: {symbolic}. Numeric s={s}: exact cases max |theta_s - prediction| = {exact_dev:.2g}; "
            f"AdamW gap - decay term = {adamw_dev:.2g}; XGrad.predicted() vs prediction {impl_dev:.2g} "
            f"(tolerance 1e-13). " + "; ".join(notes) + "."
        ),
        numeric_extra_ok=adamw_dev <= 1e-13 and impl_dev <= 1e-13,
    )
