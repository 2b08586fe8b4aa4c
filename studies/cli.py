"""The ``valley`` command: a thin dispatcher over the studies, the figure scripts and the theory checks.

``valley figures [--quick|--full] [--only NAME] [--device cpu|cuda] [--amp]`` runs each figure's study through the
cached runner, draws it, runs the theory checks and writes the report; ``valley study NAME`` runs one study (``--amp``:
train with bfloat16 autocast); ``valley theory`` prints the theory table; ``valley list`` lists what exists.

``valley surface`` and ``valley curvature`` analyse one trained checkpoint (:mod:`studies.analyse`).

``torchrun --nproc-per-node N -m studies.cli study|surface|curvature ...`` splits the work over N processes (a study's
configs, a surface's chunks, a Hessian's data; gloo on CPU, NCCL and one GPU per process with ``--device cuda``);
rank 0 prints and writes. A plain run needs no distributed set-up.

Exit status (:mod:`studies.errors`): 0 done, 1 a failed check or an internal error, 2 a mistake in the command (one
line on stderr, never a traceback), 130 interrupted (Ctrl-C; finished runs and chunks are kept). ``--debug`` shows
the full traceback instead of the line.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from studies import analyse, analyse_cli, arguments, catalog
from studies.catalog import SCALES
from studies.errors import INTERRUPTED, UserError, report, watching_interrupts

if TYPE_CHECKING:
    import pandas as pd

# Heavy modules (torch, pandas, the studies, the figures) are imported inside the commands, so that parsing and
# ``valley --help`` take a fraction of a second.

DISTRIBUTED_COMMANDS = ("study", "surface", "curvature")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status (see :mod:`studies.errors`).

    The one error boundary of the command: a user's mistake ends as one line on stderr and status 2, an internal
    error as one line saying so and status 1, Ctrl-C as one line saying what finished work is kept and status 130;
    ``--debug`` shows the full traceback instead. A warning (a damaged cache file, NaN weights) is one line too.
    """
    parser = _parser()
    args, prog = None, parser.prog
    notice = "interrupt received; stopping once the module being imported has loaded (Ctrl-C again to stop now)"
    with watching_interrupts(lambda: f"{prog}: {notice}") as interrupted, warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"{prog}: warning: {message}", file=sys.stderr)
        try:
            args = parser.parse_args(argv)
            if args.command is None:
                parser.error("choose a command")
            prog = f"{parser.prog} {args.command}"
            if args.command not in DISTRIBUTED_COMMANDS:
                return args.func(args)
            from landscape import distributed

            with distributed.process_group(args.device):  # opened under torchrun only; a plain process opens nothing
                return args.func(args)
        except KeyboardInterrupt:
            if args is not None and args.debug:
                raise
            return _interrupted(prog, args)
        except Exception as error:
            if args is not None and args.debug:
                raise
            return _interrupted(prog, args) if interrupted.is_set() else report(getattr(error, "prog", prog), error)
        finally:
            # A Ctrl-C raised inside exec() of a source string (dataclasses build their methods so, during imports)
            # leaves CPython's "unhandled KeyboardInterrupt" flag set even when it was caught; under `python -m` the
            # process would then kill itself with SIGINT at exit instead of returning its status. Running any
            # source string clears the flag (an interrupt that does escape main sets it again).
            exec("pass", {})


def _interrupted(prog: str, args: argparse.Namespace | None) -> int:
    """Say that the command was interrupted and what finished work is kept; return the exit status 130."""
    try:
        kept = args.kept(args) if args is not None else "nothing started"
    except Exception:  # e.g. a module left half-imported by the interrupt
        kept = "finished work not counted"
    print(f"{prog}: interrupted; {kept}", file=sys.stderr)
    return INTERRUPTED


class _UsageError(UserError):
    """A command line argparse cannot parse, reported by the subcommand's parser ``prog``."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (raised to :func:`main`) instead of the usage."""

    def error(self, message: str) -> NoReturn:
        """Raise the usage error for :func:`main` to print."""
        raise _UsageError(f"{message} (see {self.prog} --help)", self.prog)


def _nothing_kept(args: argparse.Namespace) -> str:
    return "nothing kept"


def _runs_kept(args: argparse.Namespace) -> str:
    """How many finished runs the results cache holds (for the study, or for every study under ``figures``)."""
    from studies.runner import default_root

    root = Path(args.runs_dir or default_root())
    pattern = f"{args.name}/*/meta.json" if args.command == "study" else "*/*/meta.json"
    return f"{sum(1 for _ in root.glob(pattern))} finished runs kept in {root}"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="valley", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.set_defaults(debug=False, kept=_nothing_kept)
    sub = parser.add_subparsers(dest="command")

    def debug(p: argparse.ArgumentParser) -> None:
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback")

    def common(p: argparse.ArgumentParser) -> None:
        scale = p.add_mutually_exclusive_group()
        scale.add_argument("--quick", dest="scale", action="store_const", const="quick", help="CPU minutes (default)")
        scale.add_argument(
            "--paper", dest="scale", action="store_const", const="paper", help="the paper's experiment on real data"
        )
        scale.add_argument("--full", dest="scale", action="store_const", const="full", help="the papers' whole grid")
        scale.add_argument("--scale", choices=SCALES, help=" | ".join(SCALES))
        p.set_defaults(scale="quick")
        p.add_argument("--device", type=arguments.device, default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
        p.add_argument("--runs-dir", type=Path, default=None, help="results cache (default $VALLEY_RUNS or runs/)")
        p.add_argument("--data-dir", default=None, help="folder with MNIST/Fashion-MNIST/CIFAR-10 ($VALLEY_DATA)")
        p.add_argument("--force", action="store_true", help="recompute cached runs")
        p.add_argument("--amp", action="store_true", help="train with bfloat16 autocast (cached apart)")
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=sys.stderr.isatty(),
            help="progress bars (default: on when stderr is a terminal)",
        )
        p.set_defaults(kept=_runs_kept)

    figures = sub.add_parser("figures", help="run the studies and draw every figure and the report")
    common(figures)
    figures.add_argument("--only", action="append", choices=_figure_names(), help="only this figure (repeatable)")
    figures.add_argument("--out", type=Path, default=Path("paper_figures/out"), help="output folder")
    figures.add_argument("--skip-theory", action="store_true", help="leave the theory table out of the report")
    figures.set_defaults(func=_cmd_figures)

    study = sub.add_parser("study", help="run one study (cached, resumable)")
    study.add_argument("name", choices=catalog.NAMES)
    common(study)
    study.set_defaults(func=_cmd_study)

    analyse.add_parsers(sub)
    analyse_cli.add_parser(sub)

    theory = sub.add_parser("theory", help="run the theory checks and print the table")
    theory.add_argument("--out", type=Path, default=Path("paper_figures/out/theory"), help="output folder")
    theory.set_defaults(func=_cmd_theory)

    listing = sub.add_parser("list", help="list studies, figures, optimizers, theory checks and data sets")
    listing.add_argument("--data-dir", default=None)
    listing.set_defaults(func=_cmd_list)
    for subparser in sub.choices.values():
        debug(subparser)
    return parser


def _figures() -> dict:
    return importlib.import_module("paper_figures.catalog").FIGURES


def _figure_names() -> tuple[str, ...]:
    return importlib.import_module("paper_figures.catalog").NAMES


def _cmd_study(args: argparse.Namespace) -> int:
    from landscape import distributed
    from landscape.files import check_output_dir, check_output_file
    from studies.runner import default_root, run_study

    root = args.runs_dir or default_root()
    check_output_dir(root / args.name)
    check_output_file(root / args.name / f"{args.scale}.csv")
    check_output_file(root / args.name / f"{args.scale}.notes.txt")
    start = time.perf_counter()
    frame = run_study(
        catalog.get(args.name),
        args.scale,
        root=args.runs_dir,
        device=args.device,
        data_dir=args.data_dir,
        force=args.force,
        progress=args.progress,
        amp=args.amp,
    )
    if distributed.is_main():
        runs = frame["run"].nunique() if len(frame) else 0
        seconds = time.perf_counter() - start
        print(f"{args.name}: {runs} runs on {distributed.world_size()} process(es), {seconds:.1f} s")
        print(f"results: {root / args.name / f'{args.scale}.csv'}")
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from landscape.files import check_output_dir, check_output_file
    from paper_figures._style import apply_style
    from paper_figures.report import write_report
    from studies.runner import default_root, run_study

    apply_style()
    root = args.runs_dir or default_root()
    chosen = {name: figure for name, figure in _figures().items() if not args.only or name in args.only}
    for folder in (root, *(args.out / name for name in chosen)):
        check_output_dir(folder)
    for path in (args.out / "report.md", args.out / "report.html"):
        check_output_file(path)
    if not (args.skip_theory or args.only):
        check_output_dir(root / "theory")
        _check_theory_outputs(args.out / "theory")
    outputs, timings = [], []
    for name, figure in chosen.items():
        if args.scale not in catalog.get(figure.STUDY).scales:
            if args.only:
                raise UserError(f"the study of figure {name} has no {args.scale} scale")
            print(f"{name}: skipped (its study has no {args.scale} scale)")
            continue
        start = time.perf_counter()
        run_study(
            catalog.get(figure.STUDY),
            args.scale,
            root=root,
            device=args.device,
            data_dir=args.data_dir,
            force=args.force,
            progress=args.progress,
            amp=args.amp,
        )
        frame = figure.load_data(root, args.scale)
        output = figure.make_figure(frame, args.out / name)
        output.notes.append(_provenance(name, args.scale, frame))
        outputs.append(output)
        timings.append(f"{name}: {time.perf_counter() - start:.1f} s")
        print(f"{name}: {', '.join(str(p) for p in output.images)}")
    skip_theory = args.skip_theory or args.only
    theory = None if skip_theory else _theory_table(args.out / "theory", root, args.force, args.progress)
    precision = "bfloat16 autocast (amp)" if args.amp else "float32"
    header = f"Scale: {args.scale}; device: {args.device}; training: {precision}; "
    header += f"time per figure: {'; '.join(timings)}."
    md, page = write_report(outputs, args.out, theory, header)
    print(f"report: {md} and {page}")
    return 0 if theory is None or bool(theory["passed"].all()) else 1


def _provenance(name: str, scale: str, frame: pd.DataFrame) -> str:
    """The report's line under a figure: the scale and data it was made from, and the command that remakes it."""
    datasets = sorted(frame["dataset"].dropna().astype(str).unique()) if "dataset" in frame.columns else []
    data = ", ".join(datasets) if datasets else "synthetic problems (no data set)"
    return f"Made at the {scale} scale on {data}. Regenerate: `valley figures --only {name} --scale {scale}`."


def _theory_table(out_dir: Path, root: Path, force: bool, progress: bool) -> pd.DataFrame:
    """The theory table, cached under ``<root>/theory/`` keyed by the source of the packages the checks run."""
    from studies.store import cached_table

    theory = importlib.import_module("theory")
    path = root / "theory" / f"{_source_key(('theory', 'optim', 'landscape'))}.csv"
    run = functools.partial(theory.run_all, out_dir=out_dir, progress=progress)
    table, cached = cached_table(path, run, force, keep_default_na=False, na_values=[""])
    if cached:
        theory.write_tables(table, out_dir)
        print(f"theory: {int(table['passed'].sum())}/{len(table)} checks passed (cached: {path})")
    return table


def _source_key(packages: Sequence[str]) -> str:
    """SHA-256 of the Python sources of ``packages`` and the library versions (first 16 hex digits)."""
    from studies.store import environment

    digest = hashlib.sha256(json.dumps(environment(), sort_keys=True).encode())
    for package in packages:
        folder = Path(importlib.import_module(package).__file__).parent
        for source in sorted(folder.rglob("*.py")):
            digest.update(source.relative_to(folder).as_posix().encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def _check_theory_outputs(out_dir: Path) -> None:
    """Refuse a ``theory.md`` or ``theory.tex`` in ``out_dir`` that does not begin as the one valley writes."""
    from landscape.files import OutputPathError, check_output_dir, check_output_file

    check_output_dir(out_dir)
    for name, head in (("theory.md", b"# Theory checks\n"), ("theory.tex", b"\\begin{longtable}")):
        path = check_output_file(out_dir / name)
        if path.exists() and path.read_bytes()[: len(head)] != head:
            raise OutputPathError(f"{path}: exists and valley did not write it; move it away or choose another --out")


def _cmd_theory(args: argparse.Namespace) -> int:
    _check_theory_outputs(args.out)
    table = importlib.import_module("theory").run_all(out_dir=args.out)
    return 0 if bool(table["passed"].all()) else 1


def _cmd_list(args: argparse.Namespace) -> int:
    import inspect

    from optim.registry import ENTRIES
    from studies import data
    from studies.models import MLP, MODELS, AdamCNN, LeNet5, ResNet

    print("Studies (valley study NAME):")
    for study in catalog.STUDIES.values():
        print(f"  {study.name:24s} {study.title}")
    print("Figures (valley figures --only NAME):")
    for name, figure in _figures().items():
        print(f"  {name:24s} {figure.TITLE}")
    print("Models (--model NAME --model-kwargs JSON; or --model pkg.module:factory for one's own):")
    for name, cls in zip(MODELS, (MLP, LeNet5, AdamCNN, ResNet), strict=True):
        params = list(inspect.signature(cls).parameters.values())[2:]  # after input_shape, num_classes
        print(f"  {name:24s} {', '.join(str(p) for p in params) or '(no options)'}")
    print("Optimizers (optim.make(NAME, model, **overrides); registry defaults):")
    for entry in ENTRIES.values():
        options = ([f"base={entry.base}"] if entry.base else []) + [f"{k}={v}" for k, v in entry.defaults.items()]
        print(f"  {entry.name:24s} {entry.cls.__name__}({', '.join(options)})")
    print(f"Theory checks: {len(importlib.import_module('theory').checks())} (valley theory)")
    print("Data sets (--data NAME, or a .pt/.npz file, or pkg.module:function):")
    for name in data.DATASETS:
        folder = data.locate(name, args.data_dir)
        state = "embedded" if name in data.EMBEDDED else (f"found in {folder}" if folder else "absent")
        print(f"  {name:24s} {state}")
    searched = ", ".join(str(root) for root in data.search_roots(args.data_dir))
    print(f"  (local data sets are searched in: {searched})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
