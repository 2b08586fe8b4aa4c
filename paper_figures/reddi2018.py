"""Figure: x_t of Adam, AMSGrad, Expectigrad and SGD on Reddi's online and stochastic problems.

Reddi, Kale & Kumar (2018), Figure 1 (the paper's C = 1010 experiments) and Theorems 1 and 3 (C = 3); Daley & Amato
(2020) for Expectigrad. Reads the results of the study :mod:`studies.reddi2018`.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import pandas as pd

from paper_figures._style import optimizer_palette, save_figure
from paper_figures.report import FigureOutput, read_results

STUDY = "reddi2018"
TITLE = "Reddi's counterexample: Adam vs AMSGrad, Expectigrad, SGD (Reddi et al. 2018)"
COLUMNS = ("family", "optimizer", "problem", "stream", "step", "steps", "alpha", "quantity", "value")
_FAMILY_NAMES = {
    "theory": "C = 3 (Theorems 1, 3)",
    "paper": "C = 1010, ℓ = −10 (paper's Fig. 1)",
}
#: (family, optimizer) -> the limit of x_t the sources report, and where.
_REPORTED = {
    ("theory", "Adam (β₁=0, β₂=1/(1+C²))"): (1.0, "Reddi et al. Thm. 1 and 3"),
    ("paper", "Adam"): (1.0, "Reddi et al. Fig. 1"),
    ("paper", "AMSGrad"): (-1.0, "Reddi et al. Fig. 1"),
    ("theory", "AMSGrad"): (-1.0, "Reddi et al. Thm. 4 (convergence)"),
    ("paper", "Expectigrad"): (-1.0, "Daley & Amato 2020"),
    ("theory", "Expectigrad"): (-1.0, "Daley & Amato 2020"),
    ("paper", "SGD"): (-1.0, "projected OGD is no-regret (Zinkevich 2003)"),
    ("theory", "SGD"): (-1.0, "projected OGD is no-regret (Zinkevich 2003)"),
}


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per family, problem and optimizer: mean x over the last 10% of the steps (all streams), beside the sources."""
    rows = []
    for (family, problem, name), runs in frame.groupby(["family", "problem", "optimizer"], sort=False):
        steps = runs["steps"].iloc[0]
        late = runs[runs["step"] >= 0.9 * steps]
        reported, source = _REPORTED.get((family, name), (float("nan"), "no claim"))
        ours = float(late["value"].mean())
        rows.append(
            {
                "problem": f"{problem}, {_FAMILY_NAMES[family]}",
                "optimizer": name,
                "steps": int(steps),
                "x_final (ours, mean of last 10%)": ours,
                "x_final (reported)": reported,
                "source": source,
                "same side": "—" if pd.isna(reported) else ("yes" if ours * reported > 0 else "NO"),
            }
        )
    return pd.DataFrame(rows)


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """One panel per (family, problem): x_t against t; stochastic panels show the mean and quartiles over seeds."""
    families = [f for f in _FAMILY_NAMES if f in set(frame["family"])]
    problems = ["online", "stochastic"]
    palette = optimizer_palette(sorted(frame["optimizer"].unique()))
    fig, axes = plt.subplots(len(families), 2, figsize=(10, 3.4 * len(families)), squeeze=False)
    for i, family in enumerate(families):
        for j, problem in enumerate(problems):
            ax = axes[i, j]
            panel = frame[(frame["family"] == family) & (frame["problem"] == problem)]
            for name, runs in panel.groupby("optimizer", sort=False):
                by_step = runs.groupby("step")["value"]
                mean, low, high = by_step.mean(), by_step.quantile(0.25), by_step.quantile(0.75)
                ax.plot(mean.index, mean, color=palette[name], label=name, lw=1.4)
                if problem == "stochastic":
                    ax.fill_between(mean.index, low, high, color=palette[name], alpha=0.15, lw=0)
            ax.set_xscale("symlog", linthresh=10)
            ax.set_ylim(-1.08, 1.08)
            ax.axhline(-1, color="0.4", ls=":", lw=1)
            ax.set_title(f"{problem}, {_FAMILY_NAMES[family]}")
            ax.set_xlabel("iteration t")
            ax.set_ylabel("x_t (optimum −1, worst +1)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    images = save_figure(fig, out_dir, "x_over_time")
    adaptive = frame.loc[frame["optimizer"] != "SGD", "alpha"].iloc[0]
    seeds = int(frame[frame["problem"] == "stochastic"]["stream"].nunique())
    steps = "; ".join(
        f"{_FAMILY_NAMES[f]}: {int(n)} steps" for f, n in frame.groupby("family")["steps"].first().items()
    )
    caption = (
        "x_t on F = [−1, 1] (projection by clipping, x₁ = 0) for f_t(x) = Cx every P-th step (online) or with "
        "probability p (stochastic), else ℓx; C = 3, ℓ = −1, P = 3, p = 0.275 (δ = 0.1) and C = 1010, ℓ = −10, "
        f"P = 101, p = 0.01. Step α_t = α/√t with α = {adaptive:g} for the adaptive methods and α = 2/C "
        "(Zinkevich) for SGD. Adam and AMSGrad β = (0.9, 0.99); Theorem 1's Adam β₁ = 0, β₂ = 1/(1+C²); "
        "Expectigrad β = 0.9, sparse counter. "
        f"Stochastic panels: mean (line) and interquartile range (band) over {seeds} seeds; online lines at −1 "
        f"may overlap. {steps}."
    )
    output = FigureOutput(
        STUDY, TITLE, caption, images, {"summary": summary_table(frame)}, frame.attrs.get("notes", [])
    )
    output.write_tables(out_dir)
    return output
