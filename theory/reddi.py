r"""Reddi's online counterexample and Expectigrad.

Reddi et al. 2018, "On the Convergence of Adam and Beyond", ICLR, Sec. 3; Daley & Amato 2020, "Expectigrad: Fast
Stochastic Optimization with Robust Convergence Properties".

On x ∈ [−1, 1] the losses are f_t(x) = Cx if t mod 3 = 1 else −x (C > 2), so the optimum is x = −1. Adam with
β₁ = 0, β₂ = 1/(1 + C²) drifts to +1; AMSGrad, SGD, Adagrad and Expectigrad approach −1. Expectigrad (γ is ``lr``,
β ``beta``): s ← s + g², n ← n + 1, u = g/(√(s/n) + ε); in steady state s/n → (C² + 2)/3, so with β = 0 the
displacement per period is

.. math::

    \Delta x = -\gamma\,\frac{C - 2}{\sqrt{(C^2 + 2)/3}} < 0 \quad (C > 2).

Check 13.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import sympy as sp
import torch

from theory._result import CheckResult, checked_formula, is_zero, make_result

__all__ = ["reddi_counterexample"]

SOURCE = "Reddi et al. 2018, Sec. 3; Daley & Amato 2020 (Expectigrad)"
C_, gamma_ = sp.symbols("C gamma", positive=True)
k_ = sp.Symbol("k", positive=True, integer=True)
DISPLACEMENT = -gamma_ * (C_ - 2) / sp.sqrt((C_**2 + 2) / 3)


class _ReferenceExpectigrad(torch.optim.Optimizer):
    """Expectigrad as its authors state it (dense counter), used while ``optim.Expectigrad`` does not exist."""

    def __init__(self, params: list[torch.Tensor], lr: float, beta: float, eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "beta": beta, "eps": eps})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """One Expectigrad step on every parameter (no closure)."""
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(t=0, s=torch.zeros_like(p), n=torch.zeros_like(p), m=torch.zeros_like(p))
                state["t"] += 1
                state["s"].add_(p.grad**2)
                state["n"].add_((p.grad != 0).to(p.dtype))
                mean = torch.where(state["n"] > 0, state["s"] / state["n"].clamp(min=1), 0)
                u = p.grad / (mean.sqrt() + group["eps"])
                if group["beta"] > 0:
                    state["m"].mul_(group["beta"]).add_(u, alpha=1 - group["beta"])
                    p.sub_(group["lr"] / (1 - group["beta"] ** state["t"]) * state["m"])
                else:
                    p.sub_(group["lr"] * u)


def _expectigrad() -> tuple[Callable[..., torch.optim.Optimizer], str]:
    try:
        from optim import Expectigrad
    except ImportError:
        return _ReferenceExpectigrad, "reference Expectigrad loop"
    return Expectigrad, "optim.Expectigrad"


def _run(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer], c: float, steps: int, clip: bool) -> list:
    """Run an optimizer on the online problem; x after every step (projected onto [−1, 1] when ``clip``)."""
    x = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = make([x])
    trace = []
    for t in range(1, steps + 1):
        x.grad = torch.tensor([c if t % 3 == 1 else -1.0], dtype=torch.float64)
        opt.step()
        if clip:
            with torch.no_grad():
                x.clamp_(-1.0, 1.0)
        trace.append(float(x.detach()))
    return trace


def reddi_counterexample(
    formula: sp.Expr | None = None, c: float = 3.0, lr: float = 0.01, periods: int = 1000
) -> CheckResult:
    r"""Item 13: Adam fails on Reddi's problem; AMSGrad, SGD, Adagrad and Expectigrad do not.

    Args:
        formula: Claimed steady-state displacement of Expectigrad (β = 0) per period, in ``C``, ``gamma``.
        c: The constant C (> 2).
        lr: γ of Adam, AMSGrad, SGD and Expectigrad; Adagrad uses 10γ (its own 1/√t decay is slower).
        periods: Periods of three steps run.

    Returns:
        The check result; value = Expectigrad's (β = 0, unprojected) displacement over the last period,
        reference = formula; the tolerance is the exact bound on the finite-``periods`` deviation of √(s/n) from
        its limit. The endpoints (Adam at +1, the others at −1, within 3γC) are folded in.

    Raises:
        ValueError: If C ≤ 2.
    """
    if not c > 2:
        raise ValueError(f"Invalid C (must exceed 2): {c}")
    formula = checked_formula(formula, DISPLACEMENT)
    s_full = k_ * (C_**2 + 2)  # sum of g^2 after k full periods
    means = [(s_full + C_**2) / (3 * k_ + 1), (s_full + C_**2 + 1) / (3 * k_ + 2), (s_full + C_**2 + 2) / (3 * k_ + 3)]
    limits = [sp.limit(m, k_, sp.oo) for m in means]
    grads = [C_, -1, -1]
    derived = -gamma_ * sum(g / sp.sqrt(a) for g, a in zip(grads, limits, strict=True))
    derived_ok = is_zero(derived - formula)
    negative = sp.solve_univariate_inequality(formula < 0, C_, relational=False, domain=sp.Interval.open(2, sp.oo))
    negative_ok = negative == sp.Interval.open(2, sp.oo)

    expectigrad, name = _expectigrad()
    trace = _run(lambda p: expectigrad(p, lr=lr, beta=0.0, eps=1e-300), c, 3 * periods, clip=False)
    measured = trace[-1] - trace[-4]
    k = periods - 1
    finite = [float(m.subs({C_: c, k_: k})) for m in means]
    limit = (c * c + 2) / 3
    bound = lr * (c + 2) * max(abs(1 / math.sqrt(a) - 1 / math.sqrt(limit)) for a in finite)

    steps = 3 * periods
    beta2 = 1 / (1 + c * c)
    finals = {
        "Adam": _run(lambda p: torch.optim.Adam(p, lr=lr, betas=(0.0, beta2)), c, steps, True)[-1],
        "AMSGrad": _run(lambda p: torch.optim.Adam(p, lr=lr, betas=(0.0, beta2), amsgrad=True), c, steps, True)[-1],
        "SGD": _run(lambda p: torch.optim.SGD(p, lr=lr), c, steps, True)[-1],
        "Adagrad": _run(lambda p: torch.optim.Adagrad(p, lr=10 * lr), c, steps, True)[-1],
        "Expectigrad": _run(lambda p: expectigrad(p, lr=lr, beta=0.9), c, steps, True)[-1],
    }
    targets = {name_: (1.0 if name_ == "Adam" else -1.0) for name_ in finals}
    endpoint_tol = 3 * lr * c
    endpoints_ok = all(abs(finals[n] - targets[n]) <= endpoint_tol for n in finals)
    return make_result(
        id="reddi.counterexample",
        item=13,
        title="Reddi's problem: Adam drifts to +1, AMSGrad/SGD/Adagrad/Expectigrad to -1",
        formula=sp.Eq(sp.Symbol(r"\Delta x_{period}"), formula),
        method="limit k->oo of s/n, sum per period, simplify to 0; solve_univariate_inequality on C > 2",
        symbolic_ok=derived_ok and negative_ok,
        value=measured,
        reference=float(formula.subs({C_: c, gamma_: lr})),
        tolerance=bound,
        numeric=f"torch Adam/AMSGrad/SGD/Adagrad + {name}",
        source=f"{SOURCE}",
        note=(
            f"derived displacement = claim: {derived_ok}; negative for C in {negative}. C={c}, gamma={lr}, "
            f"{periods} periods, x0=0, projected: final x "
            + ", ".join(f"{n} {v:+.4f}" for n, v in finals.items())
            + f" (targets Adam +1, others -1, within 3*gamma*C = {endpoint_tol:.2g}; Adagrad lr={10 * lr})."
        ),
        numeric_extra_ok=endpoints_ok,
    )
