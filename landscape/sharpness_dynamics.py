r"""Sharpness during training against the optimizer's stability threshold (edge of stability), raw and preconditioned.

Every scheduled step the tracker measures, on a fixed probe set (the full batch, or a fixed subset of it):

* the top-``k`` eigenvalues of the Hessian :math:`H` of the loss, ``hessian_eigenvalue`` (``index`` 0 … k−1), and
  ``sharpness`` :math:`\lambda_{\max}(H)`;
* for an adaptive optimizer, the same of the preconditioned Hessian :math:`P^{-1/2}HP^{-1/2}`
  (:class:`~landscape.curvature.preconditioned.PreconditionedOperator`), ``preconditioned_eigenvalue`` and
  ``preconditioned_sharpness``, with the diagonal :math:`P` read from the optimizer's state
  (:func:`optim.preconditioner.stability`);
* ``stability_threshold``, the largest stable eigenvalue of :math:`P^{-1}H` for the optimizer's current
  hyperparameters (2/η for GD, (2+2β)/η for heavy ball, (2+2β)/((1+2β)η) for Nesterov, (2+2β₁)/((1−β₁)η) for
  Adam-type; derived in :mod:`theory.stability`), and ``sharpness_ratio``, the relevant sharpness (preconditioned
  for adaptive optimizers) over the threshold: 1 is the edge of stability (Cohen et al. 2021, 2022);
* ``probe_loss``, the loss on the probe set, and ``lanczos_products``, the Hessian-vector products the Lanczos runs
  of this measurement cost (``operator`` key: ``"hessian"`` or ``"preconditioned"``; ``start``: ``"cold"`` or
  ``"warm"``).

The eigenvalues come from :func:`~landscape.curvature.lanczos.lanczos_eigenpairs` with relative residual ``tol``.
With ``warm_start`` every run after the first starts from the previous measurement's Ritz vectors (their sum, plus a
random component of relative weight ``mix``), so while the top eigenvectors move little between measurements a
measurement costs a few products instead of a cold start's tens. Like any Krylov method started near an eigenvector,
a warm start can report the previous top eigenvalue a little longer when a different eigenvalue overtakes it; the
random component (and ``cold_every``, a periodic cold start) bounds how long.

Use it as a callback of ``studies.train.train`` (rows through ``state.log``) or in one's own loop with
:meth:`SharpnessDynamics.step` after each optimizer step, then :meth:`SharpnessDynamics.frame`. The measurement never
changes the model or the optimizer.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from landscape._data import Data, as_batches, named_parameters, run_model
from landscape._evaluation import batch_fractions, batches_to, evaluation_mode
from landscape.curvature.lanczos import lanczos_eigenpairs
from landscape.curvature.operator import HessianOperator, LossFn
from landscape.curvature.preconditioned import PreconditionedOperator
from landscape.trajectory import Measure, TrainState
from optim.preconditioner import Stability, registered, stability

__all__ = ["SharpnessDynamics", "flat_preconditioner"]


def flat_preconditioner(model: nn.Module, found: Stability) -> Tensor:
    """The diagonal of :math:`P` as one flat vector in the order of the model's trainable parameters.

    Raises:
        ValueError: a trainable parameter of the model is not one the optimizer updates.
    """
    if found.preconditioner is None:
        raise ValueError(f"the optimizer ({found.rule}) has no preconditioner")
    parts = []
    for name, p in named_parameters(model).items():
        if p not in found.preconditioner:
            raise ValueError(f"parameter {name!r} is trainable but not updated by the optimizer")
        parts.append(found.preconditioner[p].reshape(-1).double())
    return torch.cat(parts)


class SharpnessDynamics(Measure):
    r"""Track (preconditioned) sharpness, the stability threshold and their ratio during training.

    Args:
        loss_fn: ``loss_fn(outputs, targets)``, a mean over the batch: the training loss.
        data: the fixed probe set, a pair ``(inputs, targets)`` or an iterable of pairs (e.g. the full training set
            for full-batch training).
        every: measure every ``every`` optimizer steps (see :class:`~landscape.trajectory.Measure`).
        at: explicit steps to measure at.
        k: number of top eigenvalues.
        preconditioned: measure :math:`P^{-1/2}HP^{-1/2}` too: ``None`` when the optimizer has a preconditioner,
            ``False`` never (``True`` requires one).
        dtype: dtype of the Hessian-vector products.
        batch_size: split the probe set into batches of this size (memory bound).
        tol: relative Ritz residual of the Lanczos runs, :math:`\lVert Hy - \theta y\rVert \le` ``tol`` ·
            :math:`|\theta|`; the eigenvalue error is at most ``tol² θ²/gap`` (1e-6 relative for a gap of θ).
        warm_start: start each Lanczos run from the previous Ritz vectors.
        mix: relative weight of the random component added to a warm start vector.
        cold_every: every ``cold_every``-th measurement starts cold anyway (``None``: never).
        seed: seed of the random start and mixing vectors.
    """

    def __init__(
        self,
        loss_fn: LossFn,
        data: Data,
        every: int | None = 20,
        at: Iterable[int] | None = None,
        k: int = 1,
        preconditioned: bool | None = None,
        dtype: torch.dtype = torch.float64,
        batch_size: int | None = None,
        tol: float = 1e-3,
        warm_start: bool = True,
        mix: float = 0.1,
        cold_every: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(every, at)
        if k < 1:
            raise ValueError(f"Invalid k: {k}")
        if not tol > 0:
            raise ValueError(f"Invalid tol: {tol}")
        if not mix >= 0:
            raise ValueError(f"Invalid mix: {mix}")
        if cold_every is not None and cold_every < 1:
            raise ValueError(f"Invalid cold_every: {cold_every}")
        self.loss_fn, self.batches = loss_fn, as_batches(data, batch_size)
        self.k, self.preconditioned, self.dtype, self.tol = k, preconditioned, dtype, tol
        self.warm_start, self.mix, self.cold_every, self.seed = warm_start, mix, cold_every, seed
        self.reset()

    def reset(self) -> None:
        """Forget the warm-start vectors and the recorded rows."""
        self.generator = np.random.default_rng(self.seed)
        self.vectors: dict[str, Tensor] = {}
        self.measurements = 0
        self.records: list[dict[str, Any]] = []
        self._warned: set[str] = set()

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _start(self, operator: str, n: int) -> tuple[np.ndarray | None, str]:
        cold = self.cold_every is not None and self.measurements % self.cold_every == 0
        previous = self.vectors.get(operator)
        if not self.warm_start or previous is None or cold or previous.shape[0] != n:
            return None, "cold"
        start = previous.sum(dim=1).cpu().numpy()
        start = start / np.linalg.norm(start)
        noise = self.generator.standard_normal(n)
        return start + self.mix * noise / np.linalg.norm(noise), "warm"

    def _top(self, operator: Any, name: str) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Top-``k`` eigenvalues of ``operator`` (rows and values), warm-started when possible."""
        start, kind = self._start(name, operator.shape[0])
        k = min(self.k, operator.shape[0])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            result = lanczos_eigenpairs(
                operator, k=k, tol=self.tol, v0=start, seed=self.generator, residual_tol=self.tol
            )
        if caught or not result.converged.all():
            self._warn(f"lanczos-{name}", f"SharpnessDynamics: a Lanczos run on the {name} operator did not converge")
        self.vectors[name] = torch.as_tensor(result.eigenvectors)
        rows = [
            {"quantity": f"{name}_eigenvalue", "value": float(v), "index": i} for i, v in enumerate(result.eigenvalues)
        ]
        rows.append({"quantity": "lanczos_products", "value": float(result.applications), "operator": name})
        rows[-1]["start"] = kind
        return rows, result.eigenvalues

    def _stability(self, optimizer: Any) -> Stability | None:
        if optimizer is None:
            return None
        found = stability(optimizer)
        if found.weight_decay:
            self._warn(
                "decay",
                f"SharpnessDynamics: weight decay {found.weight_decay:g} is not part of the stability threshold, "
                "which models the loss alone",
            )
        return found

    def measure(self, model: nn.Module, optimizer: Any = None) -> list[dict[str, Any]]:
        """One measurement at the model's current weights: tidy rows ``{quantity, value, ...}`` (no ``step``)."""
        found = self._stability(optimizer)
        want = self.preconditioned
        if want and (found is None or found.preconditioner is None):
            raise ValueError("preconditioned=True needs an optimizer with a registered preconditioner")
        use_p = found is not None and found.preconditioner is not None and want is not False
        hessian = HessianOperator(model, self.loss_fn, self.batches, dtype=self.dtype)
        rows, values = self._top(hessian, "hessian")
        rows.append({"quantity": "sharpness", "value": float(values[0])})
        relevant = float(values[0])
        if use_p:
            diagonal = flat_preconditioner(model, found)
            pre_rows, pre_values = self._top(PreconditionedOperator(hessian, diagonal), "preconditioned")
            rows += pre_rows + [{"quantity": "preconditioned_sharpness", "value": float(pre_values[0])}]
            relevant = float(pre_values[0])
        elif found is not None and found.preconditioner is not None:
            relevant = math.nan  # preconditioned=False on an adaptive optimizer: no honest ratio
        if found is not None:
            rows.append({"quantity": "stability_threshold", "value": found.threshold, "rule": found.rule})
            rows.append({"quantity": "sharpness_ratio", "value": relevant / found.threshold, "rule": found.rule})
        rows.append({"quantity": "probe_loss", "value": self._loss(model)})
        self.measurements += 1
        return rows

    def _loss(self, model: nn.Module) -> float:
        """The loss over the probe batches in eval mode, as the Hessian rows see the model; its modes are put back.

        In train mode dropout would be drawn and BatchNorm's running statistics updated.
        """
        batches = batches_to(self.batches, next(model.parameters()).device)
        weights = batch_fractions(batches, self.loss_fn)
        with evaluation_mode(model, "eval"), torch.no_grad():
            return sum(
                float(self.loss_fn(*run_model(model, b))) * w for b, w in zip(batches, weights, strict=True) if w
            )

    def _record(self, step: int, rows: list[dict[str, Any]]) -> None:
        self.records += [{"step": step, **row} for row in rows]

    def step(self, model: nn.Module, optimizer: Any, step: int, loss: float | Tensor | None = None) -> None:
        """In one's own loop, after optimizer step ``step``: measure if due; ``loss`` adds a ``train_loss`` row."""
        if not self.due(step):
            return
        rows = self.measure(model, optimizer)
        if loss is not None:
            value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
            rows.append({"quantity": "train_loss", "value": value})
        self._record(step, rows)

    def frame(self) -> pd.DataFrame:
        """Every row recorded so far: ``step, quantity, value`` and the keys (``index``, ``operator``, …)."""
        return pd.DataFrame.from_records(self.records)

    def on_train_begin(self, state: TrainState) -> None:
        if state.optimizer is not None and type(state.optimizer) not in registered():
            names = ", ".join(sorted(cls.__name__ for cls in registered()))
            raise TypeError(f"No stability model for {type(state.optimizer).__name__}; registered: {names}")
        self.reset()

    def on_step_end(self, state: TrainState) -> None:
        if not self.due(state.step):
            return
        rows = self.measure(state.model, state.optimizer)
        self._record(state.step, rows)
        for row in rows:
            state.log(row["quantity"], row["value"], **{k: v for k, v in row.items() if k not in ("quantity", "value")})
