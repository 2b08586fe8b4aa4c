import inspect
import math

import pandas as pd
import pytest
import sympy as sp

import theory
from theory import _registry
from theory.__main__ import main
from theory._result import checked_formula, clearly_nonzero, is_zero, make_result


def _quick_check():
    return theory.schedules.cosine_annealing(steps=20)


def _wrong_check():
    return theory.schedules.cosine_annealing(formula=2 * theory.schedules.COSINE, steps=20)


def _broken_check():
    raise RuntimeError("implementation changed")


def test_checks_cover_every_theory_item():
    items = sorted(check.__module__ for check in theory.checks())
    assert len(theory.checks()) == 26
    assert "theory.schedules" in items and "theory.radam" in items


def test_run_all_writes_tables_and_records_failures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_registry, "_CHECKS", (_quick_check, _wrong_check, _broken_check))
    frame = theory.run_all(out_dir=tmp_path, progress=False)
    assert isinstance(frame, pd.DataFrame)
    assert frame["passed"].tolist() == [True, False, False]
    assert "RuntimeError: implementation changed" in frame["note"].iloc[2]
    printed = capsys.readouterr().out
    assert "PASS" in printed and "FAIL" in printed and "1/3 checks passed" in printed
    markdown = (tmp_path / "theory.md").read_text()
    latex = (tmp_path / "theory.tex").read_text()
    assert "| 21 | schedules.cosine_annealing |" in markdown and markdown.count("FAIL") == 2
    assert r"\begin{longtable}" in latex and r"\textbf{fail}" in latex and "eta\\_{" not in latex


def test_main_exit_status(tmp_path, monkeypatch):
    monkeypatch.setattr(_registry, "_CHECKS", (_quick_check,))
    assert main(["--out", str(tmp_path), "--quiet"]) == 0
    monkeypatch.setattr(_registry, "_CHECKS", (_quick_check, _wrong_check))
    assert main(["--out", str(tmp_path), "--quiet"]) == 1


def test_make_result_decides_pass_and_rejects_bad_tolerance():
    common = dict(id="x", item=0, title="t", formula=sp.Integer(1), method="m", numeric="n", source="s", note="")
    assert make_result(symbolic_ok=True, value=1.0, reference=1.1, tolerance=0.2, **common).passed
    assert not make_result(symbolic_ok=True, value=1.0, reference=1.5, tolerance=0.2, **common).passed
    assert not make_result(symbolic_ok=False, value=1.0, reference=1.0, tolerance=0.2, **common).passed
    assert not make_result(symbolic_ok=True, value=math.nan, reference=1.0, tolerance=0.2, **common).passed
    with pytest.raises(ValueError, match="tolerance"):
        make_result(symbolic_ok=True, value=1.0, reference=1.0, tolerance=-1.0, **common)


def test_a_clearly_nonzero_expression_is_refused_without_changing_any_verdict():
    b, p = sp.symbols("b p", positive=True)
    t = sp.symbols("t", positive=True, integer=True)
    x = sp.symbols("x", real=True)  # not known positive: never sampled
    identity = (1 - b**t) / (1 - b) - sp.summation(b ** sp.Symbol("i"), (sp.Symbol("i"), 0, t - 1)).doit()
    assert not clearly_nonzero((1 - b**2) / (1 - b) - 1 - b) and is_zero((1 - b**2) / (1 - b) - 1 - b)
    assert clearly_nonzero(b**p * 1.000001 - b**p) and not is_zero(b**p * 1.000001 - b**p)
    assert clearly_nonzero(sp.Rational(1, 10**20) * t) and not is_zero(sp.Rational(1, 10**20) * t)
    assert not clearly_nonzero(x**2 - 1)  # zero at x = 1: a real symbol is not sampled
    assert not clearly_nonzero(1 / (t - 3))  # t = 3 at the sample point: no finite value there
    assert not clearly_nonzero(identity)  # a sum (or its piecewise form) is never sampled
    big = sp.sqrt(2) * sp.Integer(10) ** 40  # terms near 1e80 that cancel exactly: evaluated to 60 correct digits
    assert not clearly_nonzero((big + b) ** 2 - big**2 - 2 * big * b - b**2)


FORMULA_CHECKS = [check for check in theory.checks() if "formula" in inspect.signature(check).parameters]


@pytest.mark.parametrize("check", FORMULA_CHECKS, ids=lambda check: f"{check.__module__}.{check.__name__}")
def test_a_claimed_formula_in_a_symbol_the_check_does_not_define_is_refused_by_name(check):
    with pytest.raises(ValueError, match=r"uses zeta_unknown, which this check does not define \(its symbols: "):
        check(formula=sp.Symbol("zeta_unknown") + 1)


def test_every_check_but_the_exponent_one_takes_a_claimed_formula():
    assert len(FORMULA_CHECKS) == len(theory.checks()) - 1


def test_a_symbol_named_as_the_checks_but_with_other_assumptions_is_named_as_such():
    plain = sp.Symbol("T_cur")  # the check's T_cur is nonnegative
    with pytest.raises(ValueError, match="uses T_cur, .*; T_cur differ from the check's only in their assumptions"):
        theory.schedules.cosine_annealing(formula=theory.schedules.COSINE.subs(theory.schedules.t_, plain))


def test_a_claimed_formula_that_is_not_sympy_is_refused_and_a_number_is_a_constant_claim():
    with pytest.raises(ValueError, match="must be a sympy expression, got str"):
        theory.schedules.cosine_annealing(formula="eta_max")
    assert not theory.schedules.cosine_annealing(formula=0.5, steps=20).passed


def test_adam_threshold_accepts_a_claim_in_beta_2_which_it_gives_a_value():
    from theory.stability import ADAM, beta1_, beta2_

    assert checked_formula(ADAM.subs(beta1_, beta2_), ADAM, beta2_) == ADAM.subs(beta1_, beta2_)


def test_a_claimed_formula_of_another_shape_than_the_checks_is_refused():
    with pytest.raises(ValueError, match="must be a 3x1 sympy Matrix, like the check's own; got 1"):
        theory.sam.dual_norm(formula=1)
    with pytest.raises(ValueError, match="must be a 3x1 sympy Matrix"):
        theory.sam.dual_norm(formula=sp.Matrix([1, 2]))
    with pytest.raises(ValueError, match="must be a scalar expression, not a Matrix"):
        theory.schedules.cosine_annealing(formula=sp.Matrix([theory.schedules.COSINE]))
