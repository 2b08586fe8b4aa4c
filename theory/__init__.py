"""Sympy derivations of the papers' formulas, each paired with a numeric check (items 1-26 of docs/sources.md)."""

from theory._registry import DEFAULT_OUT, checks, format_markdown, run_all, write_tables
from theory._result import CheckResult
from theory.radam import simulated_adaptive_lr_variance, variance_curves

__all__ = [
    "DEFAULT_OUT",
    "CheckResult",
    "checks",
    "format_markdown",
    "run_all",
    "simulated_adaptive_lr_variance",
    "variance_curves",
    "write_tables",
]
