"""Sympy derivations of the papers' formulas, each paired with a numeric check."""

__all__: list[str] = []
