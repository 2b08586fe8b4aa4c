"""Figure: variance of the adaptive learning rate (Liu et al. 2020, Figs. 8-9), training curves and |g| histograms.

Reads the results of the study :mod:`studies.liu2020radam`: the theory data of the paper's Figures 8 and 9, and
Adam, Adam-2k, Adam-eps, Adam + warmup and RAdam on MNIST-1D over a learning-rate sweep.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm

from paper_figures._style import optimizer_palette, save_figure
from paper_figures.report import FigureOutput, read_results

STUDY = "liu2020radam"
TITLE = "RAdam: variance of the adaptive learning rate (Liu et al. 2020)"
COLUMNS = ("kind", "figure", "rho", "step", "quantity", "value", "optimizer", "lr", "epoch", "bin")
_THEORY_NAMES = {"exact": "exact Var[ψ]", "first_order": "first-order approximation", "difference": "difference"}


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per learning rate and optimizer: last-epoch training loss, final test accuracy, and whether it diverged."""
    runs = frame[frame["kind"] == "train"]
    rows = []
    for (lr, name), run in runs.groupby(["lr", "optimizer"], sort=True):
        losses = run.loc[run["quantity"] == "epoch_train_loss"].sort_values("epoch")["value"]
        accuracy = run.loc[run["quantity"] == "test_accuracy"].sort_values("epoch")["value"]
        rows.append(
            {
                "lr": lr,
                "optimizer": name,
                "final train loss": losses.iloc[-1] if len(losses) else np.nan,
                "final test accuracy": accuracy.iloc[-1],
                "diverged": bool((run["quantity"] == "diverged").any()),
            }
        )
    return pd.DataFrame(rows)


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Image 1: the paper's Figs. 8 and 9 from the theory data. Image 2: loss curves per lr, |g| histograms."""
    fig, (ax8, ax9) = plt.subplots(1, 2, figsize=(11, 3.9))
    fig8 = frame[(frame["kind"] == "theory") & (frame["figure"] == "fig8")]
    for quantity in ("exact", "first_order"):
        curve = fig8[fig8["quantity"] == quantity].sort_values("rho")
        ax8.plot(curve["rho"], curve["value"], label=_THEORY_NAMES[quantity], ls="-" if quantity == "exact" else "--")
    ax8.set_xscale("log")
    ax8.set_yscale("log")
    ax8.set_xlabel("degrees of freedom ρ")
    ax8.set_ylabel("Var[ψ] (τ² = 1)")
    ax8.set_title("Fig. 8: variance of the adaptive learning rate")
    ax8.legend(fontsize="small")
    fig9 = frame[(frame["kind"] == "theory") & (frame["figure"] == "fig9")]
    for quantity, label in (("adam", "Adam ψ_t"), ("rectified", "RAdam r_t·ψ_t")):
        curve = fig9[fig9["quantity"] == quantity].sort_values("step")
        ax9.plot(curve["step"], curve["value"], label=label)
    ax9.set_xscale("log")
    ax9.set_yscale("log")
    ax9.set_xlabel("step t")
    ax9.set_ylabel("simulated Var (g ~ N(0, 1), β₂ = 0.999)")
    ax9.set_title("Fig. 9: Adam vs rectified, simulation")
    ax9.legend(fontsize="small")
    fig.tight_layout()
    images = save_figure(fig, out_dir, "variance")

    runs = frame[frame["kind"] == "train"]
    lrs = sorted(runs["lr"].unique())
    names = list(dict.fromkeys(runs["optimizer"]))
    palette = optimizer_palette(names)
    columns = max(len(lrs), len(names))
    fig, axes = plt.subplots(2, columns, figsize=(3.6 * columns, 6.6), squeeze=False)
    for j, lr in enumerate(lrs):
        ax = axes[0, j]
        for name in names:
            curve = runs[(runs["lr"] == lr) & (runs["optimizer"] == name) & (runs["quantity"] == "train_loss")]
            curve = curve.sort_values("step")
            smooth = curve["value"].rolling(8, min_periods=1).mean()
            ax.plot(curve["step"], smooth, color=palette[name], lw=1.2, label=name)
        ax.set_yscale("log")
        ax.set_title(f"γ = {lr:g}")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats, mean of 8 steps)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for j in range(len(lrs), columns):
        axes[0, j].axis("off")
    legend_ax = axes[0, -1] if len(lrs) < columns else axes[0, 0]
    legend_ax.legend(handles, labels, title="optimizer", loc="center" if len(lrs) < columns else "best")
    lr_hist = max(lrs)
    hist = runs[(runs["quantity"] == "grad_hist") & (runs["lr"] == lr_hist)]
    for j, name in enumerate(names):
        ax = axes[1, j]
        table = hist[hist["optimizer"] == name].pivot_table(index="bin", columns="step", values="value")
        width = np.diff(table.index.to_numpy()).min() if len(table.index) > 1 else 1.0
        edges = np.append(table.index.to_numpy(), table.index.to_numpy()[-1] + width)
        steps = np.append(table.columns.to_numpy(), table.columns.to_numpy()[-1] + 1) - 0.5
        values = np.where(table.to_numpy() > 0, table.to_numpy(), np.nan)
        mesh = ax.pcolormesh(steps, edges, values, cmap="viridis", shading="flat", norm=LogNorm(1e-4, 1.0))
        ax.set_title(f"{name}, γ = {lr_hist:g}")
        ax.set_xlabel("update")
        ax.set_ylabel("log₁₀ |g| of a gradient entry")
        if j == len(names) - 1:
            fig.colorbar(mesh, ax=ax, label="fraction of entries (log; white = none)")
    for j in range(len(names), columns):
        axes[1, j].axis("off")
    fig.tight_layout()
    images += save_figure(fig, out_dir, "training")

    first = runs.iloc[0]
    caption = (
        "Top: exact and first-order variance of the adaptive learning rate ψ (scaled inverse χ², τ² = 1) against ρ "
        "(paper Fig. 8), and the simulated variance of Adam's ψ_t and RAdam's r_t·ψ_t over t for g ~ N(0, 1), "
        "β₂ = 0.999 (paper Fig. 9). Bottom: MLP 256-256 on MNIST-1D, batch 128, one saved initialisation, "
        f"{int(first['epochs'])} epochs; Adam β = (0.9, 0.999), ε = 1e-8; Adam-eps ε = 1e-4; Adam-2k freezes m and θ "
        f"for k = {int(first['warmup'])} steps; Adam + warmup: LinearLR over {int(first['warmup'])} steps; RAdam "
        f"(torch defaults, rectified when ρ_t > 5). Histograms: log₁₀|g| over all gradient entries for the first "
        f"{int(first['hist_steps'])} updates at γ = {lr_hist:g} (entries below 1e-12 in the lowest bin)."
    )
    output = FigureOutput(
        STUDY, TITLE, caption, images, {"summary": summary_table(frame)}, frame.attrs.get("notes", [])
    )
    output.write_tables(out_dir)
    return output
