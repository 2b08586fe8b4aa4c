"""Figure: sharpness against the stability threshold over full-batch training (Cohen et al. 2021, 2022).

Cohen et al. (2021), Figures 1-2 (sharpness rising to 2/η and hovering there; the training loss decreasing
non-monotonically) and their momentum appendix; Cohen et al. (2022), the preconditioned sharpness of Adam at 38/η.
Reads the results of :mod:`studies.cohen2021eos`; the tables state, run by run and claim by claim, whether our
numbers show the papers' behaviour.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from paper_figures._style import save_figure
from paper_figures.report import FigureOutput, read_results

STUDY = "cohen2021eos"
TITLE = "Edge of stability: sharpness vs the stability threshold (Cohen et al. 2021, 2022)"
COLUMNS = ("dataset", "model", "optimizer", "loss", "lr", "seed", "steps", "step", "quantity", "value")
#: |ratio − 1| within which sharpness counts as "at the edge" (the claims' ±10%).
BAND = 0.1
_KEYS = ["optimizer", "loss", "lr", "seed"]
_LOSS_NAMES = {"mse": "MSE", "cross_entropy": "cross-entropy"}


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def _series(run: pd.DataFrame, quantity: str) -> pd.Series:
    rows = run[run["quantity"] == quantity]
    return rows.groupby("step")["value"].first().sort_index()


def run_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per run: threshold, first step with ratio ≥ 1, the share of later measurements within ±10%, loss behaviour.

    The same share is given from the first measurement at ≥ 90% of the threshold (a run can hover just below it).
    After the first crossing: ``within ±10%`` is the fraction of measurements with |ratio − 1| ≤ 0.1;
    ``loss increases`` counts the steps whose training loss exceeds the previous step's; ``loss falls quarter to
    quarter`` says whether the mean training loss of each quarter of the remaining steps is below the previous
    quarter's.
    """
    rows = []
    for key, run in frame.groupby(_KEYS, sort=False):
        ratio = _series(run, "sharpness_ratio")
        loss = _series(run, "train_loss")
        crossed = ratio.index[ratio >= 1.0]
        first = int(crossed[0]) if len(crossed) else None
        near = ratio.index[ratio >= 1.0 - BAND]
        row = dict(zip(_KEYS, key, strict=True))
        row["threshold"] = _series(run, "stability_threshold").iloc[-1] if len(ratio) else np.nan
        row["first crossing step"] = first
        row["max ratio"] = ratio.max()
        row["first step at ≥ 90%"] = int(near[0]) if len(near) else None
        after_near = ratio[ratio.index >= near[0]] if len(near) else ratio.iloc[:0]
        row["within ±10% after reaching 90%"] = float(((after_near - 1).abs() <= BAND).mean()) if len(near) else np.nan
        row["diverged"] = bool((run["quantity"] == "diverged").any())
        if first is None:
            row |= {"within ±10% after crossing": np.nan, "mean ratio after crossing": np.nan}
            row |= {"loss increases after crossing": np.nan, "loss falls quarter to quarter": np.nan}
        else:
            after = ratio[ratio.index >= first]
            row["within ±10% after crossing"] = float(((after - 1).abs() <= BAND).mean())
            row["mean ratio after crossing"] = float(after.mean())
            tail = loss[loss.index >= first]
            row["loss increases after crossing"] = int((tail.diff() > 0).sum())
            quarters = [chunk.mean() for chunk in np.array_split(tail.to_numpy(), 4)]
            row["loss falls quarter to quarter"] = bool(np.all(np.diff(quarters) < 0))
        row["final train loss"] = loss.iloc[-1] if len(loss) else np.nan
        products = run[(run["quantity"] == "lanczos_products") & (run["operator"] == "hessian")]
        for start in ("cold", "warm"):
            chosen = products.loc[products["start"] == start, "value"]
            row[f"Hessian products per measurement ({start})"] = chosen.mean() if len(chosen) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _setting(optimizer: str, loss: str) -> str:
    what = "preconditioned sharpness vs 38/η" if optimizer == "Adam" else "sharpness vs its threshold"
    return f"{optimizer}, {_LOSS_NAMES.get(loss, loss)}: {what}"


def claims_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and loss, the papers' three claims, our numbers over the runs, and whether they agree."""
    rows = []
    for (optimizer, loss), group in runs.groupby(["optimizer", "loss"], sort=False):
        paper = "Cohen et al. 2022" if optimizer == "Adam" else "Cohen et al. 2021"
        crossed = group[group["first crossing step"].notna()]
        n, k = len(group), len(crossed)

        setting = _setting(optimizer, loss)

        def claim(text: str, ours: str, agrees: bool, paper: str = paper, setting: str = setting) -> None:
            rows.append({"paper": paper, "setting": setting, "claim": text, "ours": ours, "agrees": agrees})

        within = crossed["within ±10% after crossing"]
        claim(
            "sharpness reaches the threshold and stays within ±10% after it first crosses it",
            f"{k}/{n} runs cross (max ratio {', '.join(f'{r:.3g}' for r in group['max ratio'])}); within ±10% after: "
            + (", ".join(f"lr={lr:g}: {w:.0%}" for lr, w in zip(crossed["lr"], within, strict=True)) or "—"),
            k == n and bool((within >= 0.9).all()),
        )
        increases = crossed["loss increases after crossing"]
        claim(
            "the training loss is non-monotone at the edge",
            ", ".join(f"lr={lr:g}: {int(c)} increases" for lr, c in zip(crossed["lr"], increases, strict=True))
            or "no run at the edge",
            k > 0 and bool((increases > 0).all()),
        )
        falls = crossed["loss falls quarter to quarter"]
        claim(
            "the training loss keeps decreasing over long horizons",
            ", ".join(f"lr={lr:g}: {bool(f)}" for lr, f in zip(crossed["lr"], falls, strict=True))
            or "no run at the edge",
            k > 0 and bool(falls.astype(bool).all()),
        )
    return pd.DataFrame(rows)


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Three rows (GD with MSE, GD with cross-entropy, heavy ball and Adam) of sharpness and training loss."""
    panels = [
        ("GD, MSE", (frame["optimizer"] == "GD") & (frame["loss"] == "mse"), "sharpness"),
        ("GD, cross-entropy", (frame["optimizer"] == "GD") & (frame["loss"] == "cross_entropy"), "sharpness"),
        ("heavy ball (β=0.9) and Adam (β₁=0.9), MSE", frame["optimizer"].isin(["Momentum", "Adam"]), "ratio"),
    ]
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 3.6 * len(panels)), squeeze=False)
    for (title, mask, kind), (left, right) in zip(panels, axes, strict=True):
        subset = frame[mask]
        colours = iter(sns.color_palette("tab10"))
        for key, run in subset.groupby(_KEYS, sort=False):
            optimizer, loss, lr, _ = key
            colour = next(colours)
            label = f"{optimizer} η={lr:g}" if kind == "ratio" else f"η={lr:g}"
            if kind == "sharpness":
                sharp = _series(run, "sharpness")
                left.plot(sharp.index, sharp.to_numpy(), color=colour, label=label)
                left.axhline(_series(run, "stability_threshold").iloc[-1], color=colour, ls="--", lw=0.9)
            else:
                ratio = _series(run, "sharpness_ratio")
                left.plot(ratio.index, ratio.to_numpy(), color=colour, label=label)
            train_loss = _series(run, "train_loss")
            right.plot(train_loss.index, train_loss.to_numpy(), color=colour, lw=0.8, label=label)
        if kind == "ratio":
            left.axhline(1.0, color="0.2", ls="--", lw=0.9)
            left.axhspan(1 - BAND, 1 + BAND, color="0.85", zorder=0)
            left.set_ylabel("sharpness / threshold\n(Adam: λmax(P⁻¹H) / (38/η))")
        else:
            left.set_ylabel("sharpness λmax(H)\n(dashed: 2/η)")
        left.set_title(title, fontsize="small")
        right.set_title(f"{title}: training loss", fontsize="small")
        right.set_yscale("log")
        right.set_ylabel("training loss")
        for ax in (left, right):
            ax.set_xlabel("step")
            if ax.lines:
                ax.legend(fontsize="x-small")
    dataset, model = frame["dataset"].iloc[0], frame["model"].iloc[0]
    n_train, steps = int(frame["n_train_used"].iloc[0]), int(frame["steps"].max())
    fig.suptitle(f"Full-batch training of a {model} on {n_train} {dataset} examples, {steps} steps")
    fig.tight_layout()
    images = save_figure(fig, out_dir, "cohen2021eos")
    runs = run_table(frame)
    caption = (
        f"Full-batch training of a {model} on a fixed subset of {n_train} {dataset} examples for {steps} steps, "
        "from one initialisation. Sharpness λmax(H) of the training loss (float64 Lanczos warm-started from the "
        f"previous eigenvector, every {int(frame['every'].iloc[0])} steps) against 2/η (dashed) for GD with the "
        "half squared error and cross-entropy; bottom: the ratio of the sharpness to the threshold for heavy ball "
        "((2+2β)/η, β=0.9) and of Adam's preconditioned sharpness λmax(P⁻¹H) to 38/η (β₁=0.9, P from Adam's "
        "second moment), the grey band ±10%. Cohen et al. (2021, 2022) report progressive sharpening up to the "
        "threshold, then sharpness hovering at it while the loss decreases non-monotonically."
    )
    tables = {"eos_runs": runs, "eos_claims": claims_table(runs)}
    output = FigureOutput(STUDY, TITLE, caption, images, tables, frame.attrs.get("notes", []))
    output.write_tables(out_dir)
    return output
