"""The figure scripts, in report order.

Each module defines ``STUDY``, ``TITLE``, ``load_data(root, scale)`` and ``make_figure(frame, out_dir)`` returning a
:class:`paper_figures.report.FigureOutput`. Adding a figure = one module + one name here. The names are listed without
importing the modules (``valley --help`` stays fast); :data:`FIGURES` imports them on first access.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType
from typing import Any

#: The figures in report order; each is ``paper_figures.<name>``, drawing the study of the same name.
NAMES = (
    "kingma2015adam",
    "reddi2018",
    "heo2021adamp",
    "ravines",
    "crowded_valley",
    "liu2020radam",
    "guan_xgrad",
    "checkpoint_distance",
    "flat_minima",
    "weight_norm_growth",
    "cohen2021eos",
)


@cache
def _figures() -> dict[str, ModuleType]:
    figures = {}
    for name in NAMES:
        module = importlib.import_module(f"paper_figures.{name}")
        if module.STUDY != name:
            raise RuntimeError(f"paper_figures.{name} draws the study {module.STUDY!r}")
        figures[name] = module
    return figures


def __getattr__(attr: str) -> Any:
    """``FIGURES``: the figure modules by name, imported on first access."""
    if attr == "FIGURES":
        return _figures()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
