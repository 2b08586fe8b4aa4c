"""Figure: training loss per epoch of SGD, momentum, Adagrad, RMSprop and Adam, without and with dropout.

Kingma & Ba (2015), Figures 2 and 3; the table (seconds per epoch, lowest training loss) is the one the student
reproductions of the paper report. Reads the results of the study :mod:`studies.kingma2015adam`.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from paper_figures._style import optimizer_palette, save_figure
from paper_figures.report import FigureOutput, read_results

STUDY = "kingma2015adam"
TITLE = "Adam paper reproduction (Kingma & Ba 2015)"
COLUMNS = ("model", "dataset", "optimizer", "dropout", "epoch", "quantity", "value")
_MODEL_NAMES = {"mlp": "MLP 1000-1000", "adam_cnn": "CNN c64-c64-c128-1000"}


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model, dropout and optimizer: mean seconds per epoch, lowest epoch training loss, final test accuracy."""
    keys = ["model", "dataset", "dropout", "optimizer"]
    wide = frame.pivot_table(index=[*keys, "epoch"], columns="quantity", values="value", aggfunc="first")
    rows = []
    for key, runs in wide.groupby(level=keys):
        trained = runs[runs.index.get_level_values("epoch") > 0]
        diverged = "diverged" in runs.columns and runs["diverged"].notna().any()
        rows.append(
            dict(
                zip(keys, key, strict=True),
                seconds_per_epoch=trained["seconds"].mean(),
                lowest_train_loss=trained["epoch_train_loss"].min(),
                final_test_accuracy=runs["test_accuracy"].dropna().iloc[-1],
                diverged=diverged,
            )
        )
    return pd.DataFrame(rows)


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Loss curves (log y): one row per model, one column per dropout setting; plus the summary table."""
    curves = frame[(frame["quantity"] == "epoch_train_loss")].copy()
    curves["dropout"] = curves["dropout"].map(lambda p: "no dropout" if p == 0 else f"dropout p={p:g}")
    curves["model"] = curves["model"].map(_MODEL_NAMES)
    models = list(dict.fromkeys(curves["model"]))
    columns = sorted(curves["dropout"].unique(), key=lambda s: s != "no dropout")
    fig, axes = plt.subplots(len(models), len(columns), figsize=(4.2 * len(columns), 3.3 * len(models)), squeeze=False)
    palette = optimizer_palette(sorted(curves["optimizer"].unique()))
    for i, model in enumerate(models):
        for j, column in enumerate(columns):
            ax = axes[i, j]
            panel = curves[(curves["model"] == model) & (curves["dropout"] == column)]
            sns.lineplot(panel, x="epoch", y="value", hue="optimizer", palette=palette, ax=ax, legend=(i, j) == (0, 0))
            ax.set_yscale("log")
            dataset = panel["dataset"].iloc[0] if len(panel) else ""
            ax.set_title(f"{model} on {dataset}, {column}")
            ax.set_xlabel("epoch (passes over the training set)")
            ax.set_ylabel("training loss (cross-entropy, nats)")
    axes[0, 0].legend(title="optimizer", fontsize="small")
    fig.tight_layout()
    images = save_figure(fig, out_dir, "loss_curves")
    setups = frame.drop_duplicates(["model", "dataset", "epochs"])
    setup_text = "; ".join(
        f"{_MODEL_NAMES[m]} on {d} for {int(e)} epochs" for m, d, e in setups[["model", "dataset", "epochs"]].values
    )
    caption = (
        f"Training loss per epoch from one saved initialisation, mini-batches of 128 ({setup_text}). "
        "Adam α=1e-3, β=(0.9, 0.999); SGD 0.1; momentum 0.9 at 0.01; Adagrad 0.01; RMSprop 1e-3; dropout p=0.5."
    )
    output = FigureOutput(
        STUDY, TITLE, caption, images, {"summary": summary_table(frame)}, frame.attrs.get("notes", [])
    )
    output.write_tables(out_dir)
    return output
