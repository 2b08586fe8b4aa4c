r"""Adam's bias correction and step bound, and heavy-ball momentum (Kingma & Ba 2015, "Adam", ICLR).

γ, β₁, β₂, ε are ``lr``, ``betas``, ``eps``; m_t, v_t the first and second moment EMAs, m̂_t, v̂_t their
bias-corrected versions:

.. math::

    m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\quad
    \Delta_t = -\gamma \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}.

Items 6-8 of docs/sources.md.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
import torch

from theory._result import CheckResult, checked_formula, generic_branch, is_zero, make_result, mean_and_se

__all__ = ["bias_correction", "momentum_terminal_velocity", "sparse_step_bound"]

SOURCE = "Kingma & Ba 2015 (Adam)"
t_, i_, k_ = sp.symbols("t i k", positive=True, integer=True)
beta1_, beta2_, mu_, gamma_, g_ = sp.symbols("beta_1 beta_2 mu gamma g", positive=True)
s_, u_ = sp.symbols("s u", positive=True)

BIAS = 1 - beta2_**t_
RATIO = (1 - beta1_) / sp.sqrt(1 - beta2_) * sp.sqrt(1 - beta2_**t_) / (1 - beta1_**t_)
TERMINAL = gamma_ * g_ / (1 - mu_)


def bias_correction(
    formula: sp.Expr | None = None,
    beta2: float = 0.9,
    ts: tuple[int, ...] = (3, 1, 10, 30),
    mean: float = 0.5,
    std: float = 1.0,
    samples: int = 200_000,
    seed: int = 3,
    k: float = 4.0,
) -> CheckResult:
    r"""Item 6: (1−β₂)Σ_{i=1}^t β₂^{t−i} = 1 − β₂ᵗ, hence E[v_t] = E[g²](1 − β₂ᵗ) for stationary g.

    Args:
        formula: Claimed value of the weight sum, in ``t``, ``beta_2`` (default 1 − β₂ᵗ).
        beta2: β₂ of the numeric half.
        ts: Steps compared; the first is the headline number.
        mean: Mean of the stationary Gaussian gradient.
        std: Its standard deviation.
        samples: Monte Carlo trajectories.
        seed: Seed.
        k: Accepted number of standard errors.

    Returns:
        The check result; value = MC mean of v_t at ``ts[0]``, reference = E[g²]·formula. torch Adam's
        ``exp_avg_sq`` under a constant gradient 1 must equal the formula to 1e-14 as well.
    """
    formula = checked_formula(formula, BIAS)
    total = sp.summation((1 - beta2_) * beta2_ ** (t_ - i_), (i_, 1, t_))
    symbolic_ok = is_zero(total - formula)
    claimed = sp.lambdify((t_, beta2_), formula, "math")
    second = mean**2 + std**2
    rng = np.random.default_rng(seed)
    v = np.zeros(samples)
    mc = {}
    for t in range(1, max(ts) + 1):
        g = mean + std * rng.standard_normal(samples)
        v = beta2 * v + (1 - beta2) * g * g
        if t in ts:
            mc[t] = mean_and_se(v)
    mc_ok = all(abs(m - second * claimed(t, beta2)) <= k * se for t, (m, se) in mc.items())

    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.Adam([param], betas=(0.9, beta2))
    torch_dev = 0.0
    for t in range(1, max(ts) + 1):
        param.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        torch_dev = max(torch_dev, abs(float(opt.state[param]["exp_avg_sq"]) - claimed(t, beta2)))
    t0 = ts[0]
    m0, se0 = mc[t0]
    mc_text = "; ".join(
        f"t={t}: {m:.5g} vs {second * claimed(t, beta2):.5g} (SE {se:.2g})" for t, (m, se) in mc.items()
    )
    return make_result(
        id="adam.bias_correction",
        item=6,
        title="EMA weights sum to 1 - beta2^t (bias correction)",
        formula=sp.Eq(sp.Sum((1 - beta2_) * beta2_ ** (t_ - i_), (i_, 1, t_)), formula),
        method="summation (geometric series) + simplify to 0",
        symbolic_ok=symbolic_ok,
        value=m0,
        reference=second * claimed(t0, beta2),
        tolerance=k * se0,
        numeric=f"simulation (n={samples}) + torch.optim.Adam exp_avg_sq",
        source=f"{SOURCE}, Sec. 3, Eq. (1)-(4)",
        note=(
            f"E[v_t] with g ~ N({mean}, {std}^2), beta2={beta2} (within {k} SE): {mc_text}. torch Adam "
            f"exp_avg_sq under g = 1: max |v_t - formula| = {torch_dev:.2g} (tolerance 1e-14)."
        ),
        numeric_extra_ok=mc_ok and torch_dev <= 1e-14,
    )


def sparse_step_bound(
    formula: sp.Expr | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    ts: tuple[int, ...] = (1, 2, 3, 5, 10, 30, 100, 300, 1000),
) -> CheckResult:
    r"""Item 7: Adam's step under a single gradient spike, and the bound γ(1−β₁)/√(1−β₂).

    If the gradient is zero at steps 1..t−1 and g ≠ 0 at step t (the "most severe case of sparsity" of Kingma &
    Ba, Sec. 2.1), then m_t = (1−β₁)g and v_t = (1−β₂)g², so

    .. math::

        \Big|\frac{\hat m_t}{\sqrt{\hat v_t}}\Big| = \frac{1-\beta_1}{\sqrt{1-\beta_2}}
        \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t} \xrightarrow{t\to\infty} \frac{1-\beta_1}{\sqrt{1-\beta_2}},

    equal to 1 at t = 1, first decreasing, then increasing (non-monotone).

    Args:
        formula: Claimed |m̂_t/√v̂_t| in ``t``, ``beta_1``, ``beta_2``.
        betas: (β₁, β₂) of the numeric half.
        ts: Steps at which the spike is placed.

    Returns:
        The check result; value = max |torch Adam's |Δ_t|/γ − formula| over ``ts``.
    """
    formula = checked_formula(formula, RATIO)
    spike = sp.KroneckerDelta(i_, t_)  # g_i = g at i = t, 0 before; g_i^2 = g^2 at i = t
    m = sp.summation((1 - beta1_) * beta1_ ** (t_ - i_) * spike * g_, (i_, 1, t_))
    v = sp.summation((1 - beta2_) * beta2_ ** (t_ - i_) * spike * g_**2, (i_, 1, t_))
    ratio = (m / (1 - beta1_**t_)) / sp.sqrt(v / (1 - beta2_**t_))
    # both sides are positive for 0 < beta < 1, so compare squares (sympy cannot see 1 - beta_2 > 0 under sqrt)
    sample = {t_: 7, beta1_: sp.Rational(9, 10), beta2_: sp.Rational(999, 1000)}
    derived = is_zero(ratio**2 - formula**2) and bool(formula.subs(sample) > 0)
    bound = (1 - beta1_) / sp.sqrt(1 - beta2_)
    rates = {beta1_: sp.exp(-s_), beta2_: sp.exp(-u_)}
    limit_ok = is_zero(sp.limit(formula.subs(rates), t_, sp.oo) - bound.subs(rates))
    first_ok = is_zero(formula.subs(t_, 1) - 1)

    b1, b2 = betas
    claimed = sp.lambdify((t_, beta1_, beta2_), formula, "math")
    lr = 0.5
    deviations = []
    for t in ts:
        param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        opt = torch.optim.Adam([param], lr=lr, betas=betas, eps=1e-300)
        for step in range(1, t + 1):
            param.grad = torch.full((1,), 3.0 if step == t else 0.0, dtype=torch.float64)
            opt.step()
        deviations.append(abs(abs(float(param.detach())) / lr - claimed(t, b1, b2)))
    curve = np.array([claimed(t, b1, b2) for t in range(1, 100_001)])
    bound_value = (1 - b1) / math.sqrt(1 - b2)
    below = bool(np.all(curve <= bound_value * (1 + 1e-12)))
    t_min = int(np.argmin(curve)) + 1
    non_monotone = curve[0] > curve[t_min - 1] < curve[-1]
    return make_result(
        id="adam.sparse_step_bound",
        item=7,
        title="Adam step under a single gradient spike and its bound",
        formula=sp.Eq(sp.Abs(sp.Symbol(r"\hat m_t") / sp.sqrt(sp.Symbol(r"\hat v_t"))), formula),
        method="summation with KroneckerDelta, squares simplify to 0; limit t->oo (beta1=e^-s, beta2=e^-u); subs t=1",
        symbolic_ok=derived and limit_ok and first_ok,
        value=max(deviations),
        reference=0.0,
        tolerance=1e-12,
        numeric="torch.optim.Adam step",
        source=f"{SOURCE}, Sec. 2.1",
        note=(
            f"derived = claim: {derived}; limit = (1-b1)/sqrt(1-b2): {limit_ok}; value 1 at t=1: {first_ok}. "
            f"betas={betas}: ratio(1)={curve[0]:.4g}, minimum {curve[t_min - 1]:.4g} at t={t_min}, "
            f"ratio(1e5)={curve[-1]:.4g} (non-monotone: {non_monotone}); <= bound {bound_value:.4g} for "
            f"t <= 1e5: {below}. The item states 'nonzero gradient at step 1'; the formula holds for the spike at "
            "the current step t with zeros before (Kingma & Ba's case), which is what is checked."
        ),
        numeric_extra_ok=below and bool(non_monotone),
    )


def momentum_terminal_velocity(
    formula: sp.Expr | None = None, mu: float = 0.9, lr: float = 0.1, steps: int = 400
) -> CheckResult:
    r"""Item 8: under a constant gradient the heavy-ball step γ‖b_t‖ tends to γ‖g‖/(1−μ).

    torch SGD: b_1 = g, b_t = μb_{t−1} + g, θ ← θ − γb_t, so γb_t = γg Σ_{k=0}^{t−1} μ^k = γg(1−μ^t)/(1−μ).

    Args:
        formula: Claimed terminal step length in ``gamma``, ``g`` (=‖g‖), ``mu``.
        mu: Momentum μ of the numeric half.
        lr: Learning rate γ.
        steps: Steps run; the tolerance is the geometric tail γ‖g‖μ^steps/(1−μ) plus 1e-12.

    Returns:
        The check result; value = torch SGD's step length at ``steps``, reference = the formula.
    """
    formula = checked_formula(formula, TERMINAL)
    partial = gamma_ * g_ * generic_branch(sp.summation(mu_**k_, (k_, 0, t_ - 1)))
    limit = sp.limit(partial.subs(mu_, sp.exp(-s_)), t_, sp.oo)
    symbolic_ok = is_zero(limit - formula.subs(mu_, sp.exp(-s_)))
    partial_np = sp.lambdify((t_, gamma_, g_, mu_), partial, "math")

    torch.manual_seed(0)
    grad = torch.randn(5, dtype=torch.float64)
    norm = float(grad.norm())
    param = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=lr, momentum=mu)
    partial_dev, step = 0.0, 0.0
    for t in range(1, steps + 1):
        before = param.detach().clone()
        param.grad = grad.clone()
        opt.step()
        step = float((param.detach() - before).norm())
        partial_dev = max(partial_dev, abs(step - partial_np(t, lr, norm, mu)))
    claimed = float(formula.subs({gamma_: lr, g_: norm, mu_: mu}))
    tail = lr * norm * mu**steps / (1 - mu)
    return make_result(
        id="adam.momentum_terminal_velocity",
        item=8,
        title="Heavy-ball terminal step gamma*|g|/(1-mu)",
        formula=sp.Eq(sp.Symbol(r"\lim_t \gamma\|b_t\|"), formula),
        method="summation (geometric series) + limit t->oo (mu=e^-s) + simplify to 0",
        symbolic_ok=symbolic_ok,
        value=step,
        reference=claimed,
        tolerance=tail + 1e-12,
        numeric="torch.optim.SGD(momentum) step",
        source="Polyak 1964; Kingma & Ba 2015 baseline (SGD with momentum)",
        note=(
            f"step after {steps} steps {step:.12g} vs limit {claimed:.12g}; the remaining geometric tail is "
            f"{tail:.2g}. Every step equals the partial sum gamma|g|(1-mu^t)/(1-mu): max deviation "
            f"{partial_dev:.2g} (tolerance 1e-12)."
        ),
        numeric_extra_ok=partial_dev <= 1e-12,
    )
