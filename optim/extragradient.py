"""Extragradient (Korpelevich 1976) around any base optimizer, with Gidel et al. (2019)'s ExtraSGD/ExtraAdam."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch.optim import Optimizer

from optim._checks import Check, check_optional_bool, evaluate
from optim._foreach import copies
from optim._wrapper import Wrapper

__all__ = ["ExtraGradient"]


class ExtraGradient(Wrapper):
    r"""Extragradient: step from θ with the gradient taken at the base optimizer's extrapolated point θ̃.

    With the base update :math:`θ ↦ θ - γ\,\mathrm{d}(g)` (for SGD, d(g) = g):

    .. math::
        \tilde θ = θ - γ\,\mathrm{d}(∇f(θ)),\qquad θ ← θ - γ\,\mathrm{d}(∇f(\tilde θ)).

    Both half steps go through the base optimizer, so its state (momentum, moments, step count) is updated
    twice per step, as in Gidel et al.'s ExtraSGD/ExtraAdam. ``step(closure)`` runs the closure at θ
    (its loss is returned), extrapolates, runs the closure at θ̃, restores θ by copy and steps again. If the
    closure raises at θ̃, θ is restored bit for bit before the exception propagates (the base optimizer's state
    keeps the extrapolation's update, as it would in a hand-written loop).
    Hand-written loops call ``extrapolate()`` after a backward at θ, compute gradients at θ̃, then ``step()``.

    Args:
        base_optimizer: The optimizer instance whose update is used for both half steps.
        foreach: save and restore θ with multi-tensor ops (each group's ``extragradient_foreach``); ``None``
            (default) does when every parameter is on a device with multi-tensor kernels (CUDA), as torch does.

    State per parameter: ``point`` (θ, kept between ``extrapolate()`` and ``step()``; it is optimizer state, so
    a checkpoint taken in between resumes exactly).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
        >>> eg = ExtraGradient(torch.optim.SGD([w], lr=0.5))
        >>> def closure():  # bilinear game min_x max_y x*y as the field (y, -x)
        ...     eg.zero_grad()
        ...     w.grad = torch.stack([w[1], -w[0]]).detach()
        ...     return 0.0
        >>> _ = eg.step(closure); w.tolist()
        [0.75, 0.5]

    References: Korpelevich, "The extragradient method for finding saddle points and other problems", 1976;
    Gidel et al., "A Variational Inequality Perspective on Generative Adversarial Networks", ICLR 2019, Alg. 2-3.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {"extragradient_foreach": check_optional_bool}

    def __init__(self, base_optimizer: Optimizer, foreach: bool | None = None) -> None:
        super().__init__(base_optimizer, {"extragradient_foreach": foreach})

    @torch.no_grad()
    def extrapolate(self) -> None:
        """Save θ and take the base step with the current gradients (to θ̃)."""
        for _, params in self._batches("extragradient_foreach", lambda group: group["params"]):
            for p, point in zip(params, copies(params), strict=True):
                self.state[p]["point"] = point  # θ, restored by step()
        self.base_optimizer.step()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Take one extragradient step; return the loss at θ when a closure is given.

        Args:
            closure: Zeroes the gradients, computes the loss, calls ``backward`` and returns the loss. Without
                it, ``extrapolate()`` must have been called and ``.grad`` must hold the gradients at θ̃.
        """
        loss = None
        if closure is not None:
            loss = evaluate(closure)
            self.extrapolate()
            try:
                evaluate(closure)
            except BaseException:
                self._restore()
                raise
        if not self._restore():
            raise RuntimeError("ExtraGradient.step() without a closure needs extrapolate() first")
        with torch.no_grad():
            self.base_optimizer.step()
        return loss

    @torch.no_grad()
    def _restore(self) -> bool:
        """Put back θ saved by ``extrapolate()`` bit for bit (on either path); return whether anything was saved."""
        points = {p: self.state[p].pop("point", None) for group in self.param_groups for p in group["params"]}
        for _, params in self._batches(
            "extragradient_foreach", lambda group: [p for p in group["params"] if points[p] is not None]
        ):
            torch._foreach_copy_(params, [points[p] for p in params])
        return any(point is not None for point in points.values())
