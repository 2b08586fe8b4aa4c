"""The shared look of every figure and the one way figures are saved (PNG + PDF, through :mod:`landscape.files`)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import seaborn as sns

from landscape.files import publish

#: One colour per optimizer name, so an optimizer looks the same in every figure.
PALETTE_ORDER = (
    "SGD", "Momentum", "Nesterov", "Adagrad", "RMSprop", "Adam", "AdamW", "AMSGrad", "RAdam", "AdamP", "SGDP",
    "SAM", "ASAM", "Expectigrad", "AdaBelief", "AdaM3",
)  # fmt: skip


def apply_style() -> None:
    """Seaborn's paper context with a white grid; call once before drawing."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "savefig.bbox": "tight", "legend.frameon": False})


def optimizer_palette(names: list[str]) -> dict[str, tuple[float, float, float]]:
    """A colour for each name: the fixed order first, then any other name."""
    ordered = [n for n in PALETTE_ORDER if n in names] + sorted(n for n in names if n not in PALETTE_ORDER)
    colours = sns.color_palette("tab10") + sns.color_palette("Dark2") + sns.color_palette("Set1")
    fixed = {n: colours[i] for i, n in enumerate(PALETTE_ORDER)}
    extra = iter(colours[len(PALETTE_ORDER) :])
    return {n: fixed[n] if n in fixed else next(extra) for n in ordered}


def save_figure(fig: plt.Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Save ``fig`` as ``<out_dir>/<name>.png`` and ``.pdf``, published together (atomic, umask permissions)."""
    out_dir = Path(out_dir)
    paths = publish(
        {out_dir / f"{name}.{ext}": lambda tmp, ext=ext: fig.savefig(tmp, format=ext) for ext in ("png", "pdf")}
    )
    plt.close(fig)
    return paths
