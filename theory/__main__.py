"""``python -m theory [--out DIR] [--quiet]``: run every check, print the table, exit 1 if any fails."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from theory._registry import DEFAULT_OUT, run_all


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run all checks and return the exit status (0 when every check passes).

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="python -m theory", description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for theory.md and theory.tex")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    frame = run_all(out_dir=args.out, progress=not args.quiet)
    print(f"tables written to {args.out}")
    return 0 if bool(frame["passed"].all()) else 1


if __name__ == "__main__":
    sys.exit(main())
