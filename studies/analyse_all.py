r"""``valley analyse``: the whole landscape analysis of one trained model, in one call, cached and resumable.

Given a model (with its weights), data and a loss, :func:`analyse` computes, in this order:

* ``line``: the 1D interpolation :math:`(1-\alpha)\theta + \alpha\theta_{to}` to a second checkpoint on
  :math:`[-m, 1 + m]` (the grid holds 0 and 1) with its linear-mode-connectivity barrier, or without one a 1D slice
  along a filter-normalised random direction on :math:`[-s, s]`;
* ``plane``: the 2D filter-normalised random plane :math:`\theta + \alpha d_1 + \beta d_2` (Li et al. 2018);
* ``eigen``: the top-k Hessian eigenvalues (Lanczos), ``trace``: the Hutchinson trace, ``density``: the SLQ
  spectral density;
* ``eigenplane``: the surface along the two top Hessian eigenvectors (unit norm, absolute units) on
  :math:`[-r, r]^2` with :math:`r = s\sqrt{2/\lambda_1}`, where the quadratic model rises by :math:`s^2` along
  :math:`v_1` (``plane_span`` :math:`s`);
* ``sharpness``: SAM (first order, :math:`\rho = 0.05`), ASAM (:math:`\rho = 0.5`), Keskar's
  :math:`\epsilon`-sharpness (:math:`\epsilon = 10^{-3}`, full space) and m-sharpness.

Every setting left at ``None`` is sized from the data (:meth:`Settings.resolve`), so that a small model finishes in
seconds; all resolved choices are recorded. Each finished part is stored in a :class:`studies.store.RunStore` under
``<out>/cache/`` keyed by the model's state, the data, the loss and the part's settings, and the surfaces' chunks in
the chunk cache under ``<out>/cache/chunks/``: an interrupted analysis resumes where it stopped, a repeated one loads
everything. The tidy CSVs and ``analysis.json`` (settings, target, timings, versions) are published together
through :func:`landscape.files.publish`. Figures and the HTML page are drawn by :mod:`paper_figures.analysis_report`
(this package never plots).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from landscape._data import Batch, Data, ForwardFn, as_batches, batch_length
from landscape.files import OutputPathError, check_output_dir, publish
from studies.analyse import written_by_valley
from studies.analyse_cli import PARTS
from studies.specs import first_examples
from studies.store import RunStore, environment

VERSION = "2"  # 2: stored parts list each frame's columns


@dataclass
class Settings:
    """The choices of an analysis; ``None`` means sized from the data by :meth:`resolve`.

    Attributes:
        parts: which parts to compute (default all of :data:`PARTS`).
        samples: examples for the surfaces (default: all, at most 1024).
        curvature_samples: examples for curvature and sharpness (default: at most 256).
        line_points: points of the 1D curve (default 41 for small problems, else 21).
        line_span: half width of the random line, or margin beyond [0, 1] of an interpolation (default 1 / 0.5).
        plane_points: points per axis of the 2D planes (default 21 for small problems, else 11).
        plane_span: half width of the random plane (default 1).
        top_k: Lanczos eigenvalues (default 5, at most the number of parameters).
        trace_probes: Hutchinson probes (default 30, 10 for large problems).
        slq_probes: SLQ probe vectors (default 2).
        slq_steps: Lanczos steps per SLQ probe (default 30, at most the number of parameters).
        dtype: Hessian dtype (default float64).
        rho: SAM radius (default 0.05); ASAM uses 10 rho.
        epsilon: Keskar's box size (default 1e-3).
        m: m-sharpness batch size (default min(32, examples // 4), at least 1).
        bn: BatchNorm policy of the surfaces (``saved`` or ``recompute``; default ``None``: the library's, which
            recomputes the running statistics along an interpolation between BatchNorm models, else keeps them).
        seed: seeds directions, probes and starting vectors.
    """

    parts: tuple[str, ...] = PARTS
    samples: int | None = None
    curvature_samples: int | None = None
    line_points: int | None = None
    line_span: float | None = None
    plane_points: int | None = None
    plane_span: float = 1.0
    top_k: int | None = None
    trace_probes: int | None = None
    slq_probes: int = 2
    slq_steps: int | None = None
    dtype: str = "float64"
    rho: float = 0.05
    epsilon: float = 1e-3
    m: int | None = None
    bn: str | None = None
    seed: int = 0

    def resolve(self, n_examples: int, n_parameters: int, interpolation: bool) -> Settings:
        """A copy with every ``None`` replaced by the default sized to ``n_examples`` and ``n_parameters``.

        The cost of a surface point is about ``examples × parameters`` multiply-adds; problems above ``5e7`` of them
        per point get the coarser grids and fewer probes.

        Raises:
            ValueError: for an unknown part or an invalid explicit setting.
        """
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ValueError(f"unknown analysis part {unknown[0]!r} (expected some of {', '.join(PARTS)})")
        for name in ("samples", "curvature_samples", "line_points", "plane_points", "top_k", "trace_probes", "m"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"Invalid {name}: {value}")
        for name in ("slq_probes", "slq_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"Invalid {name}: {value}")
        for name in ("plane_span", "rho", "epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Invalid {name}: {getattr(self, name)}")
        if self.line_span is not None and not self.line_span > 0:
            raise ValueError(f"Invalid line_span: {self.line_span}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"Invalid dtype: {self.dtype!r} (expected float32 or float64)")
        samples = self.samples or min(n_examples, 1024)
        curvature = self.curvature_samples or min(samples, 256)
        small = samples * n_parameters <= 5e7
        return dataclasses.replace(
            self,
            samples=min(samples, n_examples),
            curvature_samples=min(curvature, n_examples),
            line_points=self.line_points or (41 if small else 21),
            line_span=self.line_span if self.line_span is not None else (0.5 if interpolation else 1.0),
            plane_points=self.plane_points or (21 if small else 11),
            top_k=min(self.top_k or 5, n_parameters),
            trace_probes=self.trace_probes or (30 if small else 10),
            slq_steps=min(self.slq_steps or 30, n_parameters),
            m=self.m or max(1, min(32, min(curvature, n_examples) // 4)),
        )


@dataclass
class Analysis:
    """The results of :func:`analyse`: tidy frames by name, seconds per part, and every choice made.

    Attributes:
        frames: ``line``, ``plane``, ``eigenvalues``, ``trace``, ``density``, ``eigenplane``, ``sharpness``,
            ``barrier`` (interpolations only) and ``timings``, as computed.
        seconds: wall time of each part (``total`` included), loaded parts counting their loading only.
        reused: parts loaded from the cache.
        record: settings, target description, environment: what ``analysis.json`` holds.
        out_dir: where the CSVs and ``analysis.json`` were written.
    """

    frames: dict[str, pd.DataFrame]
    seconds: dict[str, float]
    reused: list[str]
    record: dict[str, Any]
    out_dir: Path
    files: list[Path] = field(default_factory=list)

    def __repr__(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return f"Analysis({self.out_dir}, frames={sorted(self.frames)}, {parts})"

    def summary(self) -> str:
        """A few lines: the key numbers and the time of each part."""
        lines = []
        if "line" in self.frames:
            line = self.frames["line"]
            lines.append(f"line: {len(line)} points, loss {line['loss'].min():.4g}..{line['loss'].max():.4g}")
        if "barrier" in self.frames:
            b = self.frames["barrier"].iloc[0]
            lines.append(f"barrier: loss {b['loss_barrier']:.4g}, accuracy {b['accuracy_barrier']:.4g}")
        if "plane" in self.frames:
            plane = self.frames["plane"]
            lines.append(f"plane: {len(plane)} points, loss {plane['loss'].min():.4g}..{plane['loss'].max():.4g}")
        if "eigenvalues" in self.frames:
            top = ", ".join(f"{v:.4g}" for v in self.frames["eigenvalues"]["eigenvalue"])
            lines.append(f"top eigenvalues: {top}")
        if "trace" in self.frames:
            t = self.frames["trace"].iloc[0]
            lines.append(f"trace: {t['estimate']:.4g} ± {t['standard_error']:.2g}")
        if "sharpness" in self.frames:
            s = self.frames["sharpness"]
            values = ", ".join(f"{m} {v:.4g}" for m, v in zip(s["measure"], s["value"], strict=True))
            lines.append(f"sharpness: {values}")
        timing = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        lines.append(f"time: {timing}" + (f" (reused: {', '.join(self.reused)})" if self.reused else ""))
        return "\n".join(lines)


def _state_key(model: nn.Module, batches: list[Batch], loss_fn: Callable, forward_fn: ForwardFn | None) -> str:
    """What every part's result depends on besides its settings.

    The model's tensors, code and plain attributes (:func:`landscape._grid.model_key`), the data, and the loss and
    forward functions by name and source.
    """
    from landscape._grid import config_key, function_key, model_key, run_only_key

    functions = {"loss_fn": function_key(loss_fn, "loss_fn")}
    if forward_fn is not None:
        functions["forward_fn"] = run_only_key(forward_fn, "forward_fn")
    state = {"state": model.state_dict(), "model": model_key(model), "batches": batches, "functions": functions}
    return config_key([VERSION, state])


def _fn_name(fn: Callable | None) -> str:
    from landscape._evaluation import function_name

    return function_name(fn) if fn is not None else "default"


def analyse(
    model: nn.Module,
    data: Data,
    out_dir: str | os.PathLike,
    *,
    to: nn.Module | Mapping[str, Tensor] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    forward_fn: ForwardFn | None = None,
    settings: Settings | None = None,
    record: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    force: bool = False,
) -> Analysis:
    """Run every part of the analysis of ``model`` on ``data``, write tidy CSVs and ``analysis.json`` to ``out_dir``.

    Args:
        model: the trained network (left exactly as found); analysed on its current device.
        data: a pair ``(inputs, targets)`` or an iterable of batches (see :mod:`landscape._data`).
        out_dir: the output folder (created; its ``cache/`` subfolder holds the finished parts and chunks).
        to: a second set of weights (model or parameter dict): the 1D part becomes the interpolation to it.
        loss_fn: mean loss of a batch (default cross-entropy).
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)`` for models with their own calling convention.
        settings: the analysis choices (default :class:`Settings`, sized to the data).
        record: a description of where model and data came from (stored in ``analysis.json``).
        progress: progress bars (default: when stderr is a terminal).
        force: recompute every part instead of loading finished ones.

    Returns:
        An :class:`Analysis`; its frames are also written as ``<name>.csv``.
    """
    from landscape._evaluation import cross_entropy

    start_all = time.perf_counter()
    out_dir = check_analysis_folder(out_dir)
    progress = progress if progress is not None else bool(os.isatty(2))
    loss_fn = loss_fn if loss_fn is not None else cross_entropy
    batches = as_batches(data, forward_fn=forward_fn)
    n_examples = sum(batch_length(b, forward_fn) for b in batches)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    chosen = (settings or Settings()).resolve(n_examples, n_parameters, to is not None)
    surface_batches = first_examples(batches, chosen.samples, forward_fn)
    curvature_batches = first_examples(batches, chosen.curvature_samples, forward_fn)
    names = {"loss_fn": _fn_name(loss_fn), "forward_fn": _fn_name(forward_fn)}
    key = _state_key(model, surface_batches, loss_fn, forward_fn)
    store = RunStore(out_dir / "cache", "analyse", VERSION)
    device = str(next(iter(model.parameters())).device)
    frames: dict[str, pd.DataFrame] = {}
    seconds: dict[str, float] = {}
    reused: list[str] = []
    context = _Context(model, surface_batches, curvature_batches, loss_fn, forward_fn, chosen, to, out_dir, progress)
    plan = [p for p in PARTS if p in chosen.parts]
    if "eigenplane" in plan and "eigen" not in plan:
        plan.insert(plan.index("eigenplane"), "eigen")
    to_key = _to_key(to)

    def config(part: str) -> dict[str, Any]:
        return {"part": part, "key": key, "settings": _part_settings(part, chosen), "to": to_key}

    # the eigenvector plane needs the eigenvectors, which are not stored: recompute them if it is to be computed
    vectors_needed = "eigenplane" in plan and (force or store.load(config("eigenplane")) is None)
    for part in tqdm(plan, desc="analyse", disable=not progress, leave=False):
        start = time.perf_counter()
        cached = None if force or (part == "eigen" and vectors_needed) else store.load(config(part))
        if cached is not None:
            result = _split(part, cached)
            reused.append(part)
        else:
            result = RUNNERS[part](context)
            store.save(config(part), _join(result), device, time.perf_counter() - start)
        frames |= result
        seconds[part] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - start_all
    frames["timings"] = pd.DataFrame(
        {"part": list(seconds), "seconds": list(seconds.values()), "reused": [p in reused for p in seconds]}
    )
    meta = {
        "written_by": WRITER,
        "settings": dataclasses.asdict(chosen),
        "target": dict(record or {}),
        "n_examples": n_examples,
        "n_parameters": n_parameters,
        "interpolation": to is not None,
        "loss_fn": names["loss_fn"],
        "forward_fn": names["forward_fn"],
        "state_key": key,
        "seconds": seconds,
        "reused": reused,
        "environment": environment(device),
    }
    files = publish(
        {out_dir / f"{name}.csv": frame.to_csv(index=False) for name, frame in frames.items()}
        | {out_dir / "analysis.json": json.dumps(meta, indent=2, default=str)}
    )
    return Analysis(frames, seconds, reused, meta, out_dir, files)


WRITER = "valley analyse"
"""Marks the ``analysis.json`` valley writes: a folder holding one is valley's to write into again."""


def check_analysis_folder(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a folder :func:`analyse` may write into: one where it replaces nothing valley did not write.

    An analysis writes ``*.csv``, ``analysis.json``, ``report.html`` and ``figures/``, replacing files of those
    names: where any is there, the folder must hold an ``analysis.json`` that valley wrote, else it is refused before
    any work (a user's own ``line.csv`` or ``report.html``). Other files (the checkpoint of a run folder) are left
    alone, and so is the ``cache/`` of a run interrupted before it published.

    Raises:
        OutputPathError: the folder holds files an analysis would replace and no ``analysis.json`` of valley's.
    """
    out_dir = check_output_dir(out_dir)
    names = [entry.name for entry in out_dir.iterdir()] if out_dir.is_dir() else []
    replaced = sorted(n for n in names if n.endswith(".csv") or n in ("analysis.json", "report.html", "figures"))
    older = frozenset({"settings", "state_key", "environment"})  # analysis.json before it was marked
    if replaced and not written_by_valley(out_dir / "analysis.json", WRITER, older):
        raise OutputPathError(
            f"{out_dir}: holds {', '.join(replaced[:3])}{', ...' if len(replaced) > 3 else ''} and no analysis.json "
            "that valley wrote; an analysis would replace them: choose another --out"
        )
    return out_dir


def _to_key(to: nn.Module | Mapping[str, Tensor] | None) -> str | None:
    if to is None:
        return None
    from landscape._grid import config_key

    params = {n: p.detach() for n, p in to.named_parameters()} if isinstance(to, nn.Module) else dict(to)
    return config_key(params)


def _part_settings(part: str, s: Settings) -> dict[str, Any]:
    common = {"seed": s.seed}
    by_part = {
        "line": {"samples": s.samples, "points": s.line_points, "span": s.line_span, "bn": s.bn},
        "plane": {"samples": s.samples, "points": s.plane_points, "span": s.plane_span, "bn": s.bn},
        "eigen": {"samples": s.curvature_samples, "top_k": s.top_k, "dtype": s.dtype},
        "trace": {"samples": s.curvature_samples, "probes": s.trace_probes, "dtype": s.dtype},
        "density": {"samples": s.curvature_samples, "probes": s.slq_probes, "steps": s.slq_steps, "dtype": s.dtype},
        "eigenplane": {"samples": s.samples, "points": s.plane_points, "top_k": s.top_k, "bn": s.bn, "dtype": s.dtype},
        "sharpness": {"samples": s.curvature_samples, "rho": s.rho, "epsilon": s.epsilon, "m": s.m},
    }
    return common | by_part[part]


@dataclass
class _Context:
    model: nn.Module
    surface_batches: list[Batch]
    curvature_batches: list[Batch]
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    forward_fn: ForwardFn | None
    settings: Settings
    to: nn.Module | Mapping[str, Tensor] | None
    out_dir: Path
    progress: bool
    eigen: Any = None

    def surface_options(self) -> dict[str, Any]:
        return {
            "loss_fn": self.loss_fn,
            "forward_fn": self.forward_fn,
            **({"bn": self.settings.bn} if self.settings.bn else {}),
            "cache_dir": self.out_dir / "cache" / "chunks",
            "progress": self.progress,
        }

    def hessian(self) -> Any:
        from landscape.curvature import HessianOperator

        dtype = getattr(torch, self.settings.dtype)
        return HessianOperator(self.model, self.loss_fn, self.curvature_batches, dtype, forward_fn=self.forward_fn)


def _line(c: _Context) -> dict[str, pd.DataFrame]:
    from landscape.directions import random_direction
    from landscape.surfaces import interpolate_1d, make_grid, surface_1d

    s = c.settings
    if c.to is not None:
        alphas = make_grid(-s.line_span, 1.0 + s.line_span, s.line_points, include=(0.0, 1.0))
        surface = interpolate_1d(c.model, c.model, c.to, c.surface_batches, alphas, **c.surface_options())
        frame = surface.frame().assign(kind="interpolation", bn=surface.config["bn"])
        return {"line": frame, "barrier": pd.DataFrame([surface.barrier()])}
    alphas = make_grid(-s.line_span, s.line_span, s.line_points)
    direction = random_direction(c.model, seed=s.seed)
    surface = surface_1d(c.model, c.surface_batches, direction, alphas, **c.surface_options())
    return {"line": surface.frame().assign(kind="random")}


def _plane(c: _Context) -> dict[str, pd.DataFrame]:
    from landscape.directions import random_direction
    from landscape.surfaces import make_grid, surface_2d

    s = c.settings
    grid = make_grid(-s.plane_span, s.plane_span, s.plane_points)
    directions = [random_direction(c.model, seed=s.seed + i) for i in (1, 2)]
    surface = surface_2d(c.model, c.surface_batches, directions, grid, grid, **c.surface_options())
    return {"plane": surface.frame()}


def _eigen(c: _Context) -> dict[str, pd.DataFrame]:
    from landscape.curvature import lanczos_eigenpairs

    c.eigen = lanczos_eigenpairs(c.hessian(), k=c.settings.top_k, seed=c.settings.seed, progress=c.progress)
    return {"eigenvalues": c.eigen.frame()}


def _trace(c: _Context) -> dict[str, pd.DataFrame]:
    from landscape.curvature import hutchinson_trace

    probes = c.settings.trace_probes
    result = hutchinson_trace(
        c.hessian(), probes, rtol=0.0, min_samples=max(2, probes), seed=c.settings.seed, progress=c.progress
    )
    return {"trace": result.frame()}


def _density(c: _Context) -> dict[str, pd.DataFrame]:
    from landscape.curvature import slq_density

    s = c.settings
    result = slq_density(c.hessian(), s.slq_probes, s.slq_steps, num_grid=200, seed=s.seed, progress=c.progress)
    return {"density": result.frame()}


def _eigenplane(c: _Context) -> dict[str, pd.DataFrame]:
    from landscape.directions import eigen_directions
    from landscape.surfaces import make_grid, surface_1d, surface_2d

    directions = eigen_directions(c.eigen, c.model)
    if not directions:
        raise ValueError("no eigenvector to draw a surface along")
    top = float(c.eigen.eigenvalues[0])
    if not top > 0:
        raise ValueError(f"the top Hessian eigenvalue is {top:.3g}: no curvature scale for the eigenvector plane")
    span = c.settings.plane_span * float(np.sqrt(2.0 / top))  # the quadratic model rises by 1 at the edge along v1
    grid = make_grid(-span, span, c.settings.plane_points)
    if len(directions) == 1:
        frame = surface_1d(c.model, c.surface_batches, directions[0], grid, **c.surface_options()).frame()
    else:
        frame = surface_2d(c.model, c.surface_batches, directions[:2], grid, grid, **c.surface_options()).frame()
    return {"eigenplane": frame}


def _sharpness(c: _Context) -> dict[str, pd.DataFrame]:
    from landscape.sharpness import asam_sharpness, epsilon_sharpness, m_sharpness, sam_sharpness

    s = c.settings
    common = {"loss_fn": c.loss_fn, "forward_fn": c.forward_fn}
    data = c.curvature_batches
    results = [
        sam_sharpness(c.model, data, rho=s.rho, seed=s.seed, **common),
        asam_sharpness(c.model, data, rho=10 * s.rho, seed=s.seed, **common),
        epsilon_sharpness(c.model, data, epsilon=s.epsilon, seed=s.seed, **common),
        m_sharpness(c.model, data, m=s.m, rho=s.rho, max_batches=8, progress=c.progress, **common),
    ]
    columns = ["measure", "value", "loss", "perturbed_loss"]
    return {"sharpness": pd.concat([r.frame()[columns] for r in results], ignore_index=True)}


RUNNERS: dict[str, Callable[[_Context], dict[str, pd.DataFrame]]] = {
    "line": _line,
    "plane": _plane,
    "eigen": _eigen,
    "trace": _trace,
    "density": _density,
    "eigenplane": _eigenplane,
    "sharpness": _sharpness,
}


def _join(result: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Several frames of one part as one stored frame.

    A ``frame`` column names each row's frame, a ``columns`` column lists that frame's own columns (JSON).
    """
    return pd.concat(
        [f.assign(frame=name, columns=json.dumps(list(f.columns))) for name, f in result.items()], ignore_index=True
    )


def _split(part: str, stored: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Inverse of :func:`_join`: each frame with its own columns, in their order.

    Also those that are all NaN (a regression's accuracy, the loss of NaN data): dropping them changed the files a
    rerun wrote.
    """
    return {
        str(name): rows[json.loads(rows["columns"].iloc[0])].reset_index(drop=True)
        for name, rows in stored.groupby("frame", sort=False)
    }
