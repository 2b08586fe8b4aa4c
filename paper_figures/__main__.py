"""``python -m paper_figures`` regenerates every figure: the same as ``valley figures``."""

import sys

from studies.cli import main

if __name__ == "__main__":
    sys.exit(main(["figures", *sys.argv[1:]]))
