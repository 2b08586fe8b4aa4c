"""Every theory check must fail when the implementation it reads is broken, or the formula is slightly wrong.

Three kinds of negative control, each run on the check's default arguments (which pass, see the other files):

- ``BROKEN``: the implementation a check reads (an optimizer, estimator, projection, ...) is replaced by a
  deliberately broken one, most of them wrong by a relative 1e-6 or by one realistic slip, and the check must fail.
- ``TIGHT``: the claimed formula is multiplied by 1 + 1e-6 (RAdam's rho_t by 1 + 1e-10); every check that states
  a float64 tolerance (1e-9 or tighter) must then fail numerically (the symbolic half fails anyway, so
  ``numeric_ok`` is what is asserted).
- ``STATISTICAL``: for the Monte Carlo checks (tolerance k standard errors) a formula off by a few per cent must make
  the headline comparison fail; a standard deviation used where a standard error belongs (a tolerance sqrt(n)
  times too wide) lets it pass, so these tests catch that.

Reddi's check runs 300 periods here (its tolerance, the finite-period bound, is then 0.4% instead of 0.12%).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import sympy as sp
import torch

import landscape.adaptive_lr
import landscape.curvature
import landscape.directions
import landscape.reparam
import landscape.sharpness
import optim
import optim.radam
import optim.sgdp
import optim.xgrad
from theory import (
    adam,
    adamp,
    curvature,
    ensembles,
    filter_normalization,
    radam,
    reddi,
    repulsion,
    sam,
    schedules,
    sharpness,
    xgrad,
)

MILLIONTH = sp.Rational(1_000_001, 1_000_000)


# ---- broken implementations ------------------------------------------------------------------------------------


def _rectification_rho_inf_plus_one(step: int, beta2: float) -> tuple[float, float]:
    """RAdam's (rho_t, r_t) with rho_inf = 2/(1 - beta2) + 1 (a sign slip)."""
    rho_inf = 2.0 / (1.0 - beta2) + 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / (1.0 - beta2**step)
    if rho_t <= 4.0:
        return rho_t, math.nan
    return rho_t, ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5


def _radam_state_rho(monkeypatch):
    monkeypatch.setattr(optim.radam, "rectification", _rectification_rho_inf_plus_one)
    return radam.center_of_mass()


def _radam_state_r_t(monkeypatch):
    original = optim.radam.rectification

    def r_t_off(step, beta2):
        rho_t, r_t = original(step, beta2)
        return rho_t, r_t * 1.000001

    monkeypatch.setattr(optim.radam, "rectification", r_t_off)
    return radam.rectification()


def _landscape_exact_variance(monkeypatch):
    original = landscape.adaptive_lr.exact_variance
    monkeypatch.setattr(
        landscape.adaptive_lr, "exact_variance", lambda rho_t, sigma=1.0: original(rho_t, sigma) * 1.000001
    )
    return radam.exact_variance()


def _landscape_simulation_columns(monkeypatch):
    original = landscape.adaptive_lr.simulate_adaptive_lr

    def first_order_off(*args, **kwargs):
        frame = original(*args, **kwargs)
        return frame.assign(first_order_var=frame["first_order_var"] * 1.000001)

    monkeypatch.setattr(landscape.adaptive_lr, "simulate_adaptive_lr", first_order_off)
    return radam.adaptive_lr_monte_carlo()


def _sam_perturbation(monkeypatch):
    original = optim.SAM.first_step

    def too_long(self):
        original(self)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    point = self.state[p].get("point")
                    if point is not None:
                        p.copy_(point + (p - point) * 1.000001)  # epsilon a millionth too long

    monkeypatch.setattr(optim.SAM, "first_step", too_long)
    return sam.dual_norm()


def _landscape_sam_sharpness(monkeypatch):
    original = landscape.sharpness.sam_sharpness

    def off(*args, **kwargs):
        result = original(*args, **kwargs)
        return dataclasses.replace(result, value=result.value * 1.000001)

    monkeypatch.setattr(landscape.sharpness, "sam_sharpness", off)
    return sam.quadratic_sharpness()


def _sgdp_projection_eps(monkeypatch):
    original = optim._projection.radial_factor

    def wrong_eps(param, update, view, *, eps):
        return original(param, update, view, eps=1e-3)  # the normaliser theta/(|theta| + eps) with a visible eps

    monkeypatch.setattr(optim._projection, "radial_factor", wrong_eps)
    return adamp.norm_growth()


class _ExpectigradWithoutSqrt(torch.optim.Optimizer):
    """Expectigrad dividing by the mean of squares instead of its square root (a forgotten sqrt)."""

    def __init__(self, params, lr, beta, eps=1e-8):
        super().__init__(params, {"lr": lr, "beta": beta, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state.update(t=0, s=torch.zeros_like(p), m=torch.zeros_like(p))
                state["t"] += 1
                state["s"].add_(p.grad**2)
                u = p.grad / (state["s"] / state["t"] + group["eps"])
                if group["beta"] > 0:
                    state["m"].mul_(group["beta"]).add_(u, alpha=1 - group["beta"])
                    p.sub_(group["lr"] / (1 - group["beta"] ** state["t"]) * state["m"])
                else:
                    p.sub_(group["lr"] * u)


def _expectigrad(monkeypatch):
    monkeypatch.setattr(optim, "Expectigrad", _ExpectigradWithoutSqrt)
    result = reddi.reddi_counterexample(periods=300)
    assert abs(result.value - result.reference) > result.tolerance  # the Expectigrad comparison itself fails
    return result


def _xgrad_direction(monkeypatch):
    original = optim.xgrad.direction

    def off(*args, **kwargs):
        found = original(*args, **kwargs)
        return None if found is None else (found[0] * 1.000001, *found[1:])

    monkeypatch.setattr(optim.xgrad, "direction", off)
    return xgrad.weight_prediction()


def _repulsion_sigma_not_squared(monkeypatch):
    def penalty(self):
        total = sum(torch.exp(-self._squared_distance(c) / (2 * self.sigma)) for c in self.checkpoints)
        return self.strength * total

    monkeypatch.setattr(optim.CheckpointRepulsion, "penalty", penalty)
    return repulsion.kernel_gradient()


def _epsilon_sharpness(monkeypatch):
    original = landscape.sharpness.epsilon_sharpness

    def wider(model, data, epsilon, **kwargs):
        return original(model, data, epsilon=epsilon * 1.000001, **kwargs)  # the box a millionth too wide

    monkeypatch.setattr(landscape.sharpness, "epsilon_sharpness", wider)
    return sharpness.keskar_box_maximum()


def _rescale_relu(monkeypatch):
    original = landscape.reparam.rescale_relu_layers

    def off(model, first, second, alpha, inplace=False):
        return original(model, first, second, alpha * 1.000001, inplace=inplace)

    monkeypatch.setattr(landscape.reparam, "rescale_relu_layers", off)
    return sharpness.dinh_reparametrization()


def _layer_normalisation(monkeypatch):
    original = landscape.directions.normalize_direction

    def layer(direction, theta, normalization="filter", bias_bn="zero"):
        return original(direction, theta, normalization="layer", bias_bn=bias_bn)

    monkeypatch.setattr(landscape.directions, "normalize_direction", layer)
    return filter_normalization.filter_normalization()


def _hutchinson_reports_std(monkeypatch):
    original = landscape.curvature.hutchinson_trace

    def std_as_se(*args, **kwargs):
        result = original(*args, **kwargs)
        return dataclasses.replace(result, standard_error=result.standard_error * math.sqrt(result.applications))

    monkeypatch.setattr(landscape.curvature, "hutchinson_trace", std_as_se)
    return curvature.hutchinson()


def _hutchinson_biased(monkeypatch):
    original = landscape.curvature.hutchinson_trace

    def biased(*args, **kwargs):
        result = original(*args, **kwargs)
        return dataclasses.replace(result, estimate=result.estimate * 1.15)

    monkeypatch.setattr(landscape.curvature, "hutchinson_trace", biased)
    return curvature.hutchinson()


def _lanczos_off(monkeypatch):
    original = landscape.curvature.lanczos_eigenpairs

    def off(*args, **kwargs):
        result = original(*args, **kwargs)
        return dataclasses.replace(result, eigenvalues=result.eigenvalues * 1.000001)

    monkeypatch.setattr(landscape.curvature, "lanczos_eigenpairs", off)
    return curvature.hutchinson()


def _hessian_operator_off(monkeypatch):
    original = landscape.curvature.HessianOperator._graph_product

    def off(self, *arguments):
        return original(self, *arguments) * 1.000001

    monkeypatch.setattr(landscape.curvature.HessianOperator, "_graph_product", off)
    return curvature.hutchinson()


BROKEN = {
    "RAdam state rho_t (rho_inf + 1)": _radam_state_rho,
    "RAdam state r_t (1e-6)": _radam_state_r_t,
    "landscape exact_variance (1e-6)": _landscape_exact_variance,
    "landscape simulate_adaptive_lr first order (1e-6)": _landscape_simulation_columns,
    "SAM perturbation (1e-6)": _sam_perturbation,
    "landscape sam_sharpness (1e-6)": _landscape_sam_sharpness,
    "SGDP projection eps": _sgdp_projection_eps,
    "Expectigrad without sqrt": _expectigrad,
    "XGrad direction (1e-6)": _xgrad_direction,
    "repulsion sigma not squared": _repulsion_sigma_not_squared,
    "epsilon_sharpness box (1e-6)": _epsilon_sharpness,
    "rescale_relu_layers alpha (1e-6)": _rescale_relu,
    "normalize_direction layer-wise": _layer_normalisation,
    "Hutchinson SE = standard deviation": _hutchinson_reports_std,
    "Hutchinson biased 15%": _hutchinson_biased,
    "Lanczos eigenvalues (1e-6)": _lanczos_off,
    "HessianOperator HVP (1e-6)": _hessian_operator_off,
}


@pytest.mark.parametrize("case", list(BROKEN), ids=list(BROKEN))
def test_check_fails_on_a_broken_implementation(case, monkeypatch):
    result = BROKEN[case](monkeypatch)
    assert result.symbolic_ok, result.note  # the formula is right: only the implementation was broken
    assert not result.numeric_ok and not result.passed, result.note


# ---- formulas wrong by one part in a million ------------------------------------------------------------------

TIGHT = {
    # rho_t is checked to 1e-12 rho_inf (measured 1.4e-14 rho_inf): even one part in 1e10 fails
    "radam.center_of_mass (1e-10)": lambda: radam.center_of_mass(formula=radam.RHO_T * sp.Rational(10**10 + 1, 10**10)),
    "radam.exact_variance": lambda: radam.exact_variance(formula=radam.EXACT * MILLIONTH),
    "radam.rectification": lambda: radam.rectification(formula=radam.R_T * MILLIONTH),
    "radam.adaptive_lr_monte_carlo": lambda: radam.adaptive_lr_monte_carlo(formula=radam.EXACT * MILLIONTH),
    "adam.bias_correction": lambda: adam.bias_correction(formula=adam.BIAS * MILLIONTH),
    "adam.sparse_step_bound": lambda: adam.sparse_step_bound(formula=adam.RATIO * MILLIONTH),
    "adam.momentum_terminal_velocity": lambda: adam.momentum_terminal_velocity(formula=adam.TERMINAL * MILLIONTH),
    "sam.dual_norm": lambda: sam.dual_norm(formula=sam.EPSILON * 1.000001),  # a Float: sympy is 2x faster
    "sam.quadratic_sharpness": lambda: sam.quadratic_sharpness(formula=sam.QUADRATIC_MAX * MILLIONTH),
    "adamp.scale_invariance": lambda: adamp.scale_invariance(formula=adamp.GRADIENT_SCALE * MILLIONTH),
    "adamp.norm_growth": lambda: adamp.norm_growth(formula=adamp.GROWTH * MILLIONTH),
    "xgrad.weight_prediction": lambda: xgrad.weight_prediction(
        formula=xgrad.theta_ - xgrad.gamma_ * xgrad.s_ * xgrad.delta_ * MILLIONTH
    ),
    "repulsion.kernel_gradient": lambda: repulsion.kernel_gradient(formula=repulsion.DERIVATIVE * MILLIONTH),
    "sharpness.keskar_box_maximum": lambda: sharpness.keskar_box_maximum(formula=sharpness.BOX_MAXIMUM * MILLIONTH),
    "sharpness.dinh_reparametrization": lambda: sharpness.dinh_reparametrization(
        formula=sharpness.TOP_EIGENVALUE * MILLIONTH
    ),
    "filter_normalization": lambda: filter_normalization.filter_normalization(
        formula=filter_normalization.SCALE * MILLIONTH
    ),
    "schedules.cosine_annealing": lambda: schedules.cosine_annealing(formula=schedules.COSINE * MILLIONTH),
}


@pytest.mark.parametrize("name", list(TIGHT))
def test_formula_wrong_by_a_millionth_fails(name):
    result = TIGHT[name]()
    assert not result.numeric_ok and not result.passed, result.note


# ---- Monte Carlo checks: a formula a few per cent off fails the headline comparison --------------------------
# the factors are about three times the measured relative tolerance (k standard errors) of the default arguments

STATISTICAL = {
    "radam.scaled_inv_chi2_moments (5%)": lambda: radam.scaled_inv_chi2_moments(formula=radam.FIRST_ORDER * 1.05),
    "radam.exact_variance (5%)": lambda: radam.exact_variance(formula=radam.EXACT * sp.Rational(105, 100)),
    "radam.adaptive_lr_monte_carlo (20%)": lambda: radam.adaptive_lr_monte_carlo(
        formula=radam.EXACT * sp.Rational(12, 10)
    ),
    "adam.bias_correction (3%)": lambda: adam.bias_correction(formula=adam.BIAS * sp.Rational(103, 100)),
    "reddi.counterexample (1%)": lambda: reddi.reddi_counterexample(
        formula=reddi.DISPLACEMENT * sp.Rational(101, 100), periods=300
    ),
    "curvature.hutchinson (15%)": lambda: curvature.hutchinson(formula=curvature.VARIANCE * sp.Rational(115, 100)),
    "ensembles.ensemble_error (5%)": lambda: ensembles.ensemble_error(
        formula=ensembles.ENSEMBLE_ERROR * sp.Rational(105, 100)
    ),
}


@pytest.mark.parametrize("name", list(STATISTICAL))
def test_monte_carlo_tolerance_is_standard_errors(name):
    result = STATISTICAL[name]()
    assert abs(result.value - result.reference) > result.tolerance, result.note
    assert not result.passed


def test_standard_error_helpers_divide_by_sqrt_n():
    from theory._result import mean_and_se, variance_and_se

    samples = np.random.default_rng(0).standard_normal(10_000)
    mean, se = mean_and_se(samples)
    assert se == pytest.approx(samples.std(ddof=1) / 100, rel=1e-12)
    variance, se_var = variance_and_se(samples)
    assert variance == pytest.approx(samples.var(), rel=1e-12)
    # Var of the centred squares of N(0, 1) is 2: SE ~ sqrt(2/n) = 0.0141
    assert se_var == pytest.approx(math.sqrt(2 / 10_000), rel=0.05)
