r"""Cosine annealing with warm restarts (Loshchilov & Hutter 2017, "SGDR", ICLR, Eq. (5)).

η_min, η_max are ``eta_min`` and the base learning rate; T_cur counts steps since the last restart, T_i is the
length of the current cycle:

.. math::

    \eta_t = \eta_{\min} + \tfrac12(\eta_{\max} - \eta_{\min})\Big(1 + \cos\Big(\frac{\pi T_{cur}}{T_i}\Big)\Big).

torch's ``CosineAnnealingLR`` applies it recursively,
η_{t+1} = η_min + (η_t − η_min)(1 + cos(π(t+1)/T))/(1 + cos(πt/T)); the closed form satisfies that recursion.
Check 21 (thesis Sec. 1.2.4).
"""

from __future__ import annotations

import sympy as sp
import torch

from theory._result import CheckResult, checked_formula, is_zero, make_result

__all__ = ["cosine_annealing"]

SOURCE = "Loshchilov & Hutter 2017 (SGDR), Eq. (5); Tübingen bachelor thesis, Sec. 1.2.4"
eta_min_, eta_max_, T_ = sp.symbols("eta_min eta_max T_i", positive=True)
t_ = sp.Symbol("T_cur", nonnegative=True)
COSINE = eta_min_ + (eta_max_ - eta_min_) * (1 + sp.cos(sp.pi * t_ / T_)) / 2


def cosine_annealing(
    formula: sp.Expr | None = None,
    lr: float = 0.1,
    eta_min: float = 1e-3,
    t0: int = 10,
    t_mult: int = 2,
    steps: int = 150,
) -> CheckResult:
    r"""Item 21: SGDR's cosine schedule equals torch's schedulers' values.

    Args:
        formula: Claimed η in ``eta_min``, ``eta_max``, ``T_cur``, ``T_i``.
        lr: η_max.
        eta_min: η_min.
        t0: Length of the first cycle (``T_0``).
        t_mult: Cycle growth factor (``T_mult``).
        steps: Scheduler steps compared.

    Returns:
        The check result; value = max |torch's lr − formula| over ``CosineAnnealingWarmRestarts`` and the
        first cycle of ``CosineAnnealingLR``, reference 0, tolerance 1e-12·η_max.
    """
    formula = checked_formula(formula, COSINE)
    ends = is_zero(formula.subs(t_, 0) - eta_max_) and is_zero(formula.subs(t_, T_) - eta_min_)
    derivative = sp.diff(formula, t_)
    flat_ends = is_zero(derivative.subs(t_, 0)) and is_zero(derivative.subs(t_, T_))
    k = sp.Symbol("k", nonnegative=True, integer=True)
    ratio = (1 + sp.cos(sp.pi * (k + 1) / T_)) / (1 + sp.cos(sp.pi * k / T_))
    recursion = formula.subs(t_, k + 1) - (eta_min_ + (formula.subs(t_, k) - eta_min_) * ratio)
    recursion_ok = is_zero(recursion)
    claimed = sp.lambdify((eta_min_, eta_max_, t_, T_), formula, "math")

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    restarts = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=t0, T_mult=t_mult, eta_min=eta_min)
    deviation, t_cur, t_i = 0.0, 0, t0
    for _ in range(steps):
        deviation = max(deviation, abs(opt.param_groups[0]["lr"] - claimed(eta_min, lr, t_cur, t_i)))
        opt.step()
        restarts.step()
        t_cur += 1
        if t_cur == t_i:
            t_cur, t_i = 0, t_i * t_mult
    opt = torch.optim.SGD([param], lr=lr)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t0, eta_min=eta_min)
    for t in range(t0 + 1):
        deviation = max(deviation, abs(opt.param_groups[0]["lr"] - claimed(eta_min, lr, t, t0)))
        opt.step()
        annealing.step()
    return make_result(
        id="schedules.cosine_annealing",
        item=21,
        title="Cosine annealing (SGDR) matches torch's schedulers",
        formula=sp.Eq(sp.Symbol(r"\eta_t"), formula),
        method="subs T_cur=0, T_i; diff at the ends; torch's recursion simplify to 0",
        symbolic_ok=ends and flat_ends and recursion_ok,
        value=deviation,
        reference=0.0,
        tolerance=1e-12 * lr,
        numeric="torch CosineAnnealingWarmRestarts + CosineAnnealingLR",
        source=SOURCE,
        note=(
            f"eta(0)=eta_max, eta(T_i)=eta_min: {ends}; zero slope at both ends: {flat_ends}; closed form solves "
            f"torch's recursion: {recursion_ok}. T_0={t0}, T_mult={t_mult}, {steps} steps + one CosineAnnealingLR "
            f"cycle: max |lr - formula| = {deviation:.2g}."
        ),
    )
