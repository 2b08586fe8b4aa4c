"""Figure: distance from a checkpoint under repulsion, plain training and warm restarts; snapshot ensembles.

The Tübingen thesis's checkpoint-distance curves and its ensemble comparison (single model vs snapshot ensemble,
error correlation c/v of E[(mean error)²] = v/k + (k−1)c/k). Reads the results of :mod:`studies.checkpoint_distance`.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from paper_figures._style import save_figure
from paper_figures.report import FigureOutput, read_results

STUDY = "checkpoint_distance"
TITLE = "Checkpoint distance: repulsion vs plain training vs warm restarts, snapshot ensembles"
COLUMNS = ("label", "method", "dataset", "seed", "warmup", "cycle", "cycles", "epoch", "quantity", "value")


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def _palette(labels: list[str]) -> dict[str, tuple[float, ...]]:
    repulsion = [lab for lab in labels if lab.startswith("repulsion")]
    colours = dict(zip(repulsion, sns.color_palette("viridis", len(repulsion)), strict=True))
    return {"plain": (0.45, 0.45, 0.45), "restarts": (0.85, 0.2, 0.15), **colours}


def ensemble_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method (means over seeds): single-model and ensemble accuracy, v, c, c/v and both sides of the formula."""
    k = int(frame["cycles"].iloc[0])
    first = f"epoch{int(frame['warmup'].iloc[0])}"
    rows = []
    for name, runs in frame.groupby("label", sort=False):
        q = runs.groupby("quantity")["value"]
        last = runs[(runs["quantity"] == "distance") & (runs.get("checkpoint") == first)]
        final_distance = last.loc[last.groupby("seed")["step"].idxmax(), "value"].mean() if len(last) else np.nan
        v, c = q.mean().get("v", np.nan), q.mean().get("c", np.nan)
        rows.append(
            {
                "method": name,
                "single-model accuracy": q.mean().get("snapshot_accuracy", np.nan),
                "ensemble accuracy": q.mean().get("ensemble_accuracy", np.nan),
                "v": v,
                "c": c,
                "c/v": q.mean().get("c_over_v", np.nan),
                "E|mean error|²": q.mean().get("ensemble_error", np.nan),
                "v/k + (k−1)c/k": v / k + (k - 1) * c / k,
                f"distance from {first}": final_distance,
            }
        )
    return pd.DataFrame(rows)


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Distance curves from the first checkpoint, accuracy of snapshots vs ensemble, and c/v; plus the table."""
    labels = list(dict.fromkeys(frame["label"]))
    palette = _palette(labels)
    warmup, cycle, cycles = (int(frame[c].iloc[0]) for c in ("warmup", "cycle", "cycles"))
    first = f"epoch{warmup}"
    table = ensemble_table(frame)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.0), gridspec_kw={"width_ratios": [1.5, 1, 1]})
    curves = frame[(frame["quantity"] == "distance") & (frame["checkpoint"] == first)].copy()
    steps_per_epoch = frame.loc[frame["quantity"] == "train_loss"].groupby(["run", "epoch"]).size().max()
    curves["epochs"] = curves["step"] / steps_per_epoch
    sns.lineplot(curves, x="epochs", y="value", hue="label", palette=palette, errorbar=None, ax=axes[0])
    for k in range(1, cycles + 1):
        axes[0].axvline(warmup + k * cycle, color="0.5", lw=0.8, ls=":")
    axes[0].set_xlabel(f"epoch (dotted: snapshots; checkpoint at epoch {warmup})")
    axes[0].set_ylabel(f"distance from the epoch-{warmup} weights (L2)")
    axes[0].legend(title="method", fontsize="x-small")
    bars = table.melt(
        id_vars="method", value_vars=["single-model accuracy", "ensemble accuracy"], var_name="", value_name="acc"
    )
    sns.barplot(bars, y="method", x="acc", hue="", ax=axes[1], palette=["0.65", "0.25"])
    low = np.nanmin(bars["acc"]) if bars["acc"].notna().any() else 0.0
    axes[1].set_xlim(max(0.0, low - 0.05), min(1.0, np.nanmax(bars["acc"]) + 0.02) if bars["acc"].notna().any() else 1)
    axes[1].set_xlabel(f"test accuracy (fraction; ensemble of k={cycles} snapshots)")
    axes[1].set_ylabel("")
    axes[1].legend(fontsize="x-small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2)
    sns.barplot(table, y="method", x="c/v", hue="method", palette=palette, ax=axes[2], legend=False)
    axes[2].set_xlabel("error correlation c/v (1 = no ensemble gain)")
    axes[2].set_ylabel("")
    axes[2].set_yticklabels([])
    if table["c/v"].notna().any():
        axes[2].set_xlim(max(0.0, table["c/v"].min() - 0.05), 1.0)
    dataset = frame["dataset"].iloc[0]
    fig.suptitle(f"MLP on {dataset}: SGD-momentum 0.9, lr 0.05, L2 1e-3")
    fig.tight_layout()
    images = save_figure(fig, out_dir, "checkpoint_distance")
    caption = (
        f"MLP on {dataset}, SGD with momentum 0.9, lr 0.05, L2 1e-3, batch 128; a checkpoint after E={warmup} "
        f"epochs, then {cycles} cycles of {cycle} epochs with a snapshot at the end of each (k={cycles} ensemble "
        "members). plain: constant lr; restarts: cosine annealing with warm restarts per cycle (η_min=0); "
        "repulsion: loss + s·Σ_c exp(−‖θ−θ_c‖²/(2σ²)) over the epoch-E checkpoint and every snapshot so far. "
        f"Left: distance from the epoch-{warmup} weights (mean over {frame['seed'].nunique()} seed(s)). "
        "Middle: mean test accuracy of the single snapshots and of their ensemble (averaged softmax). Right: c/v with "
        "e_i = softmax_i − onehot(y), v = mean E‖e_i‖², c = mean over pairs E⟨e_i, e_j⟩; the table checks "
        "E‖ē‖² = v/k + (k−1)c/k."
    )
    output = FigureOutput(STUDY, TITLE, caption, images, {"ensembles": table}, frame.attrs.get("notes", []))
    output.write_tables(out_dir)
    return output
