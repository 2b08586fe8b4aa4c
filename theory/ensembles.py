r"""Error of an ensemble mean with correlated members (Tübingen bachelor thesis, Sec. 1.2.3).

k members with errors e_1..e_k of variance v and pairwise covariance c (zero mean):

.. math::

    E\Big[\Big(\frac{1}{k}\sum_{i=1}^k e_i\Big)^2\Big] = \frac{1}{k^2}\sum_{i,j} \mathrm{Cov}(e_i, e_j)
    = \frac{v}{k} + \frac{k-1}{k}\,c,

so uncorrelated members (c = 0) divide the error by k and identical ones (c = v) give no gain. Check 20.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from theory._result import CheckResult, checked_formula, is_zero, make_result, mean_and_se

__all__ = ["ensemble_error"]

SOURCE = "Tübingen bachelor thesis, Sec. 1.2.3 (Goodfellow et al. 2016, Sec. 7.11)"
v_, c_ = sp.symbols("v c", nonnegative=True)
k_ = sp.Symbol("k", positive=True, integer=True)
ENSEMBLE_ERROR = v_ / k_ + (k_ - 1) * c_ / k_


def ensemble_error(
    formula: sp.Expr | None = None,
    k: int = 5,
    variance: float = 1.0,
    covariances: tuple[float, ...] = (0.3, 0.0, 1.0),
    samples: int = 200_000,
    seed: int = 5,
    tolerance_se: float = 4.0,
) -> CheckResult:
    r"""Item 20: E[(mean error)²] = v/k + (k−1)c/k; c = v gives no gain.

    Args:
        formula: Claimed mean squared error of the ensemble in ``v``, ``c``, ``k``.
        k: Members of the numeric half.
        variance: v.
        covariances: Values of c simulated (0 ≤ c ≤ v); the first is the headline number.
        samples: Monte Carlo draws of the k errors (equicorrelated Gaussians e_i = √c z₀ + √(v−c) z_i).
        seed: Seed.
        tolerance_se: Accepted number of standard errors.

    Returns:
        The check result; value = MC mean of (mean error)² at ``covariances[0]``, reference = formula.
    """
    formula = checked_formula(formula, ENSEMBLE_ERROR)
    i, j = sp.symbols("i j", positive=True, integer=True)
    covariance = c_ + (v_ - c_) * sp.KroneckerDelta(i, j)
    inner = sp.summation(covariance, (j, 1, k_))
    if isinstance(inner, sp.Piecewise):  # sympy splits on i <= k, which holds inside the outer sum
        inner = next(e for e, cond in inner.args if cond == (i <= k_))
    derived = sp.summation(inner, (i, 1, k_)) / k_**2
    derived_ok = is_zero(derived - formula)
    no_gain = is_zero(formula.subs(c_, v_) - v_)
    independent = is_zero(formula.subs(c_, 0) - v_ / k_)

    rng = np.random.default_rng(seed)
    rows = []
    for c in covariances:
        shared = rng.standard_normal((samples, 1))
        own = rng.standard_normal((samples, k))
        errors = np.sqrt(c) * shared + np.sqrt(variance - c) * own
        mc, se = mean_and_se(errors.mean(axis=1) ** 2)
        rows.append((c, mc, se, float(formula.subs({v_: variance, c_: c, k_: k}))))
    extra = all(abs(mc - ref) <= tolerance_se * se for _, mc, se, ref in rows[1:])
    c0, mc0, se0, ref0 = rows[0]
    text = "; ".join(f"c={c}: {mc:.5g} vs {ref:.5g} (SE {se:.2g})" for c, mc, se, ref in rows)
    return make_result(
        id="ensembles.ensemble_error",
        item=20,
        title="Ensemble mean error v/k + (k-1)c/k",
        formula=sp.Eq(sp.Symbol(r"E[\bar e^2]"), formula),
        method="double summation of the covariance (KroneckerDelta) + simplify to 0; subs c=v, c=0",
        symbolic_ok=derived_ok and no_gain and independent,
        value=mc0,
        reference=ref0,
        tolerance=tolerance_se * se0,
        numeric=f"simulation (equicorrelated Gaussians, n={samples})",
        source=SOURCE,
        note=(
            f"derived: {derived_ok}; c=v gives v (no gain): {no_gain}; c=0 gives v/k: {independent}. k={k}, "
            f"v={variance}, within {tolerance_se} SE: {text}."
        ),
        numeric_extra_ok=extra,
    )
