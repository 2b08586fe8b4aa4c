r"""Sharpness of a minimum: Keskar et al.'s ε-sharpness, SAM's sharpness (first order and by ascent), m-sharpness, ASAM.

All measures evaluate the loss :math:`L(w)` of ``model`` on ``data`` (mean over examples) at perturbed parameters
through ``torch.func.functional_call`` with the model in eval mode (``mode="train"`` asks for batch statistics and
dropout; the mode is recorded in the config), and leave the model exactly as found. A loss that is not finite at
:math:`w` or at any perturbed point evaluated makes the sharpness NaN, with a warning: the maximum over the
neighbourhood is then unknown, and no plausible number is returned in its place. A half-precision model is evaluated
in float32 (its parameters, buffers and floating inputs cast; a ``forward_fn`` must cast to the parameters' dtype,
not to a fixed ``.half()``): a sharpness is a difference of two losses, which in bfloat16 would come out in whole
rounding steps of the loss.

**ε-sharpness** (Keskar et al. 2017, Eq. 4). With :math:`x` the parameters, :math:`A \in \mathbb{R}^{n \times p}`
(the identity for the full space, else a random Gaussian matrix) and the box
:math:`\mathcal{C}_\epsilon = \{z : |z_i| \le \epsilon (|(A^+ x)_i| + 1)\}`,

.. math::
    \phi_{x,f}(\epsilon, A) = \frac{\max_{y \in \mathcal{C}_\epsilon} f(x + Ay) - f(x)}{1 + f(x)} \times 100 .

The maximisation is done inexactly with L-BFGS-B (``scipy.optimize``), 10 iterations by default as in the paper; it
starts from a uniform random point of the box, since :math:`y = 0` is stationary at a minimum.

**SAM sharpness** (Foret et al. 2021, Eq. 1-2): :math:`\max_{\lVert\epsilon\rVert_2 \le \rho} L(w + \epsilon) - L(w)`,
either at the first-order maximiser :math:`\hat\epsilon = \rho \nabla L(w) / \lVert \nabla L(w) \rVert` or by projected
gradient ascent on the ball. **Adaptive sharpness** (ASAM, Kwon et al. 2021, Eq. 7-8) measures
:math:`\max_{\lVert T_w^{-1}\epsilon\rVert_2 \le \rho} L(w + \epsilon) - L(w)` with
:math:`T_w = \mathrm{diag}(|w|) + \eta I` on weights (identity on the other parameters, as the official code), whose
first-order maximiser is :math:`\hat\epsilon = \rho T_w^2 \nabla L / \lVert T_w \nabla L \rVert`. **m-sharpness**
(Foret et al. 2021, Section 4.1) averages SAM sharpness over disjoint batches of :math:`m` examples.

References:
    Keskar, Mudigere, Nocedal, Smelyanskiy, Tang. "On Large-Batch Training for Deep Learning: Generalization Gap and
    Sharp Minima." ICLR 2017.
    Foret, Kleiner, Mobahi, Neyshabur. "Sharpness-Aware Minimization for Efficiently Improving Generalization."
    ICLR 2021.
    Kwon, Kim, Park, Choi. "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural
    Networks." ICML 2021; official code github.com/SamsungLabs/ASAM.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from landscape._data import (
    Data,
    ForwardFn,
    as_batches,
    batch_length,
    batch_to,
    functional_run,
    head,
    map_tensors,
    model_device,
    trainable_parameters,
)
from landscape._evaluation import (
    MODES,
    LossFn,
    batch_fractions,
    batches_to,
    count_ignored,
    cross_entropy,
    flatten,
    function_name,
    preserved_state,
    unflatten,
)


@dataclass
class Sharpness:
    """A sharpness value with the losses it came from and its config.

    Attributes:
        measure: ``"epsilon"``, ``"sam"``, ``"asam"`` or ``"m_sharpness"``.
        value: the sharpness (φ for ``"epsilon"``, a loss difference otherwise).
        loss: :math:`L(w)`.
        perturbed_loss: the largest loss found in the neighbourhood.
        config: hyperparameters, number of loss evaluations, per-batch values for m-sharpness.
    """

    measure: str
    value: float
    loss: float
    perturbed_loss: float
    config: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Sharpness({self.measure}, value {self.value:.6g}, loss {self.loss:.6g}, "
            f"perturbed_loss {self.perturbed_loss:.6g}, evaluations {self.config.get('evaluations')})"
        )

    def frame(self) -> pd.DataFrame:
        """One row: ``measure, value, loss, perturbed_loss`` and the scalar config entries."""
        scalars = {k: v for k, v in self.config.items() if isinstance(v, (int, float, str, bool)) or v is None}
        row = {"measure": self.measure, "value": self.value, "loss": self.loss, "perturbed_loss": self.perturbed_loss}
        return pd.DataFrame([{**row, **scalars}])


class _Objective:
    """Loss of the model on fixed batches as a function of a flat parameter vector, with its gradient."""

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        loss_fn: LossFn | None,
        batch_size: int | None,
        forward_fn: ForwardFn | None = None,
    ) -> None:
        self.model, self.forward_fn = model, forward_fn
        self.batches = batches_to(as_batches(data, batch_size, forward_fn), model_device(model))
        trainable = trainable_parameters(model)
        # A sharpness is a difference of losses: in half precision it would come out in whole rounding steps of the
        # loss (0.0156 for 0.0141 in bfloat16). Half-precision models are evaluated in float32, as are their inputs.
        own = next(iter(trainable.values())).dtype
        dtype = torch.promote_types(own, torch.float32)
        self.fixed: dict[str, Tensor] = {}  # the model's other floating tensors, cast to dtype (none if not cast)
        if dtype != own:
            self.batches = [batch_to(b, model_device(model), dtype) for b in self.batches]
            others = chain(model.named_parameters(), model.named_buffers())
            self.fixed = {n: t.detach().to(dtype) for n, t in others if n not in trainable and t.is_floating_point()}
        self.params = {n: p.detach().to(dtype, copy=True) for n, p in trainable.items()}
        self.loss_fn = loss_fn if loss_fn is not None else cross_entropy
        self.weights = batch_fractions(self.batches, self.loss_fn, forward_fn)
        self.n_ignored = count_ignored(self.batches, self.loss_fn, "sharpness", forward_fn)
        self.evaluations = 0
        self.nonfinite: list[float] = []  # non-finite losses met, in order

    def __call__(self, vector: Tensor, grad: bool = False) -> tuple[float, Tensor | None]:
        vector = vector.detach().requires_grad_(grad)
        params = unflatten(vector, self.params)
        loss = 0.0
        with torch.set_grad_enabled(grad):
            for batch, weight in zip(self.batches, self.weights, strict=True):
                if weight:  # a batch of ignored targets only weighs nothing (its own loss is NaN)
                    outputs, targets = functional_run(self.model, {**self.fixed, **params}, batch, self.forward_fn)
                    loss = loss + self.loss_fn(outputs, targets) * weight
        self.evaluations += 1
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        if not math.isfinite(value):
            self.nonfinite.append(value)
        if not grad:
            return value, None
        (g,) = torch.autograd.grad(loss, vector)
        return value, g.detach()

    def config(self, mode: str) -> dict[str, Any]:
        """What every measure records about the evaluation: mode, evaluations, loss, ignored and non-finite counts."""
        return {
            "mode": mode,
            "evaluations": self.evaluations,
            "loss_fn": function_name(self.loss_fn),
            "n_ignored_targets": self.n_ignored,
            "n_nonfinite": len(self.nonfinite),
        }


def _honest(measure: str, value: float, loss: float, perturbed: float, objective: _Objective) -> tuple[float, float]:
    """``(value, perturbed)``, or NaN for both with a warning if a loss met on the way was not finite."""
    if not objective.nonfinite and math.isfinite(value):
        return value, perturbed
    met = objective.nonfinite[0] if objective.nonfinite else value
    where = "at w" if not math.isfinite(loss) else "at a perturbed point"
    warnings.warn(
        f"{measure}: the loss is not finite {where} ({met}); the sharpness is NaN "
        f"({len(objective.nonfinite)} of {objective.evaluations} evaluations not finite)",
        RuntimeWarning,
        stacklevel=3,
    )
    return math.nan, math.nan


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")


def epsilon_sharpness(
    model: nn.Module,
    data: Data,
    epsilon: float = 1e-3,
    subspace_dim: int | None = None,
    maxiter: int = 10,
    loss_fn: LossFn | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    mode: str = "eval",
    forward_fn: ForwardFn | None = None,
) -> Sharpness:
    r"""Keskar et al.'s sharpness :math:`\phi_{x,f}(\epsilon, A)` in the full space or a random subspace.

    Args:
        model: the network at the minimum :math:`x` (restored exactly afterwards).
        data: a pair ``(inputs, targets)`` or an iterable of pairs; :math:`f` is the mean loss over it.
        epsilon: box size :math:`\epsilon` (default 1e-3, one of the paper's two values).
        subspace_dim: ``None`` for :math:`A = I_n`, else :math:`p`, the columns of a Gaussian :math:`A` (the paper
            uses :math:`p = 100`).
        maxiter: L-BFGS-B iterations (default 10, as in the paper).
        loss_fn: mean loss of a batch (default cross-entropy).
        batch_size: split a single pair into batches of this size.
        seed: seeds :math:`A` and the starting point.
        mode: ``"eval"`` (default) or ``"train"``: the mode the model is evaluated in.
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)`` for models with their own calling convention.

    Example:
        >>> class Bowl(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.x = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        ...     def forward(self, inputs):
        ...         return (self.x**2).sum().expand(len(inputs))
        >>> data = (torch.zeros(1, 1), torch.zeros(1))
        >>> round(epsilon_sharpness(Bowl(), data, loss_fn=lambda out, y: out.mean()).value, 10)
        0.0002
    """
    if not epsilon > 0:
        raise ValueError(f"Invalid epsilon: {epsilon}")
    if subspace_dim is not None and subspace_dim < 1:
        raise ValueError(f"Invalid subspace_dim: {subspace_dim}")
    if maxiter < 1:
        raise ValueError(f"Invalid maxiter: {maxiter}")
    _check_mode(mode)
    with preserved_state(model):
        model.train(mode == "train")
        objective = _Objective(model, data, loss_fn, batch_size, forward_fn)
        start = flatten(objective.params)
        x = start.double().cpu().numpy()
        f0, _ = objective(start)
        rng = np.random.default_rng(seed)
        matrix = None if subspace_dim is None else rng.standard_normal((len(x), subspace_dim))
        centre = x if matrix is None else np.linalg.pinv(matrix) @ x
        bound = epsilon * (np.abs(centre) + 1.0)
        best = [f0]

        def negative(y: np.ndarray) -> tuple[float, np.ndarray]:
            z = x + (y if matrix is None else matrix @ y)
            value, grad = objective(torch.as_tensor(z).to(start), grad=True)
            if value > best[0]:
                best[0] = value
            g = grad.double().cpu().numpy()
            return -value, -(g if matrix is None else matrix.T @ g)

        from scipy.optimize import Bounds, minimize  # here: scipy.optimize takes 0.3 s to import

        result = minimize(
            negative,
            rng.uniform(-bound, bound),
            jac=True,
            method="L-BFGS-B",
            bounds=Bounds(-bound, bound),
            options={"maxiter": maxiter},
        )
    phi, perturbed = _honest("epsilon_sharpness", 100.0 * (best[0] - f0) / (1.0 + f0), f0, best[0], objective)
    config = {
        "epsilon": epsilon,
        "subspace_dim": subspace_dim,
        "maxiter": maxiter,
        "seed": seed,
        "optimizer_message": str(result.message),
        **objective.config(mode),
    }
    return Sharpness("epsilon", phi, f0, perturbed, config)


def sam_sharpness(
    model: nn.Module,
    data: Data,
    rho: float = 0.05,
    method: str = "first_order",
    steps: int = 10,
    step_size: float | None = None,
    adaptive: bool = False,
    eta: float = 0.01,
    is_weight: Callable[[str], bool] | None = None,
    loss_fn: LossFn | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    mode: str = "eval",
    forward_fn: ForwardFn | None = None,
) -> Sharpness:
    r"""SAM sharpness :math:`\max_{\lVert T^{-1}\epsilon\rVert \le \rho} L(w + \epsilon) - L(w)` (T = I, or ASAM's).

    The ascent works in :math:`\delta = T^{-1}\epsilon` on the ball :math:`\lVert\delta\rVert \le \rho`: starting from
    the first-order point, ``steps`` updates :math:`\delta \leftarrow \Pi_\rho(\delta + \gamma u / \lVert u \rVert)`
    with :math:`u = T \nabla L(w + T\delta)`; the largest loss seen is kept, so the ascent never reports less than the
    first-order value.

    Args:
        model: the network at :math:`w` (restored exactly afterwards).
        data: a pair ``(inputs, targets)`` or an iterable of pairs.
        rho: radius :math:`\rho` (default 0.05, Foret et al. 2021).
        method: ``"first_order"`` or ``"ascent"`` (projected gradient ascent).
        steps: ascent updates (default 10).
        step_size: :math:`\gamma` (default :math:`\rho`: a full-radius step along the normalised gradient, then the
            projection; Madry et al.'s :math:`2.5\rho/\text{steps}` for PGD converges slowly once on the sphere).
        adaptive: use :math:`T_w = \mathrm{diag}(|w|) + \eta I` on weights (ASAM).
        eta: :math:`\eta` of ASAM (default 0.01, Kwon et al. 2021 official code).
        is_weight: which parameter names :math:`T_w` scales (default: names containing ``"weight"``, as the
            official ASAM code; the others keep :math:`T = 1`).
        loss_fn: mean loss of a batch (default cross-entropy).
        batch_size: split a single pair into batches of this size.
        seed: seeds the random start used when the gradient is zero.
        mode: ``"eval"`` (default) or ``"train"``: the mode the model is evaluated in.
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)`` for models with their own calling convention.
    """
    if not rho > 0:
        raise ValueError(f"Invalid rho: {rho}")
    if method not in ("first_order", "ascent"):
        raise ValueError(f"Invalid method: {method!r} (expected 'first_order' or 'ascent')")
    if steps < 1:
        raise ValueError(f"Invalid steps: {steps}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"Invalid step_size: {step_size}")
    if eta < 0:
        raise ValueError(f"Invalid eta: {eta}")
    _check_mode(mode)
    gamma = step_size if step_size is not None else rho
    is_weight = is_weight if is_weight is not None else (lambda name: "weight" in name)
    with preserved_state(model):
        model.train(mode == "train")
        objective = _Objective(model, data, loss_fn, batch_size, forward_fn)
        w = flatten(objective.params)
        scale = torch.ones_like(w)
        if adaptive:
            scale = flatten(
                {n: p.abs() + eta if is_weight(n) else torch.ones_like(p) for n, p in objective.params.items()}
            )
        loss, grad = objective(w, grad=True)
        u = scale * grad
        if float(u.norm()) > 0:
            delta = rho * u / u.norm()
        elif method == "ascent":
            noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=w.dtype).to(w.device)
            delta = rho * noise / noise.norm()
        else:  # a stationary point: the first-order maximiser is w itself
            warnings.warn(
                "sam_sharpness: the (scaled) gradient is zero at w, so the first-order perturbation is zero and the "
                "sharpness is 0; method='ascent' starts from a random point instead",
                RuntimeWarning,
                stacklevel=2,
            )
            delta = torch.zeros_like(w)
        best = -math.inf
        if method == "ascent":
            for _ in range(steps):
                value, grad = objective(w + scale * delta, grad=True)
                best = max(best, value)
                u = scale * grad
                if float(u.norm()) == 0:
                    break
                delta = delta + gamma * u / u.norm()
                delta = delta * min(1.0, rho / float(delta.norm()))
        value, _ = objective(w + scale * delta)
        best = max(best, value)
    config = {
        "rho": rho,
        "method": method,
        "steps": steps if method == "ascent" else 0,
        "step_size": gamma if method == "ascent" else None,
        "adaptive": adaptive,
        "eta": eta if adaptive else None,
        **objective.config(mode),
    }
    measure = "asam" if adaptive else "sam"
    value, best = _honest(f"{measure}_sharpness", best - loss, loss, best, objective)
    return Sharpness(measure, value, loss, best, config)


def asam_sharpness(model: nn.Module, data: Data, rho: float = 0.5, eta: float = 0.01, **options: Any) -> Sharpness:
    """ASAM's adaptive sharpness: :func:`sam_sharpness` with ``adaptive=True``.

    Defaults ``rho=0.5, eta=0.01`` are those of the official ASAM code (Kwon et al. 2021). Other options as in
    :func:`sam_sharpness`.
    """
    return sam_sharpness(model, data, rho=rho, adaptive=True, eta=eta, **options)


def m_sharpness(
    model: nn.Module,
    data: Data,
    m: int,
    rho: float = 0.05,
    max_batches: int | None = None,
    progress: bool = True,
    **options: Any,
) -> Sharpness:
    r"""m-sharpness: SAM sharpness averaged over disjoint batches of ``m`` consecutive examples (Foret et al. 2021).

    .. math::
        S_m = \frac{1}{K} \sum_{k=1}^{K} \Big[\max_{\lVert\epsilon\rVert \le \rho} L_{B_k}(w + \epsilon)
        - L_{B_k}(w)\Big], \qquad |B_k| = m .

    The examples are taken in the order given (shuffle beforehand for random batches); a remainder of fewer than
    ``m`` examples is left out and counted in the config.

    Args:
        model: the network (restored exactly afterwards).
        data: a pair ``(inputs, targets)`` or an iterable of pairs.
        m: examples per batch.
        rho: radius (default 0.05).
        max_batches: use at most this many batches (default all).
        progress: show a progress bar over batches.
        **options: passed to :func:`sam_sharpness` (``method, steps, adaptive, loss_fn, ...``).
    """
    if m < 1:
        raise ValueError(f"Invalid m: {m}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"Invalid max_batches: {max_batches}")
    forward_fn = options.get("forward_fn")
    batches = as_batches(data, forward_fn=forward_fn)
    joined = _concatenate(batches)
    n = batch_length(joined, forward_fn)
    k = n // m
    if k == 0:
        raise ValueError(f"m={m} exceeds the number of examples ({n})")
    k = min(k, max_batches) if max_batches is not None else k
    results = [
        sam_sharpness(model, _tail(head(joined, (i + 1) * m), i * m), rho, **options)
        for i in tqdm(range(k), desc="m-sharpness", disable=not progress, leave=False)
    ]
    values = np.array([r.value for r in results])
    config = {
        **results[0].config,
        "m": m,
        "n_batches": k,
        "n_left_out": n - k * m,
        "per_batch": values.tolist(),
        "evaluations": sum(r.config["evaluations"] for r in results),
        "n_nonfinite": sum(r.config["n_nonfinite"] for r in results),
        "n_ignored_targets": None if forward_fn is not None else sum(r.config["n_ignored_targets"] for r in results),
    }
    loss = float(np.mean([r.loss for r in results]))
    perturbed = float(np.mean([r.perturbed_loss for r in results]))
    return Sharpness("m_sharpness", float(values.mean()), loss, perturbed, config)


def _concatenate(batches: list) -> object:
    """One batch holding every example of ``batches`` (tensors concatenated along the first dimension)."""
    if len(batches) == 1:
        return batches[0]
    leaves = [list(_flat_leaves(b)) for b in batches]
    joined = [torch.cat(parts) if parts[0].dim() > 0 else parts[0] for parts in zip(*leaves, strict=True)]
    it = iter(joined)
    return map_tensors(batches[0], lambda _: next(it))


def _flat_leaves(batch: object) -> list:
    found: list = []
    map_tensors(batch, lambda t: found.append(t) or t)
    return found


def _tail(batch: object, start: int) -> object:
    """The examples of ``batch`` from index ``start`` on."""
    return map_tensors(batch, lambda t: t[start:] if t.dim() > 0 else t)
