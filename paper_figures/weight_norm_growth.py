"""Figure: norm growth and effective step size of scale-invariant weights under six optimizers (Heo et al. 2021).

Heo et al. (2021), Figure 2 and Section 2: momentum makes the norm of scale-invariant weights grow faster and the
effective step shrink faster; projection (SGDP, AdamP) prevents it. Reads the results of
:mod:`studies.weight_norm_growth`.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from paper_figures._style import optimizer_palette, save_figure
from paper_figures.report import FigureOutput, read_results

STUDY = "weight_norm_growth"
TITLE = "Weight-norm growth of scale-invariant weights (Heo et al. 2021)"
COLUMNS = ("dataset", "optimizer", "seed", "epochs", "step", "epoch", "quantity", "value", "param", "scale_invariant")


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def _invariant(frame: pd.DataFrame, quantity: str) -> pd.DataFrame:
    rows = frame[(frame["quantity"] == quantity) & (frame["scale_invariant"].astype(str) == "True")]
    return rows.groupby(["optimizer", "seed", "step"], sort=False)["value"].mean().reset_index()


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer (means over seeds): final ‖w‖/‖w₀‖ and effective step of the conv weights, final accuracy."""
    growth = _invariant(frame, "weight_norm_growth")
    steps = _invariant(frame, "effective_step")
    acc = frame[frame["quantity"] == "test_accuracy"]
    rows = []
    for optimizer in dict.fromkeys(frame["optimizer"]):
        g = growth[growth["optimizer"] == optimizer]
        s = steps[steps["optimizer"] == optimizer]
        a = acc[acc["optimizer"] == optimizer]
        first_step, last_step = (s.groupby("seed")["value"].first(), s.groupby("seed")["value"].last())
        rows.append(
            {
                "optimizer": optimizer,
                "final ‖w‖/‖w₀‖ (conv, mean)": g.groupby("seed")["value"].last().mean(),
                "first effective step": first_step.mean(),
                "final effective step": last_step.mean(),
                "effective step final/first": (last_step / first_step).mean(),
                "final test accuracy": a.loc[a.groupby("seed")["epoch"].idxmax(), "value"].mean(),
                "diverged": bool((frame.loc[frame["optimizer"] == optimizer, "quantity"] == "diverged").any()),
            }
        )
    return pd.DataFrame(rows)


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Three panels: mean norm growth and effective step of the conv weights over training, final growth per layer."""
    steps_per_epoch = frame.loc[frame["quantity"] == "train_loss"].groupby(["run", "epoch"]).size().max()
    palette = optimizer_palette(sorted(frame["optimizer"].unique()))
    order = list(dict.fromkeys(frame["optimizer"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    for ax, quantity, label in (
        (axes[0], "weight_norm_growth", "‖w_t‖ / ‖w_0‖ (mean over conv layers)"),
        (axes[1], "effective_step", "‖Δw‖/‖w‖ per step (mean over conv layers)"),
    ):
        data = _invariant(frame, quantity)
        data["epoch"] = data["step"] / steps_per_epoch
        sns.lineplot(
            data, x="epoch", y="value", hue="optimizer", hue_order=order, palette=palette, errorbar=None, ax=ax
        )
        ax.set_xlabel("epoch (passes over the training set)")
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    axes[1].set_title("effective step size", fontsize="small")
    axes[0].set_title("norm growth", fontsize="small")
    final = frame[(frame["quantity"] == "weight_norm_growth") & (frame["scale_invariant"].astype(str) == "True")]
    final = final.loc[final.groupby(["optimizer", "seed", "param"])["step"].idxmax()].copy()
    final["layer"] = final["param"].str.replace(".weight", "", regex=False).str.replace("stages.", "block ")
    layers = list(dict.fromkeys(final.sort_index()["layer"]))
    sns.barplot(
        final, x="layer", y="value", hue="optimizer", order=layers, hue_order=order, palette=palette, ax=axes[2]
    )
    axes[2].axhline(1.0, color="0.3", lw=0.8)
    axes[2].set_xlabel("convolution (scale-invariant weight)")
    axes[2].set_ylabel("final ‖w‖ / ‖w_0‖")
    axes[2].tick_params(axis="x", rotation=45, labelsize="x-small")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        ax.legend().remove()
    fig.legend(handles, labels, title="optimizer", loc="lower center", ncol=len(labels), fontsize="small")
    dataset, epochs = frame["dataset"].iloc[0], int(frame["epochs"].max())
    fig.suptitle(f"BatchNorm ResNet on {dataset}, batch 128, {epochs} epochs")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    images = save_figure(fig, out_dir, "weight_norm_growth")
    caption = (
        f"Norms of the scale-invariant convolution weights (each followed by BatchNorm) of a ResNet with BatchNorm on "
        f"{dataset}, mini-batches of 128, {epochs} epochs, {frame['seed'].nunique()} seed(s) from one "
        "initialisation. SGD lr 0.1; momentum and SGDP lr 0.1, μ=0.9; Adam and AdamP lr 1e-3; AdamW lr 1e-3 with "
        "decoupled decay 0.01; SGDP/AdamP δ=0.1, wd_ratio=0.1; no other weight decay. Left: norm growth ‖w_t‖/‖w_0‖; "
        "middle: effective step ‖w_t − w_{t−1}‖/‖w_{t−1}‖ (log scale), both averaged over the convolution layers "
        "and logged every quarter epoch; right: final growth per layer. Heo et al. (2021) report the same "
        "qualitative picture on ImageNet: norms grow fastest with momentum, projection keeps them flat."
    )
    tables = {"summary": summary_table(frame)}
    output = FigureOutput(STUDY, TITLE, caption, images, tables, frame.attrs.get("notes", []))
    output.write_tables(out_dir)
    return output
