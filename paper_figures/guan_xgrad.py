"""Figure: XGrad's best accuracy and its time and memory cost against the base optimizer, for s = 0..4.

Guan et al. (2024), the accuracy tables and the per-epoch cost comparison (Section 5). Reads the results of the
study :mod:`studies.guan_xgrad`; the paper's reported overheads sit beside ours in the overhead table.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from paper_figures._style import optimizer_palette, save_figure
from paper_figures.reference import read_reference, reference_note, side_by_side
from paper_figures.report import FigureOutput, read_results

STUDY = "guan_xgrad"
TITLE = "XGrad weight prediction (Guan et al. 2024): accuracy, time and memory"
COLUMNS = ("dataset", "base", "steps", "seed", "epochs", "epoch", "quantity", "value")
#: Guan et al.'s per-epoch overhead of XGrad (s = 1) over the base: (time %, memory %).
REPORTED = {"SGDM": (5.67, 1.8), "Adam": (11.21, 5.0)}
#: Guan et al.'s gain of the best LeNet test accuracy on Fashion-MNIST from weight prediction (s = 1), in points.
REPORTED_GAIN = {"Adam": 0.71, "AdaM3": 0.89}
#: Display names of the bases in the shared palette (SGDM is the palette's "Momentum").
_PALETTE_NAME = {"SGDM": "Momentum"}


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per run: best test accuracy, fastest epoch's wall seconds, CPU seconds per step and epoch, peak memory.

    The fastest epoch (the minimum over epochs, as ``timeit`` takes the minimum over repeats) is the cost least
    disturbed by other processes on a shared machine; CPU seconds per epoch are the median CPU time of a step in
    the fastest epoch times the number of steps of an epoch (read from the per-step ``train_loss`` rows).
    """
    rows = []
    for (base, steps, seed), run in frame.groupby(["base", "steps", "seed"], sort=False):
        trained = run[run["epoch"] > 0]
        per_step = trained.loc[trained["quantity"] == "cpu_seconds_per_step", "value"].min()
        steps_per_epoch = (trained.loc[trained["quantity"] == "train_loss", "epoch"] == 1).sum()
        rows.append(
            {
                "base": base,
                "steps": int(steps),
                "seed": seed,
                "best_accuracy": run.loc[run["quantity"] == "test_accuracy", "value"].max(),
                "seconds_per_epoch": trained.loc[trained["quantity"] == "seconds", "value"].min(),
                "cpu_seconds_per_step": per_step,
                "cpu_seconds_per_epoch": per_step * steps_per_epoch if steps_per_epoch else np.nan,
                "peak_memory_bytes": run.loc[run["quantity"] == "peak_memory_bytes", "value"].max(),
                "diverged": bool((run["quantity"] == "diverged").any()),
            }
        )
    return pd.DataFrame(rows)


def overhead_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per base and s > 0: % change of wall time per epoch, CPU time per step and peak memory over s = 0."""
    means = runs.groupby(["base", "steps"], sort=False)[
        ["best_accuracy", "seconds_per_epoch", "cpu_seconds_per_step", "peak_memory_bytes"]
    ].mean()
    rows = []
    for (base, steps), row in means.iterrows():
        if steps == 0 or (base, 0) not in means.index:
            continue
        ref = means.loc[(base, 0)]
        paper_time, paper_memory = REPORTED.get(base, (np.nan, np.nan)) if steps == 1 else (np.nan, np.nan)
        rows.append(
            {
                "base": base,
                "s": steps,
                "accuracy change (points)": 100 * (row["best_accuracy"] - ref["best_accuracy"]),
                "wall time/epoch %": 100 * (row["seconds_per_epoch"] / ref["seconds_per_epoch"] - 1),
                "CPU time/step %": 100 * (row["cpu_seconds_per_step"] / ref["cpu_seconds_per_step"] - 1),
                "peak memory %": 100 * (row["peak_memory_bytes"] / ref["peak_memory_bytes"] - 1),
                "paper time %": paper_time,
                "paper memory %": paper_memory,
            }
        )
    return pd.DataFrame(rows)


def accuracy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Best test accuracy (mean over seeds), one row per base, one column per s (s=0: the base alone)."""
    table = runs.pivot_table(index="base", columns="steps", values="best_accuracy", aggfunc="mean", sort=False)
    table.columns = [f"s={s}" if s else "base (s=0)" for s in table.columns]
    return table.reset_index()


def verdict(gain: float, spread: float, paper_gain: float, seeds: int) -> str:
    """Whether our mean gain from prediction agrees with the paper's (positive) gain, beyond the seeds' spread."""
    if np.isnan(paper_gain) or np.isnan(gain):
        return ""
    if seeds > 1 and abs(gain) <= spread:
        return "inconclusive: within the seeds' spread"
    outcome = "agrees: prediction helps" if (gain > 0) == (paper_gain > 0) else "contradicts: prediction hurts"
    return outcome if seeds > 1 else f"{outcome} (one seed: no spread)"


def paper_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Per base: best test accuracy without (s=0) and with (s=1) prediction, the gain, and the time overhead.

    Mean and spread (half the range) over seeds, in points; ``paper gain`` is Guan et al.'s LeNet/Fashion-MNIST gain
    and ``paper time %`` their per-epoch GPU overhead, where they report one. Time: wall seconds of the fastest epoch
    and CPU seconds per epoch (the steadier of the two on a shared machine), each averaged over seeds.
    """
    runs = per_run(frame)
    values = ["best_accuracy", "seconds_per_epoch", "cpu_seconds_per_epoch"]
    rows = []
    for base, group in runs[runs["steps"].isin([0, 1])].groupby("base", sort=False):
        wide = group.pivot_table(index="seed", columns="steps", values=values, dropna=False)
        if 0 not in wide["best_accuracy"] or 1 not in wide["best_accuracy"]:
            continue
        accuracy = 100 * wide["best_accuracy"]
        gain = (accuracy[1] - accuracy[0]).dropna()
        wall, cpu = wide["seconds_per_epoch"], wide["cpu_seconds_per_epoch"]
        spread = (gain.max() - gain.min()) / 2
        paper_gain = REPORTED_GAIN.get(base, np.nan)
        rows.append(
            {
                "base": base,
                "seeds": len(gain),
                "best accuracy s=0 (%)": accuracy[0].mean(),
                "spread s=0": (accuracy[0].max() - accuracy[0].min()) / 2,
                "best accuracy s=1 (%)": accuracy[1].mean(),
                "spread s=1": (accuracy[1].max() - accuracy[1].min()) / 2,
                "gain (points)": gain.mean(),
                "gain spread (points)": spread,
                "paper gain (points)": paper_gain,
                "verdict": verdict(gain.mean(), spread, paper_gain, len(gain)),
                "seconds/epoch s=0": wall[0].mean(),
                "seconds/epoch s=1": wall[1].mean(),
                "time overhead %": 100 * (wall[1] / wall[0] - 1).dropna().mean(),
                "CPU s/epoch s=0": cpu[0].mean(),
                "CPU s/epoch s=1": cpu[1].mean(),
                "CPU time overhead %": 100 * (cpu[1] / cpu[0] - 1).dropna().mean(),
                "paper time %": REPORTED.get(base, (np.nan, np.nan))[0],
            }
        )
    return pd.DataFrame(rows)


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Three panels against s: best accuracy, CPU-time overhead per step, peak-memory overhead; plus the tables."""
    runs = per_run(frame)
    overhead = overhead_table(runs)
    bases = list(dict.fromkeys(runs["base"]))
    colours = optimizer_palette([_PALETTE_NAME.get(b, b) for b in bases])
    palette = {b: colours[_PALETTE_NAME.get(b, b)] for b in bases}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    sns.lineplot(runs, x="steps", y="best_accuracy", hue="base", palette=palette, marker="o", ax=axes[0])
    axes[0].set_ylabel("best test accuracy (fraction correct)")
    axes[0].set_xlabel("prediction steps s (0 = base optimizer)")
    for ax, column, label in (
        (axes[1], "CPU time/step %", "CPU time per step vs base (%)"),
        (axes[2], "peak memory %", "peak tensor memory vs base (%)"),
    ):
        if len(overhead):
            sns.lineplot(overhead, x="s", y=column, hue="base", palette=palette, marker="o", ax=ax, legend=False)
        ax.axhline(0.0, color="0.4", lw=0.8)
        ax.set_xlabel("prediction steps s")
        ax.set_ylabel(label)
    for base, (time_pct, memory_pct) in REPORTED.items():
        if base in palette:
            axes[1].scatter([1], [time_pct], marker="*", s=120, color=palette[base], edgecolor="k", zorder=3)
            axes[2].scatter([1], [memory_pct], marker="*", s=120, color=palette[base], edgecolor="k", zorder=3)
    axes[1].set_title("★ = paper (s=1, GPU)", fontsize="small")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].legend().remove()
    fig.legend(handles, labels, title="base optimizer", loc="lower center", ncol=len(labels), fontsize="small")
    for ax in axes:
        ax.set_xticks(sorted(runs["steps"].unique()) if ax is axes[0] else sorted(runs["steps"].unique())[1:])
    dataset, epochs = frame["dataset"].iloc[0], int(frame["epochs"].max())
    fig.suptitle(f"LeNet-5 on {dataset}, batch 128, {epochs} epochs")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    images = save_figure(fig, out_dir, "xgrad")
    caption = (
        f"XGrad (weights predicted s steps ahead before each forward pass) around six base optimizers, LeNet-5 on "
        f"{dataset}, mini-batches of 128, {epochs} epochs, {runs['seed'].nunique()} seed(s) from shared "
        "initialisations. SGDM lr 0.05 momentum 0.9; RMSprop lr 1e-3; Adam lr 1e-3; AdamW lr 1e-3 decay 0.01; "
        "AdaBelief and AdaM3 lr 1e-3, ε=1e-16. Left: best test accuracy over epochs. Middle: process CPU time of a "
        "training step (median within an epoch, fastest epoch) relative to the base (s=0). Right: peak bytes of "
        "tensors allocated by training (model, gradients, optimizer state, activations; CPU: torch.profiler "
        "allocation events, CUDA: max_memory_allocated) relative to the base: XGrad keeps one copy of θ_t during "
        "the forward/backward pass (and, around RMSprop, the last gradient), so the bases with equal state overlap. "
        "Stars: the paper's overheads of s=1 per epoch on a GPU (+5.67% time and +1.8% memory vs SGDM, +11.21% and "
        "+5.0% vs Adam). Wall time of the fastest epoch is in the table; on a shared CPU it is noisy."
    )
    scale = frame.attrs.get("scale", "this run")
    reference = read_reference(STUDY)
    tables = {
        "best_accuracy": accuracy_table(runs),
        "overhead": overhead,
        "paper_vs_ours": side_by_side(
            paper_comparison(frame),
            reference,
            "base",
            ["paper gain (points)", "paper time %"],
            [
                "best accuracy s=0 (%)",
                "best accuracy s=1 (%)",
                "gain (points)",
                "gain spread (points)",
                "verdict",
                "seeds",
                "CPU time overhead %",
            ],
            scale,
        ),
    }
    notes = [*frame.attrs.get("notes", []), reference_note(STUDY, reference)]
    output = FigureOutput(STUDY, TITLE, caption, images, tables, notes)
    output.write_tables(out_dir)
    return output
