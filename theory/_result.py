"""The result row every check returns, and small helpers shared by the checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

__all__ = ["CheckResult", "generic_branch", "is_zero", "make_result", "mean_and_se", "variance_and_se"]


@dataclass(frozen=True)
class CheckResult:
    """One verified derivation: a symbolic half (sympy) and a numeric half (implementation or simulation).

    The check passes when sympy established the formula (``symbolic_ok``) and the numeric value lies within
    ``tolerance`` of ``reference`` (``numeric_ok``).

    Attributes:
        id: Stable identifier, ``"<module>.<name>"``.
        item: Number of the item in docs/sources.md (1-26).
        title: One-line description.
        formula: The claimed formula as a sympy expression (or equation).
        latex: ``sympy.latex(formula)``.
        method: How sympy established the claim (solve, simplify to 0, integrate, limit, series, ...).
        symbolic_ok: Whether the symbolic derivation confirmed the claimed formula.
        value: The numeric quantity measured.
        reference: What the formula predicts for it.
        tolerance: Largest accepted ``|value - reference|``; for Monte Carlo a stated number of standard errors.
        numeric_ok: Whether ``|value - reference| <= tolerance`` (and both are finite).
        passed: ``symbolic_ok and numeric_ok``.
        numeric: What the numeric half compared against (an implementation by name, or "simulation").
        source: Paper and equation.
        note: Free text: sub-claims, their numbers, where an approximation is poor.
    """

    id: str
    item: int
    title: str
    formula: sp.Basic
    latex: str
    method: str
    symbolic_ok: bool
    value: float
    reference: float
    tolerance: float
    numeric_ok: bool
    passed: bool
    numeric: str
    source: str
    note: str

    def row(self) -> dict[str, object]:
        """The result as a flat dict (one table row; the sympy expression is left out, its LaTeX kept)."""
        return {
            "item": self.item,
            "id": self.id,
            "title": self.title,
            "method": self.method,
            "symbolic_ok": self.symbolic_ok,
            "value": self.value,
            "reference": self.reference,
            "tolerance": self.tolerance,
            "numeric_ok": self.numeric_ok,
            "passed": self.passed,
            "numeric": self.numeric,
            "source": self.source,
            "latex": self.latex,
            "note": self.note,
        }


def make_result(
    *,
    id: str,
    item: int,
    title: str,
    formula: sp.Basic,
    method: str,
    symbolic_ok: bool,
    value: float,
    reference: float,
    tolerance: float,
    numeric: str,
    source: str,
    note: str,
    numeric_extra_ok: bool = True,
) -> CheckResult:
    """Build a :class:`CheckResult`, deciding ``numeric_ok`` and ``passed`` in one place.

    Args:
        id: Identifier of the check.
        item: item number in docs/sources.md.
        title: One-line description.
        formula: Claimed formula (sympy).
        method: How sympy established it.
        symbolic_ok: Outcome of the symbolic half.
        value: Measured number.
        reference: Predicted number.
        tolerance: Accepted absolute deviation (must be >= 0).
        numeric: What the numeric half compared against.
        source: Paper and equation.
        note: Free text.
        numeric_extra_ok: Outcome of further numeric sub-claims described in ``note`` (default True).

    Returns:
        The frozen result.

    Raises:
        ValueError: If ``tolerance`` is negative or not finite.
    """
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"Invalid tolerance: {tolerance}")
    value, reference = float(value), float(reference)
    close = math.isfinite(value) and math.isfinite(reference) and abs(value - reference) <= tolerance
    numeric_ok = bool(close and numeric_extra_ok)
    symbolic_ok = bool(symbolic_ok)
    return CheckResult(
        id=id,
        item=item,
        title=title,
        formula=formula,
        latex=sp.latex(formula),
        method=method,
        symbolic_ok=symbolic_ok,
        value=value,
        reference=reference,
        tolerance=float(tolerance),
        numeric_ok=numeric_ok,
        passed=symbolic_ok and numeric_ok,
        numeric=numeric,
        source=source,
        note=note,
    )


def checked_formula(formula: object, default: sp.Basic, *also: sp.Symbol) -> sp.Basic:
    """The formula a check tests: ``default`` when ``formula`` is None, else ``formula`` in the default's symbols.

    ``also`` names further symbols the check gives a value (Adam's β₂ where the default has only β₁).

    A formula in any other symbol could not be evaluated (sympy fails deep inside the check, or worse, compares it
    as an unknown constant), so it is refused up front with the symbols named.

    Raises:
        ValueError: ``formula`` is not a sympy expression, is a Matrix where the default is not (or of another
            shape, or the other way round), or uses a symbol the default does not (a symbol of the same name with
            other assumptions counts as another symbol; use the check module's own).

    Example:
        >>> import sympy as sp
        >>> t = sp.Symbol("t", positive=True)
        >>> checked_formula(None, 1 / t)
        1/t
        >>> checked_formula(2 / t + sp.Symbol("z"), 1 / t)
        Traceback (most recent call last):
        ...
        ValueError: the claimed formula uses z, which this check does not define (its symbols: t)
    """
    if formula is None:
        return default
    if isinstance(formula, (int, float)) and not isinstance(formula, bool):  # a constant claim
        formula = sp.sympify(formula)
    if not isinstance(formula, (sp.Basic, sp.MatrixBase)):
        raise ValueError(f"the claimed formula must be a sympy expression, got {type(formula).__name__}: {formula!r}")
    defined = default.free_symbols | set(also)
    unknown = formula.free_symbols - defined
    if unknown:
        known = ", ".join(sorted(map(str, defined))) or "none"
        names = ", ".join(sorted(map(str, unknown)))
        clash = {str(u) for u in unknown} & {str(k) for k in defined}
        hint = f"; {', '.join(sorted(clash))} differ from the check's only in their assumptions" if clash else ""
        undefined = f"the claimed formula uses {names}, which this check does not define (its symbols: {known})"
        raise ValueError(undefined + hint)
    shape = default.shape if isinstance(default, sp.MatrixBase) else None
    if shape != (formula.shape if isinstance(formula, sp.MatrixBase) else None):
        wanted = f"a {shape[0]}x{shape[1]} sympy Matrix" if shape else "a scalar expression, not a Matrix"
        raise ValueError(f"the claimed formula must be {wanted}, like the check's own; got {formula!r}")
    return formula


def generic_branch(expr: sp.Basic) -> sp.Basic:
    """Replace every sympy ``Piecewise`` by its branch whose condition is ``True`` (e.g. the β ≠ 1 case of a sum).

    Example:
        >>> import sympy as sp
        >>> b, t, i = sp.symbols("b t i", positive=True)
        >>> generic_branch(sp.summation(b**i, (i, 0, t - 1)))
        (1 - b**t)/(1 - b)
    """
    if isinstance(expr, sp.Piecewise):
        return generic_branch(next(e for e, c in expr.args if c == sp.true))
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), generic_branch)


def is_zero(expr: sp.Basic) -> bool:
    """Whether sympy simplifies ``expr`` to exactly 0.

    An expression that is clearly not 0 at one sample point (:func:`clearly_nonzero`) is not 0 as a function
    either: it is refused without ``simplify``, which is slow on expressions it cannot reduce. The verdict is the
    same; only a wrong formula is refused faster.

    Example:
        >>> import sympy as sp
        >>> x = sp.symbols("x")
        >>> is_zero(sp.sin(x) ** 2 + sp.cos(x) ** 2 - 1)
        True
    """
    return not clearly_nonzero(expr) and sp.simplify(expr) == 0


SAMPLE_DIGITS = 60
"""Significant digits of the sample evaluation in :func:`clearly_nonzero`."""


def clearly_nonzero(expr: sp.Basic) -> bool:
    """Whether ``expr`` is far from 0 at a sample point where every free symbol satisfies its assumptions.

    Only expressions whose free symbols are all declared positive are sampled: each gets a distinct value,
    an odd integer from 3 for an integer symbol, else a fraction between 0 and 1 (away from 0, 1 and each other).
    An identity that ``simplify`` proves under these assumptions holds there too, so a value far from 0 disproves
    it. The exact value at the point is evaluated to :data:`SAMPLE_DIGITS` correct digits (sympy raises its working
    precision where terms cancel); "far" is above 1e-30. Sums, integrals, limits, piecewise expressions and points
    where the value is not a finite number are never sampled.

    Example:
        >>> import sympy as sp
        >>> b = sp.symbols("b", positive=True)
        >>> clearly_nonzero((1 - b**2) / (1 - b) - 1 - b), clearly_nonzero(b * 1.000001 - b)
        (False, True)
    """
    symbols = sorted(expr.free_symbols, key=str)
    if not all(symbol.is_positive for symbol in symbols) or expr.has(sp.Sum, sp.Integral, sp.Limit, sp.Piecewise):
        return False
    point = {
        symbol: sp.Integer(3 + 2 * k) if symbol.is_integer else sp.Rational(3 + 2 * k, 4 + 3 * k)
        for k, symbol in enumerate(symbols)
    }
    value = sp.N(expr.subs(point), SAMPLE_DIGITS)
    return bool(value.is_number and value.is_finite and abs(value) > sp.Float("1e-30"))


def mean_and_se(samples: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error ``s/sqrt(n)`` along the first axis.

    Example:
        >>> mean_and_se(np.array([1.0, 3.0]))
        (2.0, 1.0)
    """
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.shape[0]
    return float(samples.mean(axis=0)), float(samples.std(axis=0, ddof=1) / math.sqrt(n))


def variance_and_se(samples: np.ndarray) -> tuple[float, float]:
    """Sample variance and its standard error, the SE of the mean of the centred squares ``(x - x̄)²``.

    Example:
        >>> v, se = variance_and_se(np.array([0.0, 2.0, 0.0, 2.0]))
        >>> v
        1.0
    """
    samples = np.asarray(samples, dtype=np.float64)
    squares = (samples - samples.mean()) ** 2
    return float(squares.mean()), float(squares.std(ddof=1) / math.sqrt(samples.shape[0]))
