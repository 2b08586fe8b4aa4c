"""Figure: test accuracy and loss per epoch of SAM, AdamP, Expectigrad and Adam on the 784-784-10 network.

The table is the source report's: test accuracy at every 10% of training, with the report's own numbers after
100 epochs beside ours. Reads the results of the study :mod:`studies.crowded_valley`. The 2D loss surfaces around
the SGD and SAM solutions belong to the flat-minima figure.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from paper_figures._style import optimizer_palette, save_figure
from paper_figures.report import FigureOutput, read_results

STUDY = "crowded_valley"
TITLE = "Crowded-valley trio: SAM, AdamP, Expectigrad and Adam on a 784-784-10 net"
COLUMNS = ("dataset", "hidden_width", "optimizer", "seed", "epochs", "epoch", "quantity", "value")
#: The source report's test accuracy after 100 epochs on MNIST (lr 1e-3, batch 128).
REPORTED = {"SAM": 0.81, "AdamP": 0.69, "Expectigrad": 0.90}


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (mean over seeds) at every 10% of training per optimizer, and the report's final number."""
    acc = frame[frame["quantity"] == "test_accuracy"]
    epochs = int(frame["epochs"].max())
    marks = {f"{10 * k}%": int(round(epochs * k / 10)) for k in range(1, 11)}
    rows = []
    for optimizer, runs in acc.groupby("optimizer", sort=False):
        by_epoch = runs.groupby("epoch")["value"].mean()
        row = {"optimizer": optimizer, "seeds": runs["seed"].nunique()}
        row |= {label: by_epoch.get(epoch, np.nan) for label, epoch in marks.items()}
        final = runs[runs["epoch"] == epochs].groupby("seed")["value"].first()
        row["final sd"] = final.std(ddof=1) if len(final) > 1 else np.nan
        row["report (MNIST, 100 epochs)"] = REPORTED.get(optimizer, np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def projection_table(frame: pd.DataFrame) -> pd.DataFrame:
    """How often AdamP projected a weight tensor (mean over epochs and seeds); empty when AdamP did not run."""
    proj = frame[frame["quantity"] == "adamp_projected_fraction"]
    if proj.empty:
        return pd.DataFrame(columns=["optimizer", "projected fraction of weight-tensor steps"])
    return pd.DataFrame([{"optimizer": "AdamP", "projected fraction of weight-tensor steps": proj["value"].mean()}])


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Two panels (test accuracy, test loss per epoch; mean over seeds with its range) and the tables."""
    curves = frame[frame["quantity"].isin(["test_accuracy", "test_loss"])]
    projections = projection_table(frame)
    never = bool(len(projections)) and projections.iloc[0, 1] == 0
    palette = optimizer_palette(sorted(curves["optimizer"].unique()))
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    panels = (("test_accuracy", "test accuracy (fraction correct)"), ("test_loss", "test loss (cross-entropy, nats)"))
    for ax, (quantity, label) in zip(axes, panels, strict=True):
        panel = curves[curves["quantity"] == quantity]
        sns.lineplot(
            panel,
            x="epoch",
            y="value",
            hue="optimizer",
            style="optimizer",
            palette=palette,
            errorbar=("pi", 100),
            ax=ax,
            legend=True,
        )
        ax.set_xlabel("epoch (passes over the training set)")
        ax.set_ylabel(label)
    axes[0].set_ylim(0.0, 1.02)
    axes[1].set_yscale("log")
    title = "optimizer (AdamP ≡ Adam: no projection)" if never else "optimizer"
    axes[0].legend(title=title, fontsize="small", loc="lower right")
    axes[1].legend().remove()
    dataset = frame["dataset"].iloc[0]
    epochs = int(frame["epochs"].max())
    fig.suptitle(f"{int(frame['hidden_width'].iloc[0])}-wide MLP on {dataset}, batch 128, {epochs} epochs")
    fig.tight_layout()
    images = save_figure(fig, out_dir, "accuracy_curves")
    seeds = frame["seed"].nunique()
    width = int(frame["hidden_width"].iloc[0])
    caption = (
        f"Test accuracy and loss per epoch of one-hidden-layer ReLU networks ({width} hidden units) on {dataset}, "
        f"mini-batches of 128, {epochs} epochs, {seeds} seed(s) from shared initialisations (line: mean over seeds, "
        f"band: range{'; AdamP never projected here, so its curve is Adam’s' if never else ''}). Adam, AdamP "
        "(δ=0.1, wd_ratio=0.1, no decay) and Expectigrad (β=0.9) at lr 1e-3; SAM (ρ=0.05) around plain SGD at lr "
        "1e-3 as in the source report, and at lr 0.1 ('SAM lr=0.1'). The table gives the accuracy at every 10% of "
        "training beside the report's numbers after 100 epochs on MNIST. The 2D surfaces around the SGD and SAM "
        "solutions are in the flat-minima figure."
    )
    tables = {"accuracy_by_progress": accuracy_table(frame), "adamp_projections": projections}
    output = FigureOutput(STUDY, TITLE, caption, images, tables, frame.attrs.get("notes", []))
    output.write_tables(out_dir)
    return output
