"""The figure scripts, in report order.

Each module defines ``STUDY``, ``TITLE``, ``load_data(root, scale)`` and ``make_figure(frame, out_dir)`` returning a
:class:`paper_figures.report.FigureOutput`. Adding a figure = one module + one entry here.
"""

from __future__ import annotations

from types import ModuleType

from paper_figures import (
    checkpoint_distance,
    cohen2021eos,
    crowded_valley,
    flat_minima,
    guan_xgrad,
    heo2021adamp,
    kingma2015adam,
    liu2020radam,
    ravines,
    reddi2018,
    weight_norm_growth,
)

FIGURES: dict[str, ModuleType] = {
    m.STUDY: m
    for m in (
        kingma2015adam,
        reddi2018,
        heo2021adamp,
        ravines,
        crowded_valley,
        liu2020radam,
        guan_xgrad,
        checkpoint_distance,
        flat_minima,
        weight_norm_growth,
        cohen2021eos,
    )
}
