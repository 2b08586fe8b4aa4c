"""Reference results kept in the repository: summary tables of studies run at the ``paper`` scale on real data.

A paper-scale run takes hours on a CPU, so its summary (a few rows per configuration) is committed under
``paper_figures/reference/<study>.csv`` and every report shows it beside the paper's numbers and the scale that was
just run. Each table carries its provenance in columns: the command that produced the runs, valley's and torch's
versions, the device, the number of finished runs, their summed compute seconds and the date.

Regenerate one after ``valley study guan_xgrad --paper`` with::

    python -m paper_figures.reference guan_xgrad
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd
import torch

from landscape.files import atomic_write
from studies.store import installed_version

#: Where the committed reference tables live.
REFERENCE_DIR = Path(__file__).parent / "reference"
#: Provenance columns every reference table carries.
PROVENANCE = ("scale", "command", "valley_version", "torch_version", "device", "runs", "run_seconds", "date")


def reference_path(study: str) -> Path:
    """The committed reference table of ``study``."""
    return REFERENCE_DIR / f"{study}.csv"


def read_reference(study: str) -> pd.DataFrame | None:
    """The committed reference table of ``study``, or ``None`` when none has been made yet."""
    path = reference_path(study)
    return pd.read_csv(path) if path.is_file() else None


def side_by_side(
    here: pd.DataFrame, reference: pd.DataFrame | None, key: str, paper: list[str], ours: list[str], scale: str
) -> pd.DataFrame:
    """One table: ``key``, the paper's columns, ours at ``scale`` and ours in the committed paper-scale reference.

    Args:
        here: the comparison table computed from the results just drawn.
        reference: the committed reference table (:func:`read_reference`), or ``None``.
        key: the column identifying a row (e.g. the optimizer or the measure).
        paper: columns holding the paper's numbers (taken from ``here``).
        ours: columns holding our numbers; each appears as ``"<column> [<scale>]"`` and ``"<column> [paper scale]"``.
        scale: the scale of ``here``.
    """
    table = here[[key, *paper, *ours]].rename(columns={c: f"{c} [{scale}]" for c in ours})
    if reference is None:
        return table
    ref = reference[[key, *ours]].rename(columns={c: f"{c} [paper scale]" for c in ours})
    return table.merge(ref, on=key, how="outer")


def reference_note(study: str, reference: pd.DataFrame | None) -> str:
    """A note for the report: where the paper-scale numbers come from, or how to make them."""
    if reference is None:
        return (
            f"No paper-scale reference is committed yet: run `valley study {study} --paper`, then "
            f"`python -m paper_figures.reference {study}`."
        )
    first = reference.iloc[0]
    return (
        f"Paper-scale reference: {first['runs']} runs of `{first['command']}` on {first['device']} "
        f"({first['run_seconds'] / 3600:.1f} h of runs), valley "
        f"{first['valley_version']}, torch {first['torch_version']}, {first['date']} "
        f"(paper_figures/reference/{study}.csv)."
    )


def with_provenance(
    table: pd.DataFrame, frame: pd.DataFrame, command: str, scale: str, runs: tuple[str, float]
) -> pd.DataFrame:
    """``table`` with the provenance columns: command, scale, versions, device, finished runs, their time, date."""
    device, seconds = runs
    return table.assign(
        scale=scale,
        command=command,
        valley_version=installed_version(),
        torch_version=torch.__version__,
        device=device,
        runs=int(frame["run"].nunique()),
        run_seconds=round(seconds),
        date=datetime.date.today().isoformat(),
    )


def run_records(root: str | os.PathLike, study: str, runs: set[str]) -> tuple[str, float]:
    """The devices (comma-separated) and the summed seconds recorded in the ``meta.json`` of the given run folders.

    A run folder without its record counts as device ``unknown`` and makes the sum NaN.
    """
    devices, seconds = set(), 0.0
    for run in sorted(runs):
        path = Path(root, study, run, "meta.json")
        meta = json.loads(path.read_text()) if path.is_file() else {}
        devices.add(str(meta.get("environment", {}).get("device", "unknown")))
        seconds += float(meta.get("seconds", math.nan))
    return ",".join(sorted(devices)) or "unknown", seconds


def main(argv: list[str] | None = None) -> int:
    """Write the reference table of one study from its ``paper``-scale results under ``--runs-dir``."""
    parser = argparse.ArgumentParser(prog="python -m paper_figures.reference", description=__doc__.split("\n")[0])
    parser.add_argument("study", help="a study whose figure defines paper_comparison, e.g. guan_xgrad")
    parser.add_argument("--runs-dir", default=os.environ.get("VALLEY_RUNS", "runs"))
    parser.add_argument("--command", help="the command that made the runs (default: valley study STUDY --paper)")
    args = parser.parse_args(argv)
    try:
        figure = importlib.import_module(f"paper_figures.{args.study}")
    except ModuleNotFoundError:
        print(f"error: no figure script paper_figures/{args.study}.py", file=sys.stderr)
        return 2
    if not hasattr(figure, "paper_comparison"):
        print(f"error: paper_figures.{args.study} defines no paper_comparison", file=sys.stderr)
        return 2
    try:
        frame = figure.load_data(args.runs_dir, "paper")
    except (OSError, ValueError) as error:
        print(f"error: cannot read the paper-scale results of {args.study}: {error}", file=sys.stderr)
        return 2
    command = args.command or f"valley study {args.study} --paper"
    records = run_records(args.runs_dir, args.study, set(frame["run"]))
    table = with_provenance(figure.paper_comparison(frame), frame, command, "paper", records)
    path = atomic_write(reference_path(args.study), table.to_csv(index=False))
    print(f"{path}: {len(table)} rows from {table['runs'].iloc[0]} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
