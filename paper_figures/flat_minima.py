"""Figures: flat vs sharp minima — 1D interpolation, 2D surfaces, Hessian spectra, sharpness vs gap, Dinh rescaling.

Keskar et al. (2017), Fig. 3 (the parametric plot between the small- and large-batch solutions) and Table 3
(ε-sharpness); Li et al. (2018), Fig. 1/5 (filter-normalised contours); Foret et al. (2021), Fig. 3 (SAM lowers the
Hessian spectrum); Dinh et al. (2017), Section 4 (rescaling changes sharpness, not the function). Reads the results
of :mod:`studies.flat_minima`; the tables compare each measure with the generalisation gap and state, claim by
claim, whether our numbers agree with the papers.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from paper_figures import plots
from paper_figures._style import save_figure
from paper_figures.reference import read_reference, reference_note, side_by_side
from paper_figures.report import FigureOutput, read_results

STUDY = "flat_minima"
TITLE = "Flat minima: small vs large batch and SGD vs SAM (Keskar et al. 2017; Foret et al. 2021; Dinh et al. 2017)"
COLUMNS = ("analysis", "quantity", "value", "seed", "solution", "dataset", "model", "alpha", "beta", "split", "scale")
COLUMNS += ("from_solution", "to_solution", "eigenvalue", "index", "batch_size", "epochs", "lr", "momentum", "rho")
COLUMNS += ("n_train_used",)
SOLUTION_ORDER = ("SB SGD", "LB SGD", "SB SAM")
PALETTE = dict(zip(SOLUTION_ORDER, sns.color_palette("colorblind", 3), strict=True))
#: summary quantity -> table column.
MEASURES = {
    "train_loss": "train loss",
    "test_loss": "test loss",
    "loss_gap": "loss gap (test - train)",
    "train_accuracy": "train acc.",
    "test_accuracy": "test acc.",
    "accuracy_gap": "acc. gap (train - test)",
    "lambda_max": "Hessian λ_max",
    "hessian_trace": "Hessian trace",
    "epsilon_sharpness_0.001": "ε-sharpness ε=1e-3",
    "epsilon_sharpness_0.0005": "ε-sharpness ε=5e-4",
    "sam_sharpness": "SAM sharpness ρ=0.05",
    "sam_sharpness_ascent": "SAM sharpness ρ=0.05 (ascent)",
    "asam_sharpness": "ASAM sharpness ρ=0.5",
}


def load_data(root: str | os.PathLike, scale: str) -> pd.DataFrame:
    """The study's combined results at ``scale``, its notes in ``attrs["notes"]``."""
    return read_results(root, STUDY, scale, COLUMNS)


def _order(names) -> list[str]:
    return [n for n in SOLUTION_ORDER if n in set(names)] + sorted(set(names) - set(SOLUTION_ORDER))


def _summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per solution and seed (rows) the summary quantities (columns)."""
    rows = frame[frame["analysis"] == "summary"]
    return rows.pivot_table(index=["solution", "seed"], columns="quantity", values="value", aggfunc="first")


def sharpness_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per solution: batch, losses, accuracies, the gaps and every sharpness measure (mean over seeds)."""
    wide = _summary(frame).groupby(level="solution").mean()
    training = frame[frame["analysis"] == "training"].groupby("solution")[["batch_size", "epochs"]].first()
    seeds = _summary(frame).groupby(level="solution").size()
    table = wide[[q for q in MEASURES if q in wide.columns]].rename(columns=MEASURES)
    table.insert(0, "epochs", training["epochs"].astype(int))
    table.insert(0, "batch", training["batch_size"].astype(int))
    table["trace s.e."] = wide["hessian_trace_se"]
    table["seeds"] = seeds
    return table.loc[_order(table.index)].reset_index()


#: Keskar et al.'s ε-sharpness (ε = 1e-3, full space) of network F1 on MNIST, small and large batch: (mean, std).
KESKAR_F1 = {"SB": (1.23, 0.83), "LB": (205.14, 69.52)}


def batch_verdict(sb: pd.Series, lb: pd.Series) -> str:
    """Keskar et al.'s claim — the large batch's value is the larger (sharper, wider gap) — checked on our seeds."""
    if sb.isna().any() or lb.isna().any():
        return "not computable (NaN)"
    if len(sb) < 2 or len(lb) < 2:
        return "agrees (one seed)" if lb.mean() > sb.mean() else "contradicts: LB not larger (one seed)"
    if lb.min() > sb.max():
        return "agrees: LB larger on every seed"
    if lb.mean() > sb.mean():
        return "agrees in the mean; seeds overlap"
    return "contradicts: LB not larger"


def paper_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Small vs large batch per measure: mean and std over seeds, the ratio LB/SB, and Keskar et al.'s F1 values.

    Keskar et al. report F1 on MNIST, a different data set and network: compare the ratio, not the values. The
    verdict checks their claim that the large batch's value is the larger (:func:`batch_verdict`).
    """
    summary = _summary(frame)
    rows = []
    for quantity in ("epsilon_sharpness_0.001", "epsilon_sharpness_0.0005", "lambda_max", "accuracy_gap"):
        if quantity not in summary.columns or not {"SB SGD", "LB SGD"} <= set(summary.index.get_level_values(0)):
            continue
        sb, lb = summary.loc["SB SGD", quantity], summary.loc["LB SGD", quantity]
        paper = KESKAR_F1 if quantity == "epsilon_sharpness_0.001" else {"SB": (np.nan,) * 2, "LB": (np.nan,) * 2}
        rows.append(
            {
                "measure": MEASURES[quantity],
                "seeds": len(sb),
                "SB mean": sb.mean(),
                "SB std": sb.std(),
                "LB mean": lb.mean(),
                "LB std": lb.std(),
                "LB/SB": lb.mean() / sb.mean(),
                "paper SB (F1, MNIST)": paper["SB"][0],
                "paper LB (F1, MNIST)": paper["LB"][0],
                "paper LB/SB": paper["LB"][0] / paper["SB"][0],
                "verdict": batch_verdict(sb, lb),
            }
        )
    return pd.DataFrame(rows)


def dinh_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per rescaling factor α: λ_max, the sharpness measures and the losses (mean over seeds)."""
    rows = frame[frame["analysis"] == "dinh"]
    wide = rows.pivot_table(index="scale", columns="quantity", values="value", aggfunc="mean")
    keep = ["lambda_max", "epsilon_sharpness_0.001", "sam_sharpness", "asam_sharpness", "train_loss", "test_loss"]
    table = wide[keep + ["test_accuracy"]].rename(columns=MEASURES)
    return table.rename_axis("α (layer 1 × α, layer 2 × 1/α)").reset_index()


def trajectory_points(frame: pd.DataFrame) -> pd.DataFrame:
    """Per solution and seed: epoch, train and test loss, gap and λ_max at every snapshot and at the end."""
    snapshots = frame[frame["analysis"] == "trajectory"]
    wide = snapshots.pivot_table(index=["solution", "seed", "epoch"], columns="quantity", values="value")
    final = _summary(frame)
    epochs = frame[frame["analysis"] == "training"].groupby("solution")["epochs"].first()
    final = final.assign(epoch=[epochs[name] for name, _ in final.index]).set_index("epoch", append=True)
    keep = ["train_loss", "test_loss", "loss_gap", "lambda_max"]
    return pd.concat([wide[keep], final[keep]]).sort_index().reset_index()


def matched_sharpness(frame: pd.DataFrame, a: str, b: str) -> tuple[int, int, int, int]:
    """How often ``a`` is sharper than ``b`` at equal training loss along training.

    Every point of ``a``'s trajectory whose training loss lies inside the range of ``b``'s is compared with ``b``'s
    λ_max interpolated (linearly in log-log) at that loss. Returns ``(points where a is sharper, points compared,
    seeds where a is sharper at most points, seeds compared)``.
    """
    points = trajectory_points(frame)
    sharper = compared = seeds_sharper = seeds = 0
    for _, runs in points.groupby("seed"):
        x, y = runs[runs["solution"] == a], runs[runs["solution"] == b].sort_values("train_loss")
        if x.empty or len(y) < 2:
            continue
        inside = x[x["train_loss"].between(y["train_loss"].min(), y["train_loss"].max())]
        reference = np.exp(np.interp(np.log(inside["train_loss"]), np.log(y["train_loss"]), np.log(y["lambda_max"])))
        wins = int((inside["lambda_max"].to_numpy() > reference).sum())
        sharper, compared = sharper + wins, compared + len(inside)
        if len(inside):
            seeds, seeds_sharper = seeds + 1, seeds_sharper + int(wins > len(inside) / 2)
    return sharper, compared, seeds_sharper, seeds


def claims_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Each paper's claim, our number for it (seed means) and whether it agrees, with the count of agreeing seeds."""
    per_seed = _summary(frame)
    mean = per_seed.groupby(level="solution").mean()
    dinh = frame[frame["analysis"] == "dinh"].pivot_table(
        index=["seed", "scale"], columns="quantity", values="value", aggfunc="first"
    )
    rows = []

    def claim(paper: str, text: str, ours: str, agrees: bool, seeds: tuple[int, int]) -> None:
        rows.append(
            {"paper": paper, "claim": text, "ours": ours, "agrees": agrees, "seeds agreeing": f"{seeds[0]}/{seeds[1]}"}
        )

    def compare(a: str, b: str, quantity: str, bigger: bool) -> tuple[float, float, tuple[int, int]]:
        x, y = per_seed[quantity].xs(a, level="solution"), per_seed[quantity].xs(b, level="solution")
        ok = (x > y) if bigger else (x < y)
        return mean.loc[a, quantity], mean.loc[b, quantity], (int(ok.sum()), int(ok.count()))

    keskar = "Keskar et al. 2017"
    for quantity, label in (("lambda_max", "Hessian λ_max"), ("epsilon_sharpness_0.001", "ε-sharpness (ε=1e-3)")):
        lb, sb, seeds = compare("LB SGD", "SB SGD", quantity, bigger=True)
        claim(keskar, f"large batch reaches a sharper minimum: {label}", f"LB {lb:.4g} vs SB {sb:.4g}", lb > sb, seeds)
    wins, total, seed_wins, n_seeds = matched_sharpness(frame, "LB SGD", "SB SGD")
    claim(
        keskar,
        "large batch is sharper at equal training loss (λ_max along training)",
        f"LB above SB at {wins}/{total} matched points",
        total > 0 and wins > total / 2,
        (seed_wins, n_seeds),
    )
    lb, sb, seeds = compare("LB SGD", "SB SGD", "loss_gap", bigger=True)
    claim(keskar, "large batch has a larger gap (test − train loss)", f"LB {lb:.4g} vs SB {sb:.4g}", lb > sb, seeds)
    lb, sb, seeds = compare("LB SGD", "SB SGD", "test_accuracy", bigger=False)
    claim(keskar, "large batch has a lower test accuracy", f"LB {lb:.4g} vs SB {sb:.4g}", lb < sb, seeds)
    foret = "Foret et al. 2021"
    for quantity, label in (("lambda_max", "Hessian λ_max"), ("sam_sharpness", "SAM sharpness (ρ=0.05)")):
        sam, sgd, seeds = compare("SB SAM", "SB SGD", quantity, bigger=False)
        claim(foret, f"SAM reaches a flatter minimum: {label}", f"SAM {sam:.4g} vs SGD {sgd:.4g}", sam < sgd, seeds)
    wins, total, seed_wins, n_seeds = matched_sharpness(frame, "SB SGD", "SB SAM")
    claim(
        foret,
        "SAM is flatter at equal training loss (λ_max along training)",
        f"SGD above SAM at {wins}/{total} matched points",
        total > 0 and wins > total / 2,
        (seed_wins, n_seeds),
    )
    sam, sgd, seeds = compare("SB SAM", "SB SGD", "loss_gap", bigger=False)
    claim(foret, "SAM has a smaller gap (test − train loss)", f"SAM {sam:.4g} vs SGD {sgd:.4g}", sam < sgd, seeds)
    sam, sgd, seeds = compare("SB SAM", "SB SGD", "test_accuracy", bigger=True)
    claim(foret, "SAM has a higher test accuracy", f"SAM {sam:.4g} vs SGD {sgd:.4g}", sam > sgd, seeds)
    if len(dinh):
        by_seed = dinh.groupby(level="seed")
        spread = by_seed["lambda_max"].max() / by_seed["lambda_max"].min()
        drift = by_seed["test_loss"].agg(lambda s: (s.max() - s.min()) / abs(s.mean()))
        claim(
            "Dinh et al. 2017",
            "rescaling changes λ_max but not the test loss",
            f"λ_max varies ×{spread.mean():.3g}; test loss varies by {drift.max():.1e} (relative)",
            bool((spread > 1.5).all() and (drift < 1e-4).all()),
            (int(((spread > 1.5) & (drift < 1e-4)).sum()), len(spread)),
        )
        lb_max = per_seed["lambda_max"].xs("LB SGD", level="solution")
        sharper = by_seed["lambda_max"].max() > lb_max.reindex(spread.index)
        claim(
            "Dinh et al. 2017",
            "the flat SB minimum, rescaled, is sharper than the LB minimum (λ_max) yet generalises as before",
            f"max over α {by_seed['lambda_max'].max().mean():.4g} vs LB {lb_max.mean():.4g}",
            bool(sharper.all()),
            (int(sharper.sum()), len(sharper)),
        )
    return pd.DataFrame(rows)


def _log_axis(ax: plt.Axes, which: str) -> None:
    """Log scale with plain-number labels at 1, 2 and 5 times the powers of ten (no overlapping minor labels)."""
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _interpolation_figure(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    rows = frame[frame["analysis"] == "interpolation"]
    pairs = list(dict.fromkeys(zip(rows["from_solution"], rows["to_solution"], strict=True)))
    fig, axes = plt.subplots(2, len(pairs), figsize=(5.2 * len(pairs), 6.4), squeeze=False, sharex=True)
    for j, (a, b) in enumerate(pairs):
        pair = rows[(rows["from_solution"] == a) & (rows["to_solution"] == b)]
        for i, (quantity, label) in enumerate((("loss", "loss (cross-entropy, nats)"), ("accuracy", "accuracy"))):
            ax = axes[i, j]
            panel = pair[pair["quantity"] == quantity]
            sns.lineplot(panel, x="alpha", y="value", style="split", style_order=["train", "test"], color="k", ax=ax)
            for alpha, name in ((0.0, a), (1.0, b)):
                ax.axvline(alpha, color=PALETTE.get(name, "grey"), lw=1.2, ls=":")
                if i == 0:
                    ax.text(alpha, 1.01, name, color=PALETTE.get(name, "grey"), transform=ax.get_xaxis_transform(),
                            ha="center", va="bottom", fontsize="small")  # fmt: skip
            if quantity == "loss":
                ax.set_yscale("log")
            ax.set_ylabel(label)
            ax.set_xlabel(f"α in (1 − α)·θ[{a}] + α·θ[{b}]")
            ax.legend(title=None, fontsize="small")
        axes[0, j].set_title(f"{a} → {b}", pad=16)
    fig.tight_layout()
    return save_figure(fig, out_dir, "interpolation")


def _surface_figure(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    rows = frame[(frame["analysis"] == "surface") & (frame["quantity"] == "loss")]
    rows = rows[rows["seed"] == rows["seed"].min()]
    names = _order(rows["solution"].unique())
    finite = rows["value"][np.isfinite(rows["value"]) & (rows["value"] > 0)]
    levels = np.geomspace(finite.min(), finite.max(), 16)
    fig, axes = plt.subplots(1, len(names), figsize=(3.9 * len(names) + 1.2, 4.0), squeeze=False, sharey=True)
    for i, (ax, name) in enumerate(zip(axes[0], names, strict=True)):
        panel = rows[rows["solution"] == name].rename(columns={"value": "loss"})
        centre = panel[(panel["alpha"] == 0.0) & (panel["beta"] == 0.0)]["loss"]
        title = f"{name}: L(θ*) = {centre.iloc[0] if len(centre) else np.nan:.3g}"
        ylabel = "β (filter-normalised direction 2)" if i == 0 else ""
        plots.contour(panel, ax=ax, levels=levels, colorbar=False, title=title,
                      xlabel="α (filter-normalised direction 1)", ylabel=ylabel)  # fmt: skip
    filled = axes[0, 0].collections[0]
    fig.colorbar(filled, ax=axes[0].tolist(), label="training loss (nats, log scale)", ticks=levels[::3], format="%.2g")
    return save_figure(fig, out_dir, "surfaces")


def _spectrum_figure(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    density = frame[(frame["analysis"] == "spectrum") & (frame["seed"] == frame["seed"].min())]
    for name in _order(density["solution"].unique()):
        curve = density[density["solution"] == name].sort_values("eigenvalue").rename(columns={"value": "density"})
        plots.density(curve, ax=axes[0], label=name, color=PALETTE.get(name))
    axes[0].set_ylim(bottom=1e-6)
    axes[0].set_xlabel("Hessian eigenvalue λ")
    axes[0].set_ylabel("spectral density φ(λ) (SLQ, Gaussian-smoothed)")
    axes[0].set_title("Spectral density (first seed)")
    axes[0].legend(fontsize="small")
    eig = frame[(frame["analysis"] == "eigenvalue") & (frame["quantity"] == "eigenvalue")].copy()
    eig["rank"] = eig["index"].astype(int) + 1
    sns.lineplot(eig, x="rank", y="value", hue="solution", hue_order=_order(eig["solution"].unique()),
                 palette=PALETTE, marker="o", ax=axes[1])  # fmt: skip
    _log_axis(axes[1], "y")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("rank k of the eigenvalue")
    axes[1].set_ylabel("λ_k (Lanczos)")
    axes[1].set_title("Top Hessian eigenvalues")
    axes[1].legend(title=None, fontsize="small")
    fig.tight_layout()
    return save_figure(fig, out_dir, "spectra")


def _gap_figure(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    wide = _summary(frame).reset_index()
    measures = ["lambda_max", "hessian_trace", "epsilon_sharpness_0.001", "sam_sharpness"]
    fig, axes = plt.subplots(1, len(measures), figsize=(3.3 * len(measures), 3.4), sharey=True)
    for ax, quantity in zip(axes, measures, strict=True):
        sns.scatterplot(wide, x=quantity, y="loss_gap", hue="solution", hue_order=_order(wide["solution"].unique()),
                        palette=PALETTE, s=60, ax=ax, legend=ax is axes[0])  # fmt: skip
        _log_axis(ax, "x")
        ax.set_xlabel(MEASURES[quantity])
    axes[0].set_ylabel("generalisation gap: test − train loss (nats)")
    axes[0].legend(title=None, fontsize="small")
    fig.tight_layout()
    return save_figure(fig, out_dir, "sharpness_vs_gap")


def _trajectory_figure(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    points = trajectory_points(frame)
    order = _order(points["solution"].unique())
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.9))
    panels = (("lambda_max", "Hessian λ_max (Lanczos)"), ("loss_gap", "gap: test − train loss (nats)"))
    for ax, (quantity, label) in zip(axes, panels, strict=True):
        for (name, seed), run in points.groupby(["solution", "seed"]):
            run = run.sort_values("epoch")
            first = seed == points["seed"].min()
            ax.plot(run["train_loss"], run[quantity], marker="o", ms=3.5, color=PALETTE.get(name), alpha=0.85,
                    label=name if first else None)  # fmt: skip
            ax.plot(run["train_loss"].iloc[-1], run[quantity].iloc[-1], marker="*", ms=12, color=PALETTE.get(name))
        _log_axis(ax, "x")
        ax.invert_xaxis()
        ax.set_xlabel("training loss of the snapshot (nats; training runs to the right)")
        ax.set_ylabel(label)
    _log_axis(axes[0], "y")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].legend([handles[labels.index(n)] for n in order], order, fontsize="small", title="★ = end of training")
    fig.tight_layout()
    return save_figure(fig, out_dir, "sharpness_along_training")


def _dinh_figure(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    rows = frame[frame["analysis"] == "dinh"]
    reference = _summary(frame).groupby(level="solution").mean()
    panels = [
        ("lambda_max", "Hessian λ_max"),
        ("epsilon_sharpness_0.001", "ε-sharpness φ (ε=1e-3)"),
        ("asam_sharpness", "ASAM adaptive sharpness (ρ=0.5)"),
        ("test_loss", "test loss (nats)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4))
    for ax, (quantity, label) in zip(axes, panels, strict=True):
        panel = rows[rows["quantity"] == quantity]
        sns.lineplot(panel, x="scale", y="value", marker="o", color=PALETTE["SB SGD"], label="SB SGD rescaled", ax=ax)
        if "LB SGD" in reference.index:
            ax.axhline(reference.loc["LB SGD", quantity], color=PALETTE["LB SGD"], ls="--", label="LB SGD (α = 1)")
        ax.set_xscale("log", base=2)
        if quantity != "test_loss":
            _log_axis(ax, "y")
        ax.set_xlabel("Dinh factor α (layer 1 × α, layer 2 × 1/α)")
        ax.set_ylabel(label)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, out_dir, "dinh_rescaling")


def make_figure(frame: pd.DataFrame, out_dir: str | os.PathLike) -> FigureOutput:
    """Five images (interpolation, surfaces, spectra, sharpness vs gap, Dinh) and three tables."""
    out_dir = Path(out_dir)
    images = _interpolation_figure(frame, out_dir) + _surface_figure(frame, out_dir)
    images += _spectrum_figure(frame, out_dir) + _gap_figure(frame, out_dir) + _trajectory_figure(frame, out_dir)
    if (frame["analysis"] == "dinh").any():
        images += _dinh_figure(frame, out_dir)
    training = frame[frame["analysis"] == "training"]
    batches = training.groupby("solution")[["batch_size", "epochs"]].first()
    setup = "; ".join(
        f"{n}: batch {int(b)}, {int(e)} epochs" for n, (b, e) in batches.loc[_order(batches.index)].iterrows()
    )
    first = frame.iloc[0]
    seeds = frame["seed"].nunique()
    caption = (
        f"{first['model']} on {first['dataset']} ({int(first['n_train_used'])} training examples), one shared "
        f"initialisation per seed ({seeds} seed{'s' if seeds > 1 else ''}); SGD lr {first['lr']:g}, momentum "
        f"{first['momentum']:g}, no weight decay; SAM ρ = {first['rho']:g} around the same SGD. {setup}. "
        "Interpolation: (1 − α)θ_a + αθ_b for α ∈ [−1, 2] (Keskar et al. 2017). Surfaces: training loss along two "
        "filter-normalised Gaussian directions, biases fixed (Li et al. 2018). Curvature of the training loss: top "
        "eigenvalues by Lanczos, trace by Hutchinson, density by SLQ. ε-sharpness: Keskar et al.'s φ in the full "
        "space, 10 L-BFGS-B iterations. Sharpness along training: λ_max at snapshots after 5%-75% of the epochs and "
        "at the end, against the snapshot's training loss (the cross-entropy Hessian shrinks as that loss goes to 0, "
        "so solutions ending at different losses are compared at equal loss). Dinh: the first layer times α and the "
        "second times 1/α on the SB SGD solution."
    )
    tables = {"sharpness_vs_gap": sharpness_table(frame), "claims": claims_table(frame)}
    if (frame["analysis"] == "dinh").any():
        tables["dinh"] = dinh_table(frame)
    reference = read_reference(STUDY)
    tables["paper_vs_ours"] = side_by_side(
        paper_comparison(frame),
        reference,
        "measure",
        ["paper SB (F1, MNIST)", "paper LB (F1, MNIST)", "paper LB/SB"],
        ["SB mean", "SB std", "LB mean", "LB std", "LB/SB", "verdict", "seeds"],
        frame.attrs.get("scale", "this run"),
    )
    notes = [*frame.attrs.get("notes", []), reference_note(STUDY, reference)]
    output = FigureOutput(STUDY, TITLE, caption, images, tables, notes)
    output.write_tables(out_dir)
    return output
