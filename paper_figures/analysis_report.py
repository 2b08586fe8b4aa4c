"""Figures and one self-contained HTML page for a ``valley analyse`` run (:mod:`studies.analyse_all`).

:func:`report` draws, from an :class:`studies.analyse_all.Analysis` (or its output folder), with the public functions
of :mod:`paper_figures.plots`: the 1D curve (the interpolation with its barrier, or the random line), the 2D plane as
contours and as a 3D render, the plane along the top Hessian eigenvectors, and the eigenvalues beside the spectral
density; each as PNG and PDF under ``<out>/figures/``, the plane also as ``plane.vtk`` for ParaView, and
``<out>/report.html`` with the images embedded (base64), the key numbers, every setting and the time of each part.
Every file goes through :mod:`landscape.files` (atomic, ordinary permissions).
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from landscape.files import atomic_write, check_output_dir
from paper_figures import plots
from paper_figures._style import apply_style

FRAMES = ("line", "barrier", "plane", "eigenvalues", "trace", "density", "eigenplane", "sharpness", "timings")


def load_analysis(out_dir: str | os.PathLike) -> tuple[dict[str, pd.DataFrame], dict]:
    """The frames (``<name>.csv``) and ``analysis.json`` of an analysis folder.

    Raises:
        FileNotFoundError: if the folder holds no ``analysis.json``.
    """
    out_dir = Path(out_dir)
    meta_path = out_dir / "analysis.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{out_dir} holds no analysis.json (run valley analyse first)")
    frames = {name: pd.read_csv(out_dir / f"{name}.csv") for name in FRAMES if (out_dir / f"{name}.csv").is_file()}
    return frames, json.loads(meta_path.read_text())


def _save(fig: plt.Figure, folder: Path, name: str) -> list[Path]:
    paths = []
    for ext in ("png", "pdf"):
        paths.append(atomic_write(folder / f"{name}.{ext}", lambda p, ext=ext: fig.savefig(p, format=ext)))
    plt.close(fig)
    return paths


def draw(
    frames: dict[str, pd.DataFrame],
    out_dir: str | os.PathLike,
    interpolation: bool,
    names: tuple[str, str] = ("θ_a", "θ_b"),
) -> dict[str, list[Path]]:
    """Draw every figure the frames allow into ``<out_dir>/figures/``; returns the paths by figure name.

    ``names`` label the two checkpoints of an interpolation.
    """
    folder = check_output_dir(Path(out_dir) / "figures")
    apply_style()
    images: dict[str, list[Path]] = {}
    if "line" in frames:
        line = frames["line"]
        if interpolation:
            fig = plots.interpolation(line, names=names)
        else:
            fig, ax = plt.subplots(figsize=(6.0, 4.0))
            plots.curve(line, ax=ax, y="loss", label="loss", xlabel="α (filter-normalised random direction)")
            twin = ax.twinx()
            plots.curve(line, ax=twin, y="accuracy", ylabel="accuracy")
            twin.lines[0].set_color("C1")
            twin.lines[0].set_linestyle("--")
            twin.grid(False)
            ax.set_title("1D slice through the checkpoint")
        images["line"] = _save(fig, folder, "line")
    if "plane" in frames:
        fig = plt.figure(figsize=(11.5, 4.6))
        plots.contour(frames["plane"], ax=fig.add_subplot(1, 2, 1))
        plots.surface_3d(frames["plane"], ax=fig.add_subplot(1, 2, 2, projection="3d"), log=True, title="3D view")
        fig.suptitle("Filter-normalised random plane θ + α d1 + β d2 (Li et al. 2018)")
        images["plane"] = _save(fig, folder, "plane")
        from landscape.surfaces import Surface
        from landscape.vtk import write_vtk

        images["plane_vtk"] = [write_vtk(Surface.from_frame(frames["plane"]), folder / "plane.vtk", log=True)]
    if "eigenplane" in frames:
        plane = frames["eigenplane"]
        fig, ax = plt.subplots(figsize=(5.6, 4.6))
        if "beta" in plane.columns:
            plots.contour(plane, ax=ax, xlabel="α (top eigenvector v1)", ylabel="β (second eigenvector v2)")
        else:
            plots.curve(plane, ax=ax, xlabel="α (top eigenvector v1)")
        ax.set_title("Along the top Hessian eigenvectors")
        images["eigenplane"] = _save(fig, folder, "eigenplane")
    if "eigenvalues" in frames or "density" in frames:
        fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.9))
        if "eigenvalues" in frames:
            plots.spectrum(frames["eigenvalues"], ax=axes[0])
            axes[0].set_title("Top Hessian eigenvalues (Lanczos)")
        if "density" in frames:
            plots.density(frames["density"], ax=axes[1])
            axes[1].set_title("Spectral density (SLQ)")
        fig.tight_layout()
        images["spectrum"] = _save(fig, folder, "spectrum")
    return images


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format="{:.4g}".format, border=0)


def write_page(
    frames: dict[str, pd.DataFrame], meta: dict, images: dict[str, list[Path]], out_dir: str | os.PathLike
) -> Path:
    """Write ``<out_dir>/report.html``: embedded PNGs, key tables, settings and timings, nothing linked."""
    target = meta.get("target", {})
    title = f"valley analyse — {target.get('model', 'model')} on {target.get('data', 'data')}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    facts = {
        "checkpoint": target.get("checkpoint"),
        "to": target.get("to"),
        "parameters": meta.get("n_parameters"),
        "examples": meta.get("n_examples"),
        "loss": meta.get("loss_fn"),
        "forward": meta.get("forward_fn"),
    }
    rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items() if v is not None)
    body.append(f"<table>{rows}</table>")
    captions = {
        "line": "1D: loss and accuracy along the interpolation or a random filter-normalised direction.",
        "plane": "2D: filter-normalised random plane, contours (log colour scale) and 3D view (log10 loss).",
        "eigenplane": "2D: along the two top Hessian eigenvectors (unit norm; edge where ½λ₁α² = 1).",
        "spectrum": "Curvature: top eigenvalues (error bars: residuals) and the SLQ spectral density.",
    }
    for name, paths in images.items():
        pngs = [p for p in paths if p.suffix == ".png"]
        if not pngs:
            continue
        raw = pngs[0].read_bytes()
        width = int.from_bytes(raw[16:20], "big") // 2  # drawn at 200 dpi: shown at 100 px per inch
        data = base64.b64encode(raw).decode()
        body.append(f"<h2>{name}</h2><p>{html.escape(captions.get(name, ''))}</p>")
        body.append(f'<img alt="{name}" src="data:image/png;base64,{data}" style="width:{width}px;max-width:100%">')
    for name in ("barrier", "eigenvalues", "trace", "sharpness", "timings"):
        if name in frames:
            body.append(f"<h2>{name}</h2>{_table(frames[name])}")
    settings = pd.DataFrame(
        {"setting": list(meta.get("settings", {})), "value": list(meta.get("settings", {}).values())}
    )
    body.append(f"<h2>settings</h2>{_table(settings)}")
    style = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
    style += "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    page += f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    return atomic_write(Path(out_dir) / "report.html", page)


def report(analysis: object) -> tuple[dict[str, list[Path]], Path, float]:
    """Figures and ``report.html`` of an :class:`studies.analyse_all.Analysis` or of its output folder.

    Returns:
        The image paths by figure, the page's path and the seconds spent drawing.
    """
    start = time.perf_counter()
    if isinstance(analysis, (str, os.PathLike)):
        out_dir = Path(analysis)
        frames, meta = load_analysis(out_dir)
    else:
        out_dir, frames, meta = analysis.out_dir, analysis.frames, analysis.record
    target = meta.get("target", {})
    names = tuple(Path(str(target.get(k) or k)).stem for k in ("checkpoint", "to"))
    images = draw(frames, out_dir, bool(meta.get("interpolation")), names)
    page = write_page(frames, meta, images, out_dir)
    return images, page, time.perf_counter() - start
