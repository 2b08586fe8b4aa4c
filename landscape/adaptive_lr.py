r"""Adam's adaptive learning rate :math:`\psi` and its variance against RAdam's :math:`\rho_t` (Liu et al. 2020).

RAdam's analysis: with i.i.d. gradients :math:`g \sim \mathcal{N}(0, \sigma^2)`, the bias-corrected second moment of
Adam behaves like a simple average of :math:`\rho_t` squared gradients, so :math:`\psi_t^2 = (1-\beta_2^t)/v_t` is
approximately scaled-inverse-:math:`\chi^2` with :math:`\rho_t` degrees of freedom and scale
:math:`\tau^2 = 1/\sigma^2`:

.. math::
    \rho_t = \frac{2}{1-\beta_2} - 1 - \frac{2t\beta_2^t}{1-\beta_2^t}, \qquad
    \mathrm{Var}[\psi_t] = \tau^2\Big(\frac{\rho_t}{\rho_t-2}
        - \frac{\rho_t\,\Gamma((\rho_t-1)/2)^2}{2\,\Gamma(\rho_t/2)^2}\Big)
    \approx \frac{\rho_t}{2(\rho_t-2)(\rho_t-4)\sigma^2}

(Liu et al. 2020, eqs. 4-7; the exact variance is finite for :math:`\rho_t > 2`, the first-order form is used for
:math:`\rho_t > 4`). :func:`simulate_adaptive_lr` checks this by simulation; :class:`AdaptiveLR` records
:math:`\psi` per coordinate from a real optimizer's state, and :func:`adaptive_lr_variance_from_run` compares the
recorded spread with the same formulas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from landscape._data import named_parameters
from landscape.trajectory import Measure, TrainState

__all__ = [
    "AdaptiveLR",
    "adaptive_lr_state",
    "adaptive_lr_variance_from_run",
    "exact_mean",
    "exact_variance",
    "first_order_variance",
    "rho",
    "simulate_adaptive_lr",
]


def rho(beta2: float, t: np.ndarray | int) -> np.ndarray:
    r"""RAdam's :math:`\rho_t = 2/(1-\beta_2) - 1 - 2t\beta_2^t/(1-\beta_2^t)` (Liu et al. 2020, eq. 6).

    Example:
        >>> round(float(rho(0.999, 5)), 3)
        4.996
    """
    if not 0.0 < beta2 < 1.0:
        raise ValueError(f"Invalid beta2: {beta2}")
    t = np.asarray(t, dtype=np.float64)
    power = beta2**t
    return 2.0 / (1.0 - beta2) - 1.0 - 2.0 * t * power / (1.0 - power)


def exact_mean(rho_t: np.ndarray | float, sigma: float = 1.0) -> np.ndarray:
    r"""Exact :math:`E[\psi] = \tau\sqrt{\rho/2}\,\Gamma((\rho-1)/2)/\Gamma(\rho/2)` with :math:`\tau = 1/\sigma`.

    NaN for :math:`\rho \le 1`. The mean of :math:`\psi` when
    :math:`\psi^2 \sim` Scale-inv-:math:`\chi^2(\rho, \tau^2)`.
    """
    from scipy.special import gammaln  # here, not at the top: scipy.special takes 0.2 s to import

    rho_t = np.asarray(rho_t, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        value = np.sqrt(rho_t / 2) * np.exp(gammaln((rho_t - 1) / 2) - gammaln(rho_t / 2)) / sigma
    return np.where(rho_t > 1, value, np.nan)


def exact_variance(rho_t: np.ndarray | float, sigma: float = 1.0) -> np.ndarray:
    r"""Exact :math:`\mathrm{Var}[\psi]` for Scale-inv-:math:`\chi^2(\rho, 1/\sigma^2)`; NaN where :math:`\rho \le 2`.

    Example:
        >>> round(float(exact_variance(1000.0)), 7)  # close to 1/(2 rho)
        0.0005019
    """
    from scipy.special import gammaln

    rho_t = np.asarray(rho_t, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.exp(2 * (gammaln((rho_t - 1) / 2) - gammaln(rho_t / 2)))
        value = (rho_t / (rho_t - 2) - rho_t * ratio / 2) / sigma**2
    return np.where(rho_t > 2, value, np.nan)


def first_order_variance(rho_t: np.ndarray | float, sigma: float = 1.0) -> np.ndarray:
    r"""First-order :math:`\mathrm{Var}[\psi] \approx \rho/(2(\rho-2)(\rho-4)\sigma^2)`; NaN for :math:`\rho \le 4`."""
    rho_t = np.asarray(rho_t, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = rho_t / (2 * (rho_t - 2) * (rho_t - 4) * sigma**2)
    return np.where(rho_t > 4, value, np.nan)


def _variance_with_error(samples: Tensor) -> tuple[float, float, float]:
    """Mean, unbiased variance and the standard error of the variance, sqrt((m4 - (n-3)/(n-1) s^4) / n)."""
    n = samples.numel()
    mean = samples.mean()
    centred = samples - mean
    var = float((centred**2).sum() / (n - 1))
    m4 = float((centred**4).mean())
    return float(mean), var, math.sqrt(max(m4 - (n - 3) / (n - 1) * var**2, 0.0) / n)


def simulate_adaptive_lr(
    beta2: float = 0.999,
    steps: int = 1000,
    trajectories: int = 10_000,
    sigma: float = 1.0,
    record: Iterable[int] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    r"""Simulate Adam's :math:`\psi_t = \sqrt{(1-\beta_2^t)/v_t}` under Gaussian gradients, against the formulas.

    ``trajectories`` independent runs, vectorised, of :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2)g_t^2`,
    :math:`v_0 = 0`, :math:`g_t \sim \mathcal{N}(0, \sigma^2)` (float64, no :math:`\epsilon`, as in the analysis).

    Args:
        beta2: :math:`\beta_2`.
        steps: last step :math:`T`.
        trajectories: independent runs.
        sigma: gradient standard deviation :math:`\sigma`.
        record: steps to report (``None``: all ``1..steps``).
        seed: seed of the gradients.
        progress: show a progress bar.

    Returns:
        One row per recorded step: ``step, rho, empirical_mean, empirical_var, standard_error`` (of the variance),
        ``exact_var``, ``first_order_var``, ``trajectories``.

    Example:
        >>> frame = simulate_adaptive_lr(beta2=0.9, steps=3, trajectories=100)
        >>> frame.step.tolist(), round(float(frame.rho.iloc[-1]), 4)
        ([1, 2, 3], 2.8598)
    """
    rho(beta2, 1)  # validates beta2
    if steps < 1:
        raise ValueError(f"Invalid steps: {steps}")
    if trajectories < 4:
        raise ValueError(f"Invalid trajectories: {trajectories}")
    if sigma <= 0:
        raise ValueError(f"Invalid sigma: {sigma}")
    wanted = set(range(1, steps + 1)) if record is None else {int(t) for t in record}
    if not wanted or min(wanted) < 1 or max(wanted) > steps:
        raise ValueError(f"Invalid record: steps must lie in 1..{steps}")
    generator = torch.Generator().manual_seed(seed)
    v = torch.zeros(trajectories, dtype=torch.float64)
    rows = []
    for t in tqdm(range(1, steps + 1), desc="simulate psi", disable=not progress):
        g = torch.randn(trajectories, generator=generator, dtype=torch.float64) * sigma
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if t in wanted:
            mean, var, se = _variance_with_error(torch.sqrt((1 - beta2**t) / v))
            rows.append({"step": t, "empirical_mean": mean, "empirical_var": var, "standard_error": se})
    frame = pd.DataFrame(rows)
    frame.insert(1, "rho", rho(beta2, frame.step.to_numpy()))
    frame["exact_var"] = exact_variance(frame.rho.to_numpy(), sigma)
    frame["first_order_var"] = first_order_variance(frame.rho.to_numpy(), sigma)
    frame["trajectories"] = trajectories
    return frame


def _unwrap(optimizer: Any) -> Any:
    while hasattr(optimizer, "base_optimizer"):
        optimizer = optimizer.base_optimizer
    return optimizer


def _psi(group: dict[str, Any], state: dict[str, Any], with_eps: bool) -> tuple[Tensor, int] | None:
    """ψ per coordinate and the optimizer's step count from one parameter's state, or ``None`` if not adaptive."""
    if "step" not in state:
        return None
    t = int(state["step"])
    eps = float(group.get("eps", 0.0)) if with_eps else 0.0
    if "exp_avg_sq" in state or "exp_avg_var" in state:  # Adam family, AdaBelief (s), AdaM3 (v of m)
        v = state.get("max_exp_avg_sq") if group.get("amsgrad", False) else None
        v = _wide(v if v is not None else state.get("exp_avg_sq", state.get("exp_avg_var")))
        corrected = v / (1 - group["betas"][1] ** t) if t > 0 else v
    elif "square_avg" in state and "acc_delta" not in state:  # RMSprop (Adadelta excluded)
        corrected = _wide(state["square_avg"])
        if group.get("centered", False):
            corrected = corrected - _wide(state["grad_avg"]) ** 2
    elif "sum" in state:  # Adagrad
        corrected = _wide(state["sum"])
    elif "sum_sq" in state:  # valley Expectigrad: s / n, with 0/0 := 0
        total = _wide(state["sum_sq"])
        count = _wide(state["counter"]) if "counter" in state else torch.full_like(total, float(t))
        corrected = torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
    else:
        return None
    return 1.0 / (corrected.clamp(min=0).sqrt() + eps), t


def _wide(state: Tensor) -> Tensor:
    """A state tensor in float64, before any arithmetic (float16 overflows dividing v by 1 - β₂ᵗ from v = 65.6)."""
    return state.detach().double()


def adaptive_lr_state(optimizer: Any, with_eps: bool = True) -> dict[Tensor, tuple[Tensor, int]]:
    r"""The adaptive learning rate :math:`\psi` of every parameter, read from the optimizer's state.

    :math:`\psi = 1/(\sqrt{\hat v} + \epsilon)` per coordinate, the factor Adam applies to the bias-corrected momentum
    before the learning rate, with :math:`\hat v` read under torch's state names: ``exp_avg_sq`` (or
    ``max_exp_avg_sq`` with ``amsgrad``) over :math:`1-\beta_2^t` for Adam, AdamW, NAdam, RAdam and valley's RAdam,
    AdamP, Adam2k, AdaM3; ``exp_avg_var`` (:math:`s`) likewise for AdaBelief; ``square_avg`` for RMSprop (minus
    ``grad_avg``² when centred); ``sum`` for Adagrad; ``sum_sq``/``counter`` for Expectigrad. Without
    :math:`\epsilon` this is RAdam's :math:`\psi = \sqrt{(1-\beta_2^t)/v_t}`. Note: torch's RAdam adds
    :math:`\epsilon` to :math:`\sqrt{v}` rather than :math:`\sqrt{\hat v}`, a relative difference of order
    :math:`\epsilon/\sqrt{\hat v}`; RAdam's rectification :math:`r_t` and Adagrad's ``lr_decay`` are not part of
    :math:`\psi`. Wrappers (``base_optimizer``) are unwrapped. Parameters without adaptive state are left out.

    Returns:
        ``{parameter: (psi, t)}`` with ``t`` the optimizer's step count for that parameter.
    """
    optimizer = _unwrap(optimizer)
    result = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            found = _psi(group, optimizer.state.get(p, {}), with_eps)
            if found is not None:
                result[p] = found
    return result


class AdaptiveLR(Measure):
    r"""Record the adaptive learning rate :math:`\psi` per coordinate (:func:`adaptive_lr_state`) during training.

    At scheduled steps logs, over all coordinates (``param="all"``) and, with ``per_param=True``, per parameter:
    ``psi_mean``, ``psi_var`` (unbiased, across coordinates) and ``psi_quantile`` (key ``q``). Every row carries
    ``t``, the optimizer's own step count. Logs nothing for optimizers without adaptive state (SGD).

    Args:
        every: see :class:`~landscape.trajectory.Measure`.
        at: see :class:`~landscape.trajectory.Measure`.
        quantiles: quantile levels to log.
        per_param: log every parameter as well as ``"all"``.
        with_eps: include :math:`\epsilon` in :math:`\psi` (the actual step); ``False`` gives RAdam's :math:`\psi`.
    """

    def __init__(
        self,
        every: int | None = 1,
        at: Iterable[int] | None = None,
        quantiles: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95),
        per_param: bool = False,
        with_eps: bool = True,
    ) -> None:
        super().__init__(every, at)
        if any(not 0.0 <= q <= 1.0 for q in quantiles):
            raise ValueError(f"Invalid quantiles: {quantiles}")
        self.quantiles = tuple(quantiles)
        self.per_param = per_param
        self.with_eps = with_eps

    def _log(self, state: TrainState, values: Tensor, t: int, param: str) -> None:
        array = values.cpu().numpy()
        state.log("psi_mean", float(array.mean()), param=param, t=t)
        state.log("psi_var", float(array.var(ddof=1)) if array.size > 1 else math.nan, param=param, t=t)
        for q, value in zip(self.quantiles, np.quantile(array, self.quantiles), strict=True):
            state.log("psi_quantile", float(value), param=param, t=t, q=q)

    def on_step_end(self, state: TrainState) -> None:
        if not self.due(state.step):
            return
        found = adaptive_lr_state(state.optimizer, self.with_eps)
        if not found:
            return
        names = {id(p): n for n, p in named_parameters(state.model).items()}
        if self.per_param:
            for p, (psi, t) in found.items():
                self._log(state, psi.reshape(-1), t, names.get(id(p), str(id(p))))
        t = max(t for _, t in found.values())
        self._log(state, torch.cat([psi.reshape(-1) for psi, _ in found.values()]), t, "all")


def adaptive_lr_variance_from_run(frame: pd.DataFrame, beta2: float, sigma: float | None = None) -> pd.DataFrame:
    r"""Compare a run's recorded spread of :math:`\psi` (from :class:`AdaptiveLR`) with the :math:`\rho_t` formulas.

    Coordinates play the role of the simulation's trajectories; their gradient scales differ, so the scale-free
    comparison is the squared coefficient of variation :math:`\mathrm{Var}[\psi]/E[\psi]^2` (``empirical_cv2``) against
    the exact ``exact_cv2`` = :math:`\mathrm{Var}/E^2` of Scale-inv-:math:`\chi^2(\rho_t)` and the first-order
    ``first_order_cv2`` = :math:`\rho_t/(2(\rho_t-2)(\rho_t-4))`. The variances ``exact_var`` and ``first_order_var``
    use :math:`\tau = 1/\sigma` when ``sigma`` is given, else the scale that matches the recorded mean,
    :math:`\tau = E_{emp}[\psi] / E_{\tau=1}[\psi]`.

    Args:
        frame: metrics with ``quantity`` ``psi_mean``/``psi_var``, ``param == "all"`` and the optimizer step ``t``.
        beta2: the optimizer's :math:`\beta_2`.
        sigma: gradient standard deviation, if known.

    Returns:
        One row per step: ``step, t, rho, empirical_mean, empirical_var, empirical_cv2, exact_cv2, first_order_cv2,
        exact_var, first_order_var``.
    """
    missing = {"quantity", "value", "step", "t", "param"} - set(frame.columns)
    if missing:
        raise ValueError(f"frame lacks columns {sorted(missing)} (record it with AdaptiveLR)")
    rows = frame[(frame.param == "all") & frame.quantity.isin(["psi_mean", "psi_var"])]
    if rows.empty:
        raise ValueError("frame holds no psi_mean/psi_var rows with param == 'all'")
    wide = rows.pivot_table(index=["step", "t"], columns="quantity", values="value").reset_index()
    wide = wide.rename(columns={"psi_mean": "empirical_mean", "psi_var": "empirical_var"})
    wide.columns.name = None
    rho_t = rho(beta2, wide.t.to_numpy())
    mean_unit, var_unit, first_unit = exact_mean(rho_t), exact_variance(rho_t), first_order_variance(rho_t)
    tau2 = (wide.empirical_mean.to_numpy() / mean_unit) ** 2 if sigma is None else np.full(len(wide), sigma**-2.0)
    wide.insert(2, "rho", rho_t)
    wide["empirical_cv2"] = wide.empirical_var / wide.empirical_mean**2
    wide["exact_cv2"] = var_unit / mean_unit**2
    wide["first_order_cv2"] = first_unit
    wide["exact_var"] = tau2 * var_unit
    wide["first_order_var"] = tau2 * first_unit
    return wide
