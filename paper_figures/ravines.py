"""Figure: trajectories, loss curves and per-coordinate step sizes in aligned, rotated and sparse-feature ravines.

The classic ravine picture (Ruder 2016; Duchi et al. 2011 for sparse features). Reads the results of the study
:mod:`studies.ravines`.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from paper_figures._style import optimizer_palette, save_figure
from paper_figures.report import FigureOutput, read_results

STUDY = "ravines"
TITLE = "Ravines: aligned, rotated and sparse-feature valleys"
COLUMNS = ("problem", "optimizer", "lr", "role", "step", "quantity", "value", "grid_theta1", "grid_theta2")
_PROBLEMS = {
    "aligned": "valley aligned with θ₁",
    "rotated": "valley rotated by 45°",
    "sparse": "valley from a rare feature (mini-batches)",
}
_THRESHOLD = 1e-2


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def _wide(frame: pd.DataFrame) -> pd.DataFrame:
    runs = frame[frame["role"] == "run"]
    return runs.pivot_table(
        index=["problem", "optimizer", "lr", "step"], columns="quantity", values="value", aggfunc="first"
    ).reset_index()


def sweep_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per problem, optimizer and step size: final loss, late loss (mean of the last 10% of steps), ‖θ − θ*‖."""
    rows = []
    for (problem, name, lr), run in _wide(frame).groupby(["problem", "optimizer", "lr"], sort=False):
        run = run.sort_values("step")
        below = run.loc[run["loss"] <= _THRESHOLD, "step"]
        last = run.iloc[-1]
        rows.append(
            {
                "problem": problem,
                "optimizer": name,
                "lr": lr,
                "final loss": last["loss"],
                "late loss": run.loc[run["step"] >= 0.9 * run["step"].max(), "loss"].mean(),
                "final ‖θ − θ*‖": float(np.hypot(last["theta1"] - 1, last["theta2"] - 1)),
                f"first step with loss ≤ {_THRESHOLD:g}": int(below.iloc[0]) if len(below) else None,
            }
        )
    return pd.DataFrame(rows)


def best_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per problem and optimizer, the step size with the lowest late loss (non-finite losses never win)."""
    sweep = sweep_table(frame)
    sweep = sweep[np.isfinite(sweep["late loss"])]
    best = sweep.loc[sweep.groupby(["problem", "optimizer"], sort=False)["late loss"].idxmin()]
    return best.reset_index(drop=True)


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Two images: trajectories on contour plots, and loss curves with per-coordinate step sizes."""
    best = best_table(frame)
    wide = _wide(frame).merge(best[["problem", "optimizer", "lr"]], on=["problem", "optimizer", "lr"])
    problems = [p for p in _PROBLEMS if p in set(wide["problem"])]
    names = list(dict.fromkeys(wide["optimizer"]))
    palette = optimizer_palette(names)

    fig, axes = plt.subplots(1, len(problems), figsize=(5.2 * len(problems), 4.6), squeeze=False)
    for ax, problem in zip(axes[0], problems, strict=True):
        grid = frame[(frame["role"] == "contour") & (frame["problem"] == problem)]
        surface = grid.pivot_table(index="grid_theta2", columns="grid_theta1", values="value")
        levels = np.geomspace(max(surface.values.min(), 1e-3), surface.values.max(), 16)
        ax.contour(surface.columns, surface.index, surface.values, levels=levels, colors="0.7", linewidths=0.6)
        for name in names:
            run = wide[(wide["problem"] == problem) & (wide["optimizer"] == name)].sort_values("step")
            label = f"{name} (γ={run['lr'].iloc[0]:g})"
            ax.plot(run["theta1"], run["theta2"], color=palette[name], lw=1.3, marker=".", ms=2.5, label=label)
        ax.plot(1, 1, "k*", ms=11)
        start = wide[wide["step"] == 0].iloc[0]
        ax.plot(start["theta1"], start["theta2"], "ko", ms=5)
        ax.set_xlim(surface.columns.min(), surface.columns.max())
        ax.set_ylim(surface.index.min(), surface.index.max())
        ax.set_aspect("equal")
        ax.set_title(_PROBLEMS[problem])
        ax.set_xlabel("θ₁")
        ax.set_ylabel("θ₂")
        ax.legend(fontsize="x-small", loc="lower left")
    fig.tight_layout()
    images = save_figure(fig, out_dir, "trajectories")

    fig, axes = plt.subplots(2, len(problems), figsize=(5.2 * len(problems), 7.2), squeeze=False)
    for j, problem in enumerate(problems):
        for name in names:
            run = wide[(wide["problem"] == problem) & (wide["optimizer"] == name)].sort_values("step")
            axes[0, j].plot(run["step"], run["loss"], color=palette[name], lw=1.4, label=name)
            trained = run[run["step"] > 0]
            for coordinate, style in (("1", "-"), ("2", "--")):
                step = trained[f"delta{coordinate}"].abs().replace(0.0, np.nan)
                axes[1, j].plot(trained["step"], step, color=palette[name], ls=style, lw=1.1)
        axes[0, j].set_yscale("log")
        axes[0, j].set_ylim(bottom=max(axes[0, j].get_ylim()[0], 1e-12))
        axes[0, j].set_title(_PROBLEMS[problem])
        axes[0, j].set_xlabel("iteration")
        axes[0, j].set_ylabel("loss (full objective)")
        axes[1, j].set_yscale("log")
        axes[1, j].set_ylim(bottom=max(axes[1, j].get_ylim()[0], 1e-8))
        axes[1, j].set_xlabel("iteration")
        axes[1, j].set_ylabel("step size per coordinate |Δθᵢ|")
    axes[0, 0].legend(fontsize="small")
    styles = [Line2D([], [], color="0.3", ls="-", label="θ₁"), Line2D([], [], color="0.3", ls="--", label="θ₂")]
    axes[1, 0].legend(handles=styles, fontsize="small", title="coordinate")
    fig.tight_layout()
    images += save_figure(fig, out_dir, "loss_and_step_sizes")

    steps = int(wide["step"].max())
    caption = (
        "Three 2D problems with minimum θ* = (1, 1) (star), start (−2.5, 3) (dot) and Hessian eigenvalues {1, 100}: "
        "a quadratic valley along θ₁, the same valley rotated by 45°, and least squares whose θ₂ feature is nonzero "
        "in about 1% of 4000 examples (mini-batches of 10; noise floor ≈ 0.005). torch.optim SGD, momentum "
        "(μ = 0.9), Adagrad, RMSprop (α = 0.99) and Adam (β = (0.9, 0.999)); each method's step size γ is the best "
        f"of four per problem (legend; all runs in the sweep table). {steps} iterations, float64. Step size per "
        "coordinate: |Δθᵢ| of each update (θ₁ solid, θ₂ dashed; zero steps are not drawn). Axes stop at 1e-12 "
        "(loss) and 1e-8 (steps)."
    )
    tables = {"best": best_table(frame)}
    if frame.loc[frame["role"] == "run"].groupby(["problem", "optimizer"])["lr"].nunique().max() > 1:
        tables["sweep"] = sweep_table(frame)
    output = FigureOutput(STUDY, TITLE, caption, images, tables, frame.attrs.get("notes", []))
    output.write_tables(out_dir)
    return output
