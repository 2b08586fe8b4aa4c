"""The ``valley analyse`` subcommand: its arguments and the command (the work is in :mod:`studies.analyse_all`).

Kept apart from :mod:`studies.analyse_all` so that building the parser imports nothing heavy.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from studies import arguments
from studies.analyse import target_arguments

PARTS = ("line", "plane", "eigen", "trace", "density", "eigenplane", "sharpness")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``valley analyse`` to the ``valley`` parser."""
    p = sub.add_parser(
        "analyse",
        help="the whole analysis of a checkpoint: 1D/2D surfaces, Hessian spectrum, sharpness, figures, HTML page",
        description="Writes to --out: line.csv (1D interpolation with --to, else a random line), barrier.csv, "
        "plane.csv (2D filter-normalised plane), eigenvalues.csv, trace.csv, density.csv, eigenplane.csv, "
        "sharpness.csv, timings.csv, analysis.json (every choice), figures/ (PNG, PDF, plane.vtk) and "
        "report.html (self-contained). Settings left out are sized from the data and recorded. Finished parts "
        "are cached under OUT/cache and reused by a later run (--force recomputes).",
    )
    target_arguments(p, "analysis", "output folder")
    p.add_argument("--to", type=Path, default=None, help="second checkpoint: interpolate to it (1D part)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--line-points", type=int, default=None, help="points of the 1D curve (default sized)")
    p.add_argument("--resolution", type=int, default=None, help="points per axis of the 2D planes (default sized)")
    p.add_argument("--span", type=arguments.span, default=1.0, help="half width of the random plane (default 1)")
    p.add_argument("--curvature-samples", type=int, default=None, help="examples for curvature and sharpness")
    p.add_argument("--top-k", type=int, default=None, help="Hessian eigenvalues (default 5)")
    p.add_argument("--trace-probes", type=int, default=None, help="Hutchinson probes (default sized)")
    p.add_argument("--slq-probes", type=int, default=2, help="SLQ probes (default 2)")
    p.add_argument("--slq-steps", type=int, default=None, help="Lanczos steps per SLQ probe (default 30)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="Hessian dtype")
    p.add_argument("--rho", type=float, default=0.05, help="SAM radius (ASAM: 10 rho)")
    p.add_argument(
        "--bn-policy",
        choices=("saved", "recompute"),
        default=None,
        help="BatchNorm in surfaces (default: recompute along --to between BatchNorm models, else saved)",
    )
    p.add_argument("--force", action="store_true", help="recompute every part")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="CSVs and JSON only")
    p.set_defaults(func=_cmd_analyse, kept=_parts_kept)


def _parts_kept(args: argparse.Namespace) -> str:
    return f"finished parts kept in {args.out / 'cache'} (a rerun reuses them)"


def _cmd_analyse(args: argparse.Namespace) -> int:
    from studies import specs
    from studies.analyse import analysis_target
    from studies.analyse_all import Settings, analyse, check_analysis_folder

    start = time.perf_counter()
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    settings = Settings(
        parts=parts,
        samples=args.samples,
        curvature_samples=args.curvature_samples,
        line_points=args.line_points,
        plane_points=args.resolution,
        plane_span=args.span,
        top_k=args.top_k,
        trace_probes=args.trace_probes,
        slq_probes=args.slq_probes,
        slq_steps=args.slq_steps,
        dtype=args.dtype,
        rho=args.rho,
        bn=args.bn_policy,
        seed=args.seed,
    )
    check_analysis_folder(args.out)
    target, _ = analysis_target(args)
    to = specs.load_second(target, args.to, args.model, args.model_kwargs) if args.to is not None else None
    record = target.record | {"to": str(args.to) if args.to is not None else None}
    loading = time.perf_counter() - start
    result = analyse(
        target.model,
        target.batches,
        args.out,
        to=to,
        loss_fn=target.loss_fn,
        forward_fn=target.forward_fn,
        settings=settings,
        record=record,
        progress=args.progress,
        force=args.force,
    )
    print(result.summary())
    figures = 0.0
    if args.figures:
        images, page, figures = importlib.import_module("paper_figures.analysis_report").report(result)
        print(f"figures: {len(images)} in {result.out_dir / 'figures'}; page: {page}")
    total = time.perf_counter() - start
    print(
        f"wall time {total:.1f} s: loading {loading:.1f} s, analysis {result.seconds['total']:.1f} s, "
        f"figures {figures:.1f} s; written to {result.out_dir}"
    )
    return 0
