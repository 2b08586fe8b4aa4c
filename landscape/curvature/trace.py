"""Stochastic trace estimation: Hutchinson's estimator and Hutch++, both stopping on a standard-error target."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from landscape.curvature._common import Seed, TorchOperator, rademacher, rng

__all__ = ["TraceResult", "hutchinson_trace", "hutchpp_trace"]


@dataclass
class TraceResult:
    r"""A trace estimate with its standard error.

    Attributes:
        estimate: the trace estimate.
        standard_error: the standard error of the estimate (for Hutch++: of its stochastic part, given the sketch).
        applications: operator applications used.
        samples: the per-probe quadratic forms :math:`z^\top A z` averaged by the estimator.
        method: name of the estimator.
        config: the estimator's arguments.
    """

    estimate: float
    standard_error: float
    applications: int
    samples: np.ndarray
    method: str
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"TraceResult({self.method}, estimate {self.estimate:.6g} ± {self.standard_error:.2g}, "
            f"{len(self.samples)} probes, applications {self.applications})"
        )

    def frame(self) -> pd.DataFrame:
        """One row: ``method, estimate, standard_error, applications, probes``."""
        return pd.DataFrame(
            [
                {
                    "method": self.method,
                    "estimate": self.estimate,
                    "standard_error": self.standard_error,
                    "applications": self.applications,
                    "probes": len(self.samples),
                }
            ]
        )


def _validate(max_applications: int, atol: float, rtol: float, min_samples: int, block: int) -> None:
    if max_applications < 1:
        raise ValueError(f"Invalid max_applications: {max_applications}")
    if atol < 0:
        raise ValueError(f"Invalid atol: {atol}")
    if rtol < 0:
        raise ValueError(f"Invalid rtol: {rtol}")
    if min_samples < 2:
        raise ValueError(f"Invalid min_samples: {min_samples}")
    if block < 1:
        raise ValueError(f"Invalid block: {block}")


def _probe_until(
    view: TorchOperator,
    generator: np.random.Generator,
    budget: int,
    offset: float,
    basis: torch.Tensor | None,
    targets: tuple[float, float, int, int],
    progress: bool,
    desc: str,
) -> np.ndarray:
    r"""Rademacher quadratic forms of :math:`PAP` (:math:`P = I - QQ^\top`, or :math:`I`) until the target or budget.

    The standard error is the sample standard deviation over :math:`\sqrt{m}`; the run stops once at least
    ``min_samples`` probes give ``se <= max(atol, rtol * |offset + mean|)``.
    """
    atol, rtol, min_samples, block = targets
    samples: list[float] = []
    with tqdm(total=budget, desc=desc, disable=not progress) as bar:
        while len(samples) < budget:
            z = view.tensor(rademacher(generator, view.n, min(block, budget - len(samples))))
            if basis is not None:
                z = z - basis @ (basis.T @ z)
            samples.extend((z * view.apply(z)).sum(dim=0).tolist())
            bar.update(z.shape[1])
            if len(samples) >= min_samples:
                se = float(np.std(samples, ddof=1) / np.sqrt(len(samples)))
                if se <= max(atol, rtol * abs(offset + float(np.mean(samples)))):
                    break
    return np.array(samples)


def hutchinson_trace(
    operator: Any,
    max_applications: int = 1000,
    atol: float = 0.0,
    rtol: float = 1e-2,
    min_samples: int = 10,
    block: int = 10,
    seed: Seed = None,
    progress: bool = False,
) -> TraceResult:
    r"""Hutchinson's trace estimator with Rademacher probes.

    .. math::
        \widehat{\mathrm{tr}}(A) = \frac{1}{m}\sum_{i=1}^{m} z_i^\top A z_i, \quad z_i \in \{\pm 1\}^n, \qquad
        \mathrm{se} = \frac{s}{\sqrt{m}},

    with :math:`s` the sample standard deviation of the :math:`z_i^\top A z_i` (Hutchinson 1990; Avron & Toledo
    2011). Probes are drawn ``block`` at a time; the run stops when ``se <= max(atol, rtol * |estimate|)`` after at
    least ``min_samples`` probes, or after ``max_applications`` probes.

    Args:
        operator: a :class:`~landscape.curvature.operator.CurvatureOperator`, a ``LinearOperator`` or a square array.
        max_applications: most operator applications (= probes).
        atol: absolute standard-error target.
        rtol: standard-error target relative to the estimate.
        min_samples: probes before the target is checked (at least 2).
        block: probes applied together (one ``matmat``).
        seed: seed or generator of the probes.
        progress: show a progress bar.

    Example:
        >>> result = hutchinson_trace(np.diag([1.0, 2.0, 3.0]), max_applications=20, seed=0)
        >>> result.estimate, result.standard_error
        (6.0, 0.0)
    """
    _validate(max_applications, atol, rtol, min_samples, block)
    view = TorchOperator(operator)
    targets = (atol, rtol, min_samples, block)
    samples = _probe_until(view, rng(seed), max_applications, 0.0, None, targets, progress, "hutchinson")
    se = float(np.std(samples, ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else float("nan")
    if len(samples) < 2:
        warnings.warn(
            "hutchinson_trace: one probe gives no standard error (NaN); allow two or more (max_applications)",
            RuntimeWarning,
            stacklevel=2,
        )
    config = {"max_applications": max_applications, "atol": atol, "rtol": rtol, "min_samples": min_samples}
    config["mode"] = view.mode
    return TraceResult(float(np.mean(samples)), se, view.applications, samples, "hutchinson", config)


def hutchpp_trace(
    operator: Any,
    max_applications: int = 1000,
    sketch_size: int | None = None,
    atol: float = 0.0,
    rtol: float = 1e-2,
    min_samples: int = 10,
    block: int = 10,
    seed: Seed = None,
    progress: bool = False,
) -> TraceResult:
    r"""Hutch++: exact trace on a sketched top subspace plus Hutchinson on the deflated rest.

    With :math:`S \in \{\pm1\}^{n\times s}`, :math:`Q = \mathrm{orth}(AS)` and Rademacher :math:`g_i`,

    .. math::
        \widehat{\mathrm{tr}}(A) = \mathrm{tr}(Q^\top A Q) + \frac{1}{m}\sum_{i=1}^{m}
        g_i^\top (I - QQ^\top) A (I - QQ^\top) g_i

    (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1). The sketch costs :math:`2s` applications; the second term is a
    Hutchinson estimate run until its standard error meets ``max(atol, rtol * |estimate|)`` (after ``min_samples``
    probes) or the budget is spent, and ``standard_error`` is its standard error (the first term is exact given
    :math:`Q`, and the :math:`g_i` are drawn independently of :math:`Q`).

    Sketch size. Given ``sketch_size``, :math:`s` is that. With ``sketch_size=None`` and a standard-error target
    (``atol`` or ``rtol`` positive, the default) the sketch is chosen by what it pays: the first ``min_samples``
    Rademacher probes :math:`S` are applied and their quadratic forms :math:`s_j^\top A s_j` checked against the
    target first; when they meet it (a flat spectrum, where a sketch would gain nothing) their Hutchinson estimate is
    returned at Hutchinson's cost (``config["sketch_size"] == 0``); otherwise :math:`AS` is the sketch
    (:math:`s` = ``min_samples``) and the run goes on as above, so the products already made are not wasted. With
    ``sketch_size=None`` and no target (``atol = rtol = 0``, a fixed budget) :math:`s` = ``max_applications // 3``:
    the paper's split :math:`m/3, m/3, m/3`. Deviation from the paper: the adaptive stop on the residual's standard
    error replaces its fixed :math:`m/3` probes.

    Args:
        operator: a :class:`~landscape.curvature.operator.CurvatureOperator`, a ``LinearOperator`` or a square array.
        max_applications: most operator applications, sketch included.
        sketch_size: columns :math:`s` of :math:`S` (``None``: chosen as above); needs
            ``2 * sketch_size + min_samples <= max_applications``.
        atol: absolute standard-error target.
        rtol: standard-error target relative to the estimate.
        min_samples: probes before the target is checked (at least 2), for the first check and the residual.
        block: probes applied together (one ``matmat``).
        seed: seed or generator of the sketch and probes.
        progress: show a progress bar.

    Example:
        >>> A = np.diag([100.0, 1.0, 1.0, 1.0])
        >>> round(hutchpp_trace(A, max_applications=30, sketch_size=4, seed=0).estimate, 6)
        103.0
    """
    _validate(max_applications, atol, rtol, min_samples, block)
    adaptive = sketch_size is None and (atol > 0 or rtol > 0)
    if sketch_size is None:
        sketch_size = min_samples if adaptive else max_applications // 3
    if sketch_size < 1 or (4 if adaptive else 2) * sketch_size + min_samples > max_applications:
        raise ValueError(
            f"Invalid sketch_size: {sketch_size} (need 1 <= 2 * sketch_size + min_samples <= {max_applications})"
        )
    view = TorchOperator(operator)
    generator = rng(seed)
    config: dict[str, Any] = {
        "max_applications": max_applications,
        "sketch_size": sketch_size,
        "sketch_rule": "adaptive" if adaptive else "fixed",
        "atol": atol,
        "rtol": rtol,
        "min_samples": min_samples,
        "mode": view.mode,
    }
    probes = view.tensor(rademacher(generator, view.n, sketch_size if adaptive else min(sketch_size, view.n)))
    sketch = view.apply(probes)
    if adaptive:  # the sketch's probes double as a first Hutchinson check
        first = (probes * sketch).sum(dim=0).double().cpu().numpy()
        se = float(np.std(first, ddof=1) / np.sqrt(len(first)))
        if se <= max(atol, rtol * abs(float(np.mean(first)))):
            config.update(sketch_size=0, low_rank_trace=0.0)
            return TraceResult(float(np.mean(first)), se, view.applications, first, "hutch++", config)
        more = view.tensor(rademacher(generator, view.n, sketch_size))  # oversample: the top space needs room
        sketch = torch.cat([sketch, view.apply(more)], dim=1)
        config["sketch_size"] = 2 * sketch_size
    basis = torch.linalg.qr(sketch).Q
    low_rank = float(torch.trace(basis.T @ view.apply(basis)))
    budget = max_applications - view.applications
    targets = (atol, rtol, min_samples, block)
    samples = _probe_until(view, generator, budget, low_rank, basis, targets, progress, "hutch++")
    se = float(np.std(samples, ddof=1) / np.sqrt(len(samples)))
    config["low_rank_trace"] = low_rank
    return TraceResult(low_rank + float(np.mean(samples)), se, view.applications, samples, "hutch++", config)
