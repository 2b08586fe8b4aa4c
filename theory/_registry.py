"""The registry of all checks, the runner, and the table writers (pandas on screen, Markdown and LaTeX on disk)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from landscape.files import publish
from theory import (
    adam,
    adamp,
    curvature,
    ensembles,
    filter_normalization,
    radam,
    reddi,
    repulsion,
    sam,
    schedules,
    sharpness,
    stability,
    xgrad,
)
from theory._result import CheckResult

__all__ = ["DEFAULT_OUT", "checks", "format_markdown", "run_all", "write_tables"]

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "paper_figures" / "out" / "theory"
"""Where ``run_all`` writes ``theory.md`` and ``theory.tex`` unless told otherwise."""

_CHECKS: tuple[Callable[[], CheckResult], ...] = (
    radam.center_of_mass,
    radam.scaled_inv_chi2_moments,
    radam.exact_variance,
    radam.rectification,
    radam.adaptive_lr_monte_carlo,
    adam.bias_correction,
    adam.sparse_step_bound,
    adam.momentum_terminal_velocity,
    sam.dual_norm,
    sam.quadratic_sharpness,
    adamp.scale_invariance,
    adamp.norm_growth,
    reddi.reddi_counterexample,
    xgrad.weight_prediction,
    repulsion.kernel_gradient,
    sharpness.keskar_box_maximum,
    sharpness.dinh_reparametrization,
    filter_normalization.filter_normalization,
    curvature.hutchinson,
    ensembles.ensemble_error,
    schedules.cosine_annealing,
    stability.gd_threshold,
    stability.heavy_ball_threshold,
    stability.nesterov_threshold,
    stability.adam_threshold,
    stability.tracker_preconditioned_sharpness,
)

_SCREEN = ["item", "id", "symbolic_ok", "value", "reference", "tolerance", "numeric_ok", "result", "seconds"]


def checks() -> tuple[Callable[[], CheckResult], ...]:
    """All checks in the order of docs/sources.md (items 1-26); each is called without arguments.

    Example:
        >>> len(checks())
        26
    """
    return _CHECKS


def _failed_row(check: Callable[[], CheckResult], error: BaseException) -> dict[str, object]:
    """A failing row for a check that raised (e.g. an implementation it calls changed its API)."""
    last = traceback.format_exception_only(type(error), error)[-1].strip()
    return {
        "item": None,
        "id": f"{check.__module__.removeprefix('theory.')}.{check.__name__}",
        "title": check.__doc__.splitlines()[0] if check.__doc__ else check.__name__,
        "method": "",
        "symbolic_ok": False,
        "value": float("nan"),
        "reference": float("nan"),
        "tolerance": float("nan"),
        "numeric_ok": False,
        "passed": False,
        "numeric": "",
        "source": "",
        "latex": "",
        "note": f"the check raised {last}",
    }


def run_all(out_dir: str | Path | None = None, progress: bool = True, echo: bool = True) -> pd.DataFrame:
    """Run every check, print the table, write it as Markdown and LaTeX, and return it.

    A check that raises is recorded as a failed row whose note names the exception.

    Args:
        out_dir: Folder for ``theory.md`` and ``theory.tex`` (default ``paper_figures/out/theory``).
        progress: Show a progress bar.
        echo: Print the table (pandas) with a PASS/FAIL column.

    Returns:
        One row per check: ``item, id, title, method, symbolic_ok, value, reference, tolerance, numeric_ok,
        passed, numeric, source, latex, note, seconds``.
    """
    rows = []
    bar = tqdm(_CHECKS, desc="theory", disable=not progress, leave=False)
    for check in bar:
        bar.set_postfix_str(check.__name__)
        start = time.perf_counter()
        try:
            row = check().row()
        except Exception as error:
            row = _failed_row(check, error)
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    frame = pd.DataFrame(rows)
    write_tables(frame, DEFAULT_OUT if out_dir is None else Path(out_dir))
    if echo:
        screen = frame.assign(result=frame["passed"].map({True: "PASS", False: "FAIL"}))[_SCREEN]
        with pd.option_context(
            "display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format
        ):
            print(screen.to_string(index=False))
        print(f"{int(frame['passed'].sum())}/{len(frame)} checks passed")
    return frame


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_markdown(frame: pd.DataFrame) -> str:
    """The table as GitHub Markdown (no extra dependency): a summary table, then each check's note.

    Example:
        >>> frame = pd.DataFrame([{"item": 1, "id": "x", "title": "t", "method": "m", "symbolic_ok": True,
        ...     "value": 1.0, "reference": 1.0, "tolerance": 0.0, "numeric_ok": True, "passed": True,
        ...     "numeric": "n", "source": "s", "latex": "x", "note": "ok"}])
        >>> format_markdown(frame).splitlines()[2].startswith("| 1 | x |")
        True
    """
    columns = ["item", "id", "title", "symbolic_ok", "value", "reference", "tolerance", "numeric_ok", "passed"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    lines += ["", "## Checks", ""]
    for _, row in frame.iterrows():
        lines += [
            f"### {row['item']}. {row['title']} (`{row['id']}`): {'PASS' if row['passed'] else 'FAIL'}",
            "",
            f"- formula: ${row['latex']}$",
            f"- symbolic: {row['method']}",
            f"- numeric: {row['numeric']}",
            f"- source: {row['source']}",
            f"- note: {row['note']}",
            "",
        ]
    return "\n".join(lines)


_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}


def _tex_escape(text: object) -> str:
    """Escape LaTeX's special characters in a text cell."""
    out = []
    for char in str(text):
        if char == "\\":
            out.append(r"\textbackslash{}")
        elif char == "~":
            out.append(r"\textasciitilde{}")
        elif char == "^":
            out.append(r"\^{}")
        else:
            out.append(_TEX.get(char, char))
    return "".join(out)


def _format_latex(frame: pd.DataFrame) -> str:
    """A ``longtable`` with the formula in math mode and every text cell escaped."""
    lines = [
        r"\begin{longtable}{rp{0.3\linewidth}p{0.3\linewidth}rrrl}",
        r"item & check & formula & value & reference & tolerance & result \\ \hline",
    ]
    for _, row in frame.iterrows():
        formula = f"${row['latex']}$" if row["latex"] else ""
        cells = [
            _tex_escape(row["item"]),
            _tex_escape(row["title"]),
            formula,
            _tex_escape(_cell(row["value"])),
            _tex_escape(_cell(row["reference"])),
            _tex_escape(_cell(row["tolerance"])),
            "pass" if row["passed"] else r"\textbf{fail}",
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines.append(r"\end{longtable}")
    return "\n".join(lines) + "\n"


def write_tables(frame: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``theory.md`` and ``theory.tex`` into ``out_dir`` (created if needed); return their paths."""
    out = Path(out_dir)
    md, tex = out / "theory.md", out / "theory.tex"
    publish({md: "# Theory checks\n\n" + format_markdown(frame) + "\n", tex: _format_latex(frame)})
    return md, tex
