"""Figure: momentum GD, + weight decay and SGDP on the scale-invariant 3D Rosenbrock function.

Heo et al. (2021), AdamP, Figure 3: trajectories (on the sphere and in the angle plane) and the norm r = ‖w‖ over
200 iterations. Reads the results of the study :mod:`studies.heo2021adamp`.
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paper_figures._style import optimizer_palette, save_figure
from paper_figures.report import FigureOutput, read_results

STUDY = "heo2021adamp"
TITLE = "Scale-invariant 3D Rosenbrock: momentum, weight decay, projection (Heo et al. 2021)"
COLUMNS = ("method", "role", "lr", "momentum", "weight_decay", "step", "quantity", "value", "grid_psi", "grid_phi")
#: method -> (what the paper reports, its value).
_REPORTED = {"Momentum": ("final r", 3.16), "Momentum + WD": ("peak r", 2.53), "SGDP": ("final r", 1.12)}
_COLOURS = {"Momentum": "Momentum", "Momentum + WD": "AdamW", "SGDP": "SGDP"}
_LINES = {"Momentum": dict(lw=3.0, ls="-"), "Momentum + WD": dict(lw=1.6, ls="--"), "SGDP": dict(lw=1.4, ls="-")}


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def _wide(frame: pd.DataFrame) -> pd.DataFrame:
    runs = frame[frame["role"].isin(["main", "sweep"])]
    return runs.pivot_table(
        index=["role", "method", "lr", "weight_decay", "step"], columns="quantity", values="value", aggfunc="first"
    ).reset_index()


def comparison_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The chosen setting's final and peak r beside the paper's numbers."""
    main = _wide(frame)
    main = main[main["role"] == "main"]
    rows = []
    for method, run in main.groupby("method", sort=False):
        what, reported = _REPORTED[method]
        final, peak = run.sort_values("step")["r"].iloc[-1], run["r"].max()
        rows.append(
            {
                "method": method,
                "lr η": run["lr"].iloc[0],
                "weight decay λ": run["weight_decay"].iloc[0],
                "r final (ours)": final,
                "r peak (ours)": peak,
                "paper reports": what,
                "paper": reported,
                "ours/paper": (peak if what == "peak r" else final) / reported,
                "h final (ours)": run.sort_values("step")["h"].iloc[-1],
            }
        )
    return pd.DataFrame(rows)


def sweep_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Final and peak r and final h for every (method, η, λ) run, the search for the paper's setting."""
    wide = _wide(frame)
    last = wide.sort_values("step").groupby(["method", "lr", "weight_decay"])
    table = last.agg(r_final=("r", "last"), r_peak=("r", "max"), h_final=("h", "last")).reset_index()
    return table.sort_values(["method", "weight_decay", "lr"], ignore_index=True)


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Three panels: r over iterations, the trajectories in the (ψ, φ) plane, and w in 3D around the unit sphere."""
    wide = _wide(frame)
    main = wide[wide["role"] == "main"]
    palette = optimizer_palette(list(_COLOURS.values()))
    colour = {m: palette[c] for m, c in _COLOURS.items()}
    fig = plt.figure(figsize=(15, 4.6))
    ax_r = fig.add_subplot(1, 3, 1)
    ax_angles = fig.add_subplot(1, 3, 2)
    ax_3d = fig.add_subplot(1, 3, 3, projection="3d")
    for method, run in main.groupby("method", sort=False):
        run = run.sort_values("step")
        what, reported = _REPORTED[method]
        ax_r.plot(run["step"], run["r"], color=colour[method], label=method, **_LINES[method])
        if what == "final r":
            ax_r.plot(run["step"].iloc[-1], reported, marker="*", ms=11, color=colour[method], ls="none")
        else:
            ax_r.axhline(reported, color=colour[method], ls=":", lw=1.2)
        ax_angles.plot(run["psi"], run["phi"], color=colour[method], label=method, **_LINES[method])
        ax_3d.plot(run["w1"], run["w2"], run["w3"], color=colour[method], **_LINES[method])
    ax_r.plot([], [], marker="*", color="0.3", ls="none", label="paper: final r")
    ax_r.plot([], [], color="0.3", ls=":", label="paper: peak r with WD")
    ax_r.set_xlabel("iteration")
    ax_r.set_ylabel("r = ‖w‖ (start 1)")
    ax_r.set_title("weight norm over iterations")
    ax_r.legend(fontsize="small")

    grid = frame[frame["quantity"] == "h_grid"]
    h = grid.pivot_table(index="grid_phi", columns="grid_psi", values="value")
    levels = np.geomspace(max(h.values.min(), 1e-2), h.values.max(), 14)
    ax_angles.contour(h.columns, h.index, h.values, levels=levels, colors="0.6", linewidths=0.6)
    start = main[main["step"] == 0].iloc[0]
    ax_angles.plot(start["psi"], start["phi"], "ko", ms=5, label="start (−2, 2)")
    ax_angles.plot(1, 1, "k*", ms=10, label="minimum (1, 1)")
    ax_angles.set_xlabel("azimuth ψ (rad)")
    ax_angles.set_ylabel("polar angle φ (rad)")
    ax_angles.set_title("trajectories in angle space, contours of h")
    ax_angles.legend(fontsize="small", loc="lower left")

    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 30), np.linspace(0, np.pi, 16))
    sphere = (np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v))
    ax_3d.plot_wireframe(*sphere, color="0.8", linewidth=0.4)
    ax_3d.scatter(start["w1"], start["w2"], start["w3"], color="k", s=15)
    ax_3d.set_xlabel("w₁")
    ax_3d.set_ylabel("w₂")
    ax_3d.set_zlabel("w₃")
    ax_3d.set_title("w in R³ (unit sphere in grey)")
    bound = float(np.nanmax(np.abs(main[["w1", "w2", "w3"]].to_numpy()))) * 1.05
    for axis in "xyz":
        getattr(ax_3d, f"set_{axis}lim")(-bound, bound)
    ax_3d.set_box_aspect((1, 1, 1))
    fig.tight_layout()
    images = save_figure(fig, out_dir, "rosenbrock_sphere")

    lr = main["lr"].iloc[0]
    wd = main.loc[main["method"] == "Momentum + WD", "weight_decay"].iloc[0]
    momentum = frame.loc[frame["role"] == "main", "momentum"].iloc[0]
    steps = int(main["step"].max())
    caption = (
        "h(w) = (1 − ψ)² + 100(φ − ψ²)² of the azimuth ψ and polar angle φ of w ∈ R³ (scale invariant), from "
        f"(ψ, φ) = (−2, 2), r₀ = 1, {steps} iterations, float64. Step size η = {lr:g}, momentum μ = {momentum:g} "
        f"for all three; weight decay λ = {wd:g} (L2, torch SGD); SGDP δ = 0.1, no weight decay. Stars and the "
        "dotted line: the paper's values (final r 3.16 momentum, 1.12 SGDP; peak 2.53 with weight decay). η, μ "
        "and λ are not given in the paper's main text; the sweep table shows how r depends on them."
    )
    tables = {"comparison": comparison_table(frame)}
    if (wide["role"] == "sweep").any():
        tables["sweep"] = sweep_table(frame)
    output = FigureOutput(STUDY, TITLE, caption, images, tables, frame.attrs.get("notes", []))
    output.write_tables(out_dir)
    return output
