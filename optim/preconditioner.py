r"""The diagonal preconditioner and the stability threshold of an optimizer, read from its state and hyperparameters.

On a quadratic :math:`L(\theta) = \tfrac12\theta^\top H\theta` an optimizer with a frozen diagonal preconditioner
:math:`P` and momentum is stable exactly when every eigenvalue :math:`a` of :math:`P^{-1}H` (the same as those of
:math:`P^{-1/2}HP^{-1/2}`) lies below a threshold fixed by its hyperparameters (derived in :mod:`theory.stability`):

* GD, :math:`\theta \leftarrow \theta - \eta g`: :math:`2/\eta` (:math:`P = I`);
* heavy ball, :math:`b \leftarrow \mu b + (1-d)g,\ \theta \leftarrow \theta - \eta b`:
  :math:`(2+2\mu)/((1-d)\eta)` (:math:`P = I`);
* Nesterov, :math:`b \leftarrow \mu b + g,\ \theta \leftarrow \theta - \eta(g + \mu b)`:
  :math:`(2+2\mu)/((1+2\mu)\eta)` (:math:`P = I`);
* Adam-type, :math:`m \leftarrow \beta_1 m + (1-\beta_1)g,\ \theta \leftarrow \theta - \eta P^{-1}m`:
  :math:`(2+2\beta_1)/((1-\beta_1)\eta)` on :math:`\lambda_{\max}(P^{-1}H)`;
* RMSprop with torch's momentum :math:`b \leftarrow \mu b + P^{-1}g`: :math:`(2+2\mu)/\eta`;
* Adagrad: :math:`2/\eta`.

:math:`P` is the diagonal by which the optimizer divided its (EMA) momentum in its last step :math:`t`, so that
step was exactly :math:`\eta P^{-1}m_t` with the group's ``lr`` :math:`\eta` (the next step uses the same
:math:`P` up to one more update of the second moment); it is read from the state
(Cohen et al. 2022, "Adaptive gradient methods at the edge of stability", Sec. 2, who fold the first-moment bias
correction into :math:`P` the same way):

* Adam, AdamW (torch): :math:`P = (1-\beta_1^t)(\sqrt{v_t/(1-\beta_2^t)} + \epsilon)`, with ``max_exp_avg_sq`` for
  AMSGrad;
* RAdam (``optim.RAdam`` and ``torch.optim.RAdam``): when rectified,
  :math:`P = (1-\beta_1^t)(\sqrt{v_t}+\epsilon)/(r_t\sqrt{1-\beta_2^t})`; when not (the SGD-with-momentum branch),
  :math:`P = (1-\beta_1^t)I`;
* AdaBelief: :math:`P = (1-\beta_1^t)(\sqrt{s_t/(1-\beta_2^t)} + \epsilon)`, and as RAdam when rectified;
* AdaM3: :math:`P = (1-\beta_1^t)\sqrt{v_t/(1-\beta_2^t)}` (ε lives inside :math:`v`);
* RMSprop: :math:`P = \sqrt{v_t} + \epsilon` (:math:`\sqrt{v_t - \bar g_t^2} + \epsilon` when centred);
* Adagrad: :math:`P = (1 + (t-1)\delta)(\sqrt{G_t} + \epsilon)` with ``lr_decay`` δ, so the step
  :math:`\eta/(1+(t-1)\delta)\cdot g/(\sqrt{G_t}+\epsilon)` is :math:`\eta P^{-1}g`.

The thresholds model the loss alone: weight decay (coupled, or AdamW's decoupled shrinkage) moves the true
threshold by a term of order λ, which :attr:`Stability.weight_decay` reports so that a caller can warn. Every
hyperparameter in the threshold must be the same in all parameter groups (else ``ValueError``).

Adding an optimizer = one function ``(optimizer) -> Stability`` decorated with :func:`register`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch import optim as torch_optim
from torch.optim import Optimizer

from optim.adabelief import AdaBelief
from optim.adam3 import AdaM3
from optim.radam import RAdam, rectification

__all__ = ["Stability", "adam_threshold", "registered", "register", "stability"]


@dataclass(frozen=True)
class Stability:
    """The quadratic stability model of an optimizer at its current state.

    Attributes:
        rule: ``"gd"``, ``"heavy_ball"``, ``"nesterov"``, ``"adam"`` (EMA momentum with a preconditioner),
            ``"rmsprop"`` or ``"adagrad"``.
        threshold: the largest stable eigenvalue of :math:`P^{-1}H` (of :math:`H` when ``preconditioner`` is None).
        preconditioner: parameter → diagonal of :math:`P` (same shape); ``None`` for :math:`P = I`.
        weight_decay: the (largest) weight decay of the groups, not part of the threshold.
        hyper: the hyperparameters the threshold was computed from.
    """

    rule: str
    threshold: float
    preconditioner: dict[Tensor, Tensor] | None
    weight_decay: float
    hyper: dict[str, float]


_FAMILIES: dict[type, Callable[[Optimizer], Stability]] = {}


def register(*classes: type) -> Callable[[Callable[[Optimizer], Stability]], Callable[[Optimizer], Stability]]:
    """Decorator: ``function(optimizer) -> Stability`` serves optimizers of exactly these classes."""

    def decorate(function: Callable[[Optimizer], Stability]) -> Callable[[Optimizer], Stability]:
        for cls in classes:
            _FAMILIES[cls] = function
        return function

    return decorate


def registered() -> list[type]:
    """The optimizer classes with a registered stability model."""
    return list(_FAMILIES)


def stability(optimizer: Optimizer) -> Stability:
    """The :class:`Stability` of ``optimizer`` now (its preconditioner from the state of its last step).

    Raises:
        TypeError: no stability model is registered for the optimizer's class (wrappers such as SAM included).
        ValueError: the state holds no preconditioner yet (before the first step), or the groups disagree on a
            hyperparameter of the threshold.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> round(stability(torch.optim.SGD([p], lr=0.1, momentum=0.9)).threshold, 12)
        38.0
    """
    function = _FAMILIES.get(type(optimizer))
    if function is None:
        known = ", ".join(sorted(cls.__name__ for cls in _FAMILIES))
        raise TypeError(f"No stability model for {type(optimizer).__name__}; registered: {known}")
    return function(optimizer)


def adam_threshold(lr: float, beta1: float) -> float:
    r"""The Adam-type threshold :math:`(2+2\beta_1)/((1-\beta_1)\eta)` (38/η for β₁ = 0.9).

    Example:
        >>> round(adam_threshold(1.0, 0.9), 12)
        38.0
    """
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


def _shared(optimizer: Optimizer, *keys: str) -> dict[str, Any]:
    """The values of ``keys`` shared by every parameter group (``ValueError`` if they differ)."""
    first = {key: optimizer.param_groups[0][key] for key in keys}
    for group in optimizer.param_groups[1:]:
        for key in keys:
            if group[key] != first[key]:
                raise ValueError(
                    f"{type(optimizer).__name__}: parameter groups differ in {key!r} ({first[key]} vs {group[key]}); "
                    "the stability threshold needs one value"
                )
    return first


def _decay(optimizer: Optimizer) -> float:
    return max(float(group.get("weight_decay", 0.0)) for group in optimizer.param_groups)


def _per_param(optimizer: Optimizer, diagonal: Callable[[dict[str, Any], dict[str, Any]], Tensor]) -> dict:
    """``diagonal(group, state)`` for every parameter; ``ValueError`` for one without state (no step taken yet)."""
    result = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                raise ValueError(
                    f"{type(optimizer).__name__} has no state for a parameter yet (before its first step); "
                    "the preconditioner is defined after a step"
                )
            result[p] = diagonal(group, state).detach()
    return result


def _step(state: dict[str, Any]) -> int:
    return int(state["step"])


@register(torch_optim.SGD)
def _sgd(optimizer: Optimizer) -> Stability:
    """GD, heavy ball (with dampening) or Nesterov, from torch SGD's ``momentum``, ``dampening``, ``nesterov``."""
    hyper = _shared(optimizer, "lr", "momentum", "dampening", "nesterov")
    lr, mu, dampening = float(hyper["lr"]), float(hyper["momentum"]), float(hyper["dampening"])
    if mu == 0:
        rule, threshold = "gd", 2 / lr
    elif hyper["nesterov"]:
        rule, threshold = "nesterov", (2 + 2 * mu) / ((1 + 2 * mu) * lr)
    else:
        rule, threshold = "heavy_ball", (2 + 2 * mu) / ((1 - dampening) * lr)
    return Stability(rule, threshold, None, _decay(optimizer), {"lr": lr, "momentum": mu, "dampening": dampening})


def _adam_stability(optimizer: Optimizer, diagonal: Callable[[dict[str, Any], dict[str, Any]], Tensor]) -> Stability:
    hyper = _shared(optimizer, "lr", "betas")
    lr, beta1 = float(hyper["lr"]), float(hyper["betas"][0])
    P = _per_param(optimizer, diagonal)
    return Stability("adam", adam_threshold(lr, beta1), P, _decay(optimizer), {"lr": lr, "beta1": beta1})


def _bias1(group: dict[str, Any], state: dict[str, Any]) -> float:
    return 1 - group["betas"][0] ** _step(state)


def _bias2(group: dict[str, Any], state: dict[str, Any]) -> float:
    return 1 - group["betas"][1] ** _step(state)


@register(torch_optim.Adam, torch_optim.AdamW)
def _adam(optimizer: Optimizer) -> Stability:
    """Adam and AdamW: (1 − β₁ᵗ)(√(v/(1 − β₂ᵗ)) + ε), with the running maximum of v for AMSGrad."""

    def diagonal(group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        return _bias1(group, state) * ((v / _bias2(group, state)).sqrt() + group["eps"])

    return _adam_stability(optimizer, diagonal)


def _rectified(group: dict[str, Any], state: dict[str, Any], v: Tensor, rectified: bool) -> Tensor:
    """RAdam-type P: rectified (1 − β₁ᵗ)(√v + ε)/(r_t √(1 − β₂ᵗ)), else (1 − β₁ᵗ) I (the momentum-SGD branch)."""
    if not rectified:
        return torch.full_like(v, _bias1(group, state))
    _, r_t = rectification(_step(state), group["betas"][1])
    return _bias1(group, state) * (v.sqrt() + group["eps"]) / (r_t * math.sqrt(_bias2(group, state)))


@register(RAdam)
def _valley_radam(optimizer: Optimizer) -> Stability:
    """RAdam of valley: the branch its last step took (``state["rectified"]``); ``'skip'`` has no update to model."""

    def diagonal(group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        if group["degenerate"] == "skip" and not state["rectified"]:
            raise ValueError("RAdam(degenerate='skip') made no update in its last step (not rectified): no P")
        return _rectified(group, state, state["exp_avg_sq"], bool(state["rectified"]))

    return _adam_stability(optimizer, diagonal)


@register(torch_optim.RAdam)
def _torch_radam(optimizer: Optimizer) -> Stability:
    """RAdam of torch, rectified when ρ_t > 5."""

    def diagonal(group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        rho_t, _ = rectification(_step(state), group["betas"][1])
        return _rectified(group, state, state["exp_avg_sq"], rho_t > 5)

    return _adam_stability(optimizer, diagonal)


@register(AdaBelief)
def _adabelief(optimizer: Optimizer) -> Stability:
    """AdaBelief: (1 − β₁ᵗ)(√(s/(1 − β₂ᵗ)) + ε), or RAdam's form when ``rectify``."""

    def diagonal(group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        s = state["exp_avg_var"]
        if group["rectify"]:
            return _rectified(group, state, s, bool(state["rectified"]))
        return _bias1(group, state) * ((s / _bias2(group, state)).sqrt() + group["eps"])

    return _adam_stability(optimizer, diagonal)


@register(AdaM3)
def _adam3(optimizer: Optimizer) -> Stability:
    """AdaM3: (1 − β₁ᵗ)√(v/(1 − β₂ᵗ)), ε being inside v."""

    def diagonal(group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return _bias1(group, state) * (state["exp_avg_sq"] / _bias2(group, state)).sqrt()

    return _adam_stability(optimizer, diagonal)


@register(torch_optim.RMSprop)
def _rmsprop(optimizer: Optimizer) -> Stability:
    """RMSprop: √v + ε (centred: √(v − ḡ²) + ε); torch's momentum buffer b ← μb + g/P is heavy ball."""
    hyper = _shared(optimizer, "lr", "momentum")
    lr, mu = float(hyper["lr"]), float(hyper["momentum"])

    def diagonal(group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        v = state["square_avg"]
        if group["centered"]:
            v = v - state["grad_avg"] ** 2
        return v.sqrt() + group["eps"]

    P = _per_param(optimizer, diagonal)
    return Stability("rmsprop", (2 + 2 * mu) / lr, P, _decay(optimizer), {"lr": lr, "momentum": mu})


@register(torch_optim.Adagrad)
def _adagrad(optimizer: Optimizer) -> Stability:
    """Adagrad: (1 + (t − 1)δ)(√G + ε), the learning-rate decay of the last step folded into P."""
    lr = float(_shared(optimizer, "lr")["lr"])

    def diagonal(group: dict[str, Any], state: dict[str, Any]) -> Tensor:
        return (1 + (_step(state) - 1) * group["lr_decay"]) * (state["sum"].sqrt() + group["eps"])

    P = _per_param(optimizer, diagonal)
    return Stability("adagrad", 2 / lr, P, _decay(optimizer), {"lr": lr})
