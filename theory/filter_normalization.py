r"""Filter normalisation makes loss slices invariant to rescaling a normalised filter (Li et al. 2018).

Li, Xu, Taylor, Studer, Goldstein, "Visualizing the Loss Landscape of Neural Nets", NeurIPS 2018, Sec. 4: each
filter d_f of a random direction is rescaled to the norm of the matching filter θ_f of the weights,

.. math::

    \tilde d_f = \frac{d_f}{\|d_f\|}\,\|\theta_f\|,

so d̃_f(cθ) = c·d̃_f(θ) and θ_f + αd̃_f(cθ) = c(θ_f + αd̃_f(θ)). If a normalisation follows the filter
(BatchNorm with batch statistics), f is invariant to scaling θ_f, hence the slice α ↦ f(θ + αd̃) is the same for
θ and for θ with that filter scaled by c > 0. Check 18.
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp
import torch
from torch import nn

from theory._result import CheckResult, checked_formula, is_zero, make_result

__all__ = ["filter_normalization"]

SOURCE = "Li et al. 2018, Sec. 4"
theta_ = sp.Matrix(sp.symbols("theta1:5", real=True))  # one filter (a row of 4 weights)
d_ = sp.Matrix(sp.symbols("d1:5", real=True))
SCALE = sp.sqrt(theta_.dot(theta_)) / sp.sqrt(d_.dot(d_))  # the factor multiplying d_f


def _model(seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, 4, bias=False),
        nn.BatchNorm1d(4, eps=1e-30, affine=False, track_running_stats=False),  # eps would break exact invariance
        nn.Tanh(),
        nn.Linear(4, 2),
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64))
    return model


def _slice(model: nn.Module, direction: dict[str, torch.Tensor], alphas: torch.Tensor, data: tuple) -> torch.Tensor:
    """Loss at θ + αd for each α, by ``torch.func.functional_call`` (reference loop)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    losses = []
    for alpha in alphas:
        moved = {n: p + alpha * direction[n] for n, p in params.items()}
        outputs = torch.func.functional_call(model, moved, (data[0],))
        losses.append(nn.functional.cross_entropy(outputs, data[1]))
    return torch.stack(losses).detach()


def filter_normalization(
    formula: sp.Expr | None = None, scale: float = 7.5, filter_index: int = 1, seed: int = 0
) -> CheckResult:
    r"""Item 18: filter-normalised slices are invariant to rescaling a filter followed by BatchNorm.

    Args:
        formula: Claimed factor multiplying d_f, in ``theta1..4`` and ``d1..4`` (default ‖θ_f‖/‖d_f‖).
        scale: The c > 0 applied to one filter (row) of the first layer.
        filter_index: Which filter is scaled.
        seed: Seed of the model, data and direction.

    Returns:
        The check result; value = max |slice(θ) − slice(θ with the filter scaled)| over α ∈ [−1, 1] with the
        direction normalised by the formula (float64), reference 0. ``landscape``'s filter-normalised
        ``surface_1d`` must show the same invariance; the unnormalised direction's difference is reported.
    """
    formula = checked_formula(formula, SCALE)
    c = sp.Symbol("c", positive=True)
    scaled = {t: c * t for t in theta_}
    homogeneous = is_zero(formula.subs(scaled, simultaneous=True) - c * formula)
    direction = d_ * formula
    alpha = sp.Symbol("alpha", real=True)
    point = theta_ + alpha * direction
    slice_ok = all(is_zero(e) for e in point.subs(scaled, simultaneous=True) - c * point)
    norm_ok = is_zero(direction.dot(direction) - theta_.dot(theta_))

    generator = torch.Generator().manual_seed(seed + 1)
    data = (
        torch.randn(32, 4, generator=generator, dtype=torch.float64),
        torch.randint(0, 2, (32,), generator=generator),
    )
    raw = {
        n: torch.randn(p.shape, generator=generator, dtype=torch.float64) for n, p in _model(seed).named_parameters()
    }
    ratio = sp.lambdify([list(theta_), list(d_)], formula, "math")

    def normalise(model: nn.Module) -> dict[str, torch.Tensor]:
        """Each row (filter) of a weight matrix times the claimed factor; biases set to 0 (Li et al.'s default)."""
        out = {}
        for name, p in model.named_parameters():
            d = raw[name]
            if d.dim() <= 1:
                out[name] = torch.zeros_like(d)
            else:
                factors = [ratio(w.tolist(), v.tolist()) for w, v in zip(p.detach(), d, strict=True)]
                out[name] = d * torch.tensor(factors, dtype=d.dtype)[:, None]
        return out

    model = _model(seed)
    rescaled = _model(seed)
    with torch.no_grad():
        rescaled[0].weight[filter_index].mul_(scale)
    alphas = torch.linspace(-1.0, 1.0, 11, dtype=torch.float64)
    base = _slice(model, normalise(model), alphas, data)
    deviation = float((base - _slice(rescaled, normalise(rescaled), alphas, data)).abs().max())
    plain = float((_slice(model, raw, alphas, data) - _slice(rescaled, raw, alphas, data)).abs().max())
    numeric = "float64 slices by functional_call"
    landscape = _landscape_slices(model, rescaled, raw, alphas, data, normalise)
    landscape_dev, direction_dev = (None, None) if landscape is None else landscape
    if landscape is not None:
        numeric += " + landscape.surface_1d and landscape.normalize_direction (filter normalisation)"
    # landscape's directions against the claimed factor: its guard in |d_f| + 1e-10 gives a measured relative
    # deviation of 1.9e-10; 1e-8 keeps a 50x margin, and a factor wrong by 1e-6 fails
    extra = landscape is None or (landscape_dev <= 1e-12 and direction_dev <= 1e-8)
    return make_result(
        id="filter_normalization.invariance",
        item=18,
        title="Filter-normalised slices are invariant to rescaling a normalised filter",
        formula=sp.Eq(sp.Symbol(r"\tilde d_f / d_f"), formula),
        method="subs theta->c theta: factor homogeneous of degree 1 and slice point scales by c (simplify to 0)",
        symbolic_ok=homogeneous and slice_ok and norm_ok,
        value=deviation,
        reference=0.0,
        tolerance=1e-12,
        numeric=numeric,
        source=SOURCE,
        note=(
            f"factor homogeneous: {homogeneous}; theta + alpha d~ scales by c: {slice_ok}; |d~_f| = |theta_f|: "
            f"{norm_ok}. Linear(4,4) -> BatchNorm (batch statistics, eps=1e-30: "
            f"the default 1e-5 alone gives 4e-7) -> tanh -> Linear, filter {filter_index} "
            f"scaled by {scale}: max slice difference {deviation:.2g} (tolerance 1e-12)"
            + (
                ""
                if landscape is None
                else f", landscape surface_1d {landscape_dev:.2g}; landscape's filter-normalised direction vs the "
                f"factor: max relative {direction_dev:.2g} (tolerance 1e-8)"
            )
            + f"; without normalisation the slices differ by {plain:.3g}."
        ),
        numeric_extra_ok=extra,
    )


def _landscape_slices(
    model: nn.Module,
    rescaled: nn.Module,
    raw: dict[str, torch.Tensor],
    alphas: torch.Tensor,
    data: tuple,
    normalise: Callable[[nn.Module], dict[str, torch.Tensor]],
) -> tuple[float, float] | None:
    """Landscape's slice invariance and its directions against the claimed factor, or None if landscape is absent.

    Returns the max difference of landscape's filter-normalised 1D surfaces of the two models, and the max relative
    deviation of landscape's normalised directions from ``normalise`` (the claimed factor).
    """
    try:
        from landscape.directions import normalize_direction
        from landscape.surfaces import surface_1d
    except ImportError:
        return None
    curves, direction_dev = [], 0.0
    for net in (model, rescaled):
        direction = normalize_direction(raw, net, normalization="filter")
        claimed = normalise(net)
        for name, tensor in claimed.items():
            scale = max(float(tensor.abs().max()), 1e-300)
            direction_dev = max(direction_dev, float((direction[name] - tensor).abs().max()) / scale)
        surface = surface_1d(net, data, direction, alphas.numpy(), method="loop", progress=False)
        curves.append(surface.loss)
    return float(abs(curves[0] - curves[1]).max()), direction_dev
