"""Plots for any result of valley: surfaces, curves with bands, Hessian spectra, trajectories, weight-norm curves.

Each function takes one of valley's result objects (:class:`landscape.Surface`, :class:`landscape.EigenResult`,
:class:`landscape.SpectralDensity`, :class:`landscape.PCADirections`) or the tidy frame its ``frame()`` returns (or a
run's metrics), draws into ``ax`` when given (else a new figure) and returns the figure; axes are labelled, nothing
is saved (:func:`paper_figures._style.save_figure` does that). The paper figures use the same functions.

Example:
    >>> import numpy as np
    >>> from landscape import Surface
    >>> s = Surface(np.array([-1.0, 0.0, 1.0]), None, np.array([2.0, 1.0, 2.5]), np.array([0.5, 0.9, 0.4]))
    >>> fig = curve(s)
    >>> fig.axes[0].get_xlabel(), len(fig.axes[0].lines)
    ('α', 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.ticker import MaxNLocator

__all__ = [
    "contour",
    "curve",
    "density",
    "effective_steps",
    "interpolation",
    "spectrum",
    "surface_3d",
    "trajectory",
    "weight_norms",
]


def _frame(result: Any) -> pd.DataFrame:
    """A result's tidy frame (``result.frame()``), or the frame itself."""
    if isinstance(result, pd.DataFrame):
        return result
    if hasattr(result, "frame"):
        return result.frame()
    raise TypeError(f"expected a valley result with .frame() or a DataFrame, got {type(result).__name__}")


def _axes(ax: plt.Axes | None, figsize: tuple[float, float] = (5.0, 4.0), projection: str | None = None) -> plt.Axes:
    if ax is not None:
        return ax
    fig = plt.figure(figsize=figsize)
    return fig.add_subplot(projection=projection)


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(columns)}; missing {missing} (has {list(frame.columns)})")


def _grid(frame: pd.DataFrame, quantity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, B, Z)`` meshes of a 2D frame with ``alpha, beta, quantity``; ``Z[j, i]`` at ``(alpha_i, beta_j)``."""
    _require(frame, ("alpha", "beta", quantity), "a 2D surface plot")
    table = frame.pivot_table(index="beta", columns="alpha", values=quantity, aggfunc="first", dropna=False)
    a, b = np.meshgrid(table.columns.to_numpy(float), table.index.to_numpy(float))
    return a, b, table.to_numpy(float)


def _levels(values: np.ndarray, log: bool, n: int | Sequence[float]) -> tuple[np.ndarray, LogNorm | None]:
    if not isinstance(n, int):
        steps = np.asarray(n, dtype=float)
        return steps, LogNorm(steps[0], steps[-1]) if log else None
    finite = values[np.isfinite(values)]
    if log:
        finite = finite[finite > 0]
    if finite.size == 0:
        raise ValueError("no finite value to draw" + (" (log scale needs positive values)" if log else ""))
    lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo * 1.001 + 1e-12
    if log:
        return np.geomspace(lo, hi, n), LogNorm(lo, hi)
    return np.linspace(lo, hi, n), None


def contour(
    surface: Any,
    ax: plt.Axes | None = None,
    quantity: str = "loss",
    log: bool = True,
    levels: int | Sequence[float] = 16,
    xlabel: str = "α (direction 1)",
    ylabel: str = "β (direction 2)",
    title: str | None = None,
    colorbar: bool = True,
) -> plt.Figure:
    """Filled contours of a 2D surface with white level lines and a red cross at the centre (Li et al. 2018, Fig. 5).

    Args:
        surface: a 2D :class:`landscape.Surface` or a frame with ``alpha, beta`` and ``quantity``.
        ax: axes to draw into (default: a new figure).
        quantity: column to draw (``loss`` or ``accuracy``).
        log: logarithmic colour scale (positive values only).
        levels: number of levels, or the levels themselves (e.g. shared by several panels).
        xlabel: label of the α axis.
        ylabel: label of the β axis.
        title: axes title (default: the quantity at the centre).
        colorbar: add a colour bar (the filled contours are ``ax.collections[0]`` for a shared one).
    """
    frame = _frame(surface)
    a, b, z = _grid(frame, quantity)
    steps, norm = _levels(z, log, levels)
    ax = _axes(ax)
    filled = ax.contourf(a, b, np.clip(z, steps[0], steps[-1]), levels=steps, norm=norm, cmap="viridis")
    ax.contour(a, b, np.clip(z, steps[0], steps[-1]), levels=steps, colors="white", linewidths=0.4)
    ax.plot(0, 0, marker="x", color="red", ms=7, ls="none")
    centre = frame[(frame["alpha"] == 0) & (frame["beta"] == 0)][quantity]
    ax.set_title(
        title if title is not None else f"{quantity} at the centre: {centre.iloc[0]:.4g}" if len(centre) else ""
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(5))  # readable ticks on narrow panels
    ax.set_aspect("equal", adjustable="box")
    if colorbar:
        ax.figure.colorbar(filled, ax=ax, label=f"{quantity}{' (log scale)' if log else ''}", format="%.3g")
    return ax.figure


def surface_3d(
    surface: Any,
    ax: plt.Axes | None = None,
    quantity: str = "loss",
    log: bool = False,
    xlabel: str = "α",
    ylabel: str = "β",
    title: str | None = None,
) -> plt.Figure:
    r"""A 3D render of a 2D surface (``plot_surface`` with a viridis colour map); ``ax`` must be a 3D axes.

    Args:
        surface: a 2D :class:`landscape.Surface` or a frame with ``alpha, beta`` and ``quantity``.
        ax: 3D axes (``fig.add_subplot(projection="3d")``; default: a new figure).
        quantity: column to draw.
        log: draw :math:`\log_{10}` of the values (the z label says so).
        xlabel: label of the α axis.
        ylabel: label of the β axis.
        title: axes title.
    """
    a, b, z = _grid(_frame(surface), quantity)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(z), np.nan)
    ax = _axes(ax, (6.0, 4.8), projection="3d")
    if not hasattr(ax, "plot_surface"):
        raise ValueError("surface_3d needs a 3D axes: fig.add_subplot(projection='3d')")
    ax.plot_surface(a, b, np.ma.masked_invalid(z), cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_zlabel(f"log10 {quantity}" if log else quantity)
    if title:
        ax.set_title(title)
    return ax.figure


def curve(
    result: Any,
    ax: plt.Axes | None = None,
    x: str = "alpha",
    y: str | None = None,
    lower: str | None = None,
    upper: str | None = None,
    hue: str | None = None,
    log: bool = False,
    xlabel: str | None = None,
    ylabel: str | None = None,
    label: str | None = None,
) -> plt.Figure:
    """A 1D curve with an optional band between two columns, one line per ``hue`` value.

    A :class:`landscape.SurfaceEnsemble`'s frame is recognised: ``y="loss"`` then draws ``loss_mean`` with the band
    ``loss_lo .. loss_hi``.

    Args:
        result: a 1D :class:`landscape.Surface`, a :class:`landscape.SurfaceEnsemble` or any tidy frame.
        ax: axes to draw into.
        x: column on the horizontal axis.
        y: column on the vertical axis (default ``loss``).
        lower: column of the band's lower edge (default ``<y>_lo`` when present).
        upper: column of the band's upper edge (default ``<y>_hi`` when present).
        hue: column whose values get one line each.
        log: logarithmic vertical axis.
        xlabel: horizontal label (default: ``x`` as α for ``alpha``).
        ylabel: vertical label (default: ``y``).
        label: legend label of a single curve.
    """
    frame = _frame(result)
    y = y or "loss"
    if y not in frame.columns and f"{y}_mean" in frame.columns:
        lower, upper, y = lower or f"{y}_lo", upper or f"{y}_hi", f"{y}_mean"
    _require(frame, [x, y] + [c for c in (lower, upper, hue) if c], "curve")
    ax = _axes(ax)
    groups = frame.groupby(hue, sort=False) if hue else [(label, frame)]
    for name, rows in groups:
        rows = rows.sort_values(x)
        (line,) = ax.plot(rows[x], rows[y], label=None if name is None else str(name))
        if lower and upper:
            ax.fill_between(rows[x], rows[lower], rows[upper], color=line.get_color(), alpha=0.25, lw=0)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel or ("α" if x == "alpha" else x))
    ax.set_ylabel(ylabel or y.removesuffix("_mean"))
    if hue or label:
        ax.legend(fontsize="small")
    return ax.figure


def interpolation(
    surface: Any,
    ax: plt.Axes | None = None,
    names: tuple[str, str] = ("θ_a", "θ_b"),
    barrier: bool = True,
) -> plt.Figure:
    """Loss (left axis) and accuracy (right axis) along an interpolation, the two ends marked, the barrier shaded.

    Args:
        surface: a 1D :class:`landscape.Surface` from :func:`landscape.interpolate_1d` or its frame.
        ax: axes to draw into.
        names: labels of the checkpoints at α = 0 and α = 1.
        barrier: shade the gap between the loss and the straight line between the ends, and give
            :meth:`landscape.Surface.barrier` in the title.
    """
    from landscape.surfaces import Surface

    frame = _frame(surface).sort_values("alpha")
    _require(frame, ("alpha", "loss", "accuracy"), "interpolation")
    ax = _axes(ax, (6.0, 4.0))
    ax.plot(frame["alpha"], frame["loss"], color="C0", label="loss")
    ax.set_xlabel(f"α in (1 − α)·{names[0]} + α·{names[1]}")
    ax.set_ylabel("loss", color="C0")
    for alpha, name in zip((0.0, 1.0), names, strict=True):
        ax.axvline(alpha, color="grey", lw=1.0, ls=":")
        ax.text(alpha, 1.01, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize="small")
    if frame["accuracy"].notna().any():
        twin = ax.twinx()
        twin.plot(frame["alpha"], frame["accuracy"], color="C1", ls="--", label="accuracy")
        twin.set_ylabel("accuracy", color="C1")
        twin.grid(False)
    if barrier:
        result = Surface(frame["alpha"].to_numpy(), None, frame["loss"].to_numpy(), frame["accuracy"].to_numpy())
        values = result.barrier()
        inside = frame[(frame["alpha"] >= 0) & (frame["alpha"] <= 1)]
        line = (1 - inside["alpha"]) * values["loss_a"] + inside["alpha"] * values["loss_b"]
        ax.fill_between(inside["alpha"], line, inside["loss"], where=inside["loss"] > line, color="C0", alpha=0.2)
        barriers = f"loss barrier {values['loss_barrier']:.3g}, accuracy barrier {values['accuracy_barrier']:.3g}"
        ax.set_title(barriers, pad=18)
    return ax.figure


def spectrum(eigen: Any, ax: plt.Axes | None = None, hue: str | None = None, log: bool = False) -> plt.Figure:
    """Top Hessian eigenvalues against their rank (markers), with their residuals as error bars when known.

    Args:
        eigen: an :class:`landscape.EigenResult` or a frame with ``index, eigenvalue`` (and ``residual``).
        ax: axes to draw into.
        hue: column whose values get one series each.
        log: logarithmic vertical axis (positive eigenvalues only).
    """
    frame = _frame(eigen)
    _require(frame, ("index", "eigenvalue"), "spectrum")
    ax = _axes(ax)
    groups = frame.groupby(hue, sort=False) if hue else [(None, frame)]
    for name, rows in groups:
        rank = rows["index"].to_numpy(int) + 1
        err = rows["residual"].to_numpy(float) if "residual" in rows else None
        ax.errorbar(rank, rows["eigenvalue"], yerr=err, marker="o", ls="-", capsize=3, label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("rank k")
    ax.set_ylabel("Hessian eigenvalue λ_k")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if hue:
        ax.legend(fontsize="small")
    return ax.figure


def density(
    result: Any,
    ax: plt.Axes | None = None,
    log: bool = True,
    floor: float = 1e-8,
    label: str | None = None,
    color: Any = "C2",
) -> plt.Figure:
    r"""The SLQ spectral density :math:`\phi(\lambda)` (log scale by default, as PyHessian's density plot).

    Args:
        result: a :class:`landscape.SpectralDensity` or a frame with ``eigenvalue, density``.
        ax: axes to draw into.
        log: logarithmic density axis (values below ``floor`` are shown at ``floor``).
        floor: smallest density drawn on the log scale.
        label: legend label (several densities in one axes).
        color: line colour.
    """
    frame = _frame(result)
    _require(frame, ("eigenvalue", "density"), "density")
    ax = _axes(ax)
    values = np.maximum(frame["density"].to_numpy(float), floor) if log else frame["density"]
    ax.plot(frame["eigenvalue"], values, color=color, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("Hessian eigenvalue λ")
    ax.set_ylabel("spectral density φ(λ)")
    return ax.figure


def trajectory(pca: Any, surface: Any | None = None, ax: plt.Axes | None = None, log: bool = True) -> plt.Figure:
    """A training trajectory projected on its PCA plane (Li et al. 2018, Fig. 9), over the surface in that plane.

    Args:
        pca: a :class:`landscape.PCADirections` or a frame with ``x, y`` (one row per saved point, oldest first).
        surface: optional 2D surface along the same directions (its ``alpha, beta`` are the PCA coordinates).
        ax: axes to draw into.
        log: logarithmic colour scale of the surface.
    """
    frame = _frame(pca)
    _require(frame, ("x", "y"), "trajectory")
    ax = _axes(ax)
    if surface is not None:
        contour(surface, ax=ax, log=log, title="", xlabel="", ylabel="")
    ax.plot(frame["x"], frame["y"], marker="o", ms=3, color="red", lw=1.2, label="trajectory")
    ax.plot(frame["x"].iloc[-1], frame["y"].iloc[-1], marker="*", ms=12, color="red", ls="none", label="end")
    ratio = getattr(pca, "explained_variance_ratio", None)
    labels = [f"PC{i + 1}" + (f" ({ratio[i]:.0%} of the variance)" if ratio is not None else "") for i in range(2)]
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.legend(fontsize="small")
    return ax.figure


def _metric_curve(
    metrics: pd.DataFrame, quantity: str, ax: plt.Axes | None, hue: str | None, param: str | None, ylabel: str
) -> plt.Figure:
    _require(metrics, ("step", "quantity", "value"), f"a {quantity} plot")
    rows = metrics[metrics["quantity"] == quantity]
    if param is not None and "param" in rows:
        rows = rows[rows["param"] == param]
    if rows.empty:
        raise ValueError(f"the metrics hold no {quantity!r} rows" + (f" for param {param!r}" if param else ""))
    fig = curve(rows, ax=ax, x="step", y="value", hue=hue, xlabel="optimizer step", ylabel=ylabel)
    return fig


def weight_norms(
    metrics: pd.DataFrame, ax: plt.Axes | None = None, hue: str | None = None, param: str | None = "all"
) -> plt.Figure:
    """‖w‖ over training from the rows a :class:`landscape.WeightNorms` callback logged (``quantity="weight_norm"``).

    Args:
        metrics: a run's tidy metrics (``step, quantity, value, param``, e.g. ``TrainResult.metrics``).
        ax: axes to draw into.
        hue: column whose values get one line each (e.g. ``optimizer``, or ``param`` with ``param=None``).
        param: the parameter to draw (default ``"all"``, the whole model; ``None`` keeps every row).
    """
    return _metric_curve(metrics, "weight_norm", ax, hue, param, "weight norm ‖w‖")


def effective_steps(
    metrics: pd.DataFrame, ax: plt.Axes | None = None, hue: str | None = None, param: str | None = "all"
) -> plt.Figure:
    """Effective step ‖Δw‖/‖w‖ from the rows of :class:`landscape.EffectiveStepSize` (log scale).

    Args:
        metrics: a run's tidy metrics (``quantity="effective_step"``).
        ax: axes to draw into.
        hue: column whose values get one line each.
        param: the parameter to draw (default ``"all"``; ``None`` keeps every row).
    """
    fig = _metric_curve(metrics, "effective_step", ax, hue, param, "effective step ‖Δw‖ / ‖w‖")
    (ax or fig.axes[0]).set_yscale("log")
    return fig
