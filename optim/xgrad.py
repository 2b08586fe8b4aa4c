"""XGrad weight prediction (Guan et al.): forward and backward at the weights the base optimizer will reach."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch.optim import SGD, Adam, AdamW, Optimizer, RMSprop

from optim._checks import Check, check_count, evaluate
from optim._directions import direction
from optim._wrapper import GLOBAL, Wrapper
from optim.adabelief import AdaBelief
from optim.adam3 import AdaM3
from optim.radam import RAdam

__all__ = ["XGrad"]

SUPPORTED = (SGD, RMSprop, Adam, AdamW, AdaBelief, AdaM3, RAdam)
"""Base optimizer classes XGrad can predict for (exact class match)."""


def _needs_last_grad(optimizer: Optimizer, group: dict[str, Any]) -> bool:
    """SGD and RMSprop without momentum, and Nesterov SGD, need the last gradient to form Δ."""
    if isinstance(optimizer, SGD):
        return group["momentum"] == 0 or group["nesterov"]
    return isinstance(optimizer, RMSprop) and group["momentum"] == 0


class XGrad(Wrapper):
    r"""Weight prediction: gradients are taken at :math:`\hat θ = θ_t - γ s Δ_{t+1}`, then θ_t takes the step.

    γ is each group's ``lr``; s is ``steps``; Δ is the base optimizer's own update direction read from its
    state without changing it: SGD with momentum b, RMSprop :math:`g/(\sqrt v + ε)` (or its momentum buffer),
    Adam/AdamW :math:`\hat m/(\sqrt{\hat v}+ε)`, AdaBelief, AdaM3 and RAdam their own denominators (RAdam with
    the branch and r_t of its last step). Weight decay is not part of Δ (as in the authors' code).

    .. math::
        \hat θ = θ_t - γ\, s\, Δ_{t+1},\qquad θ_{t+1} = \text{base\_step}\big(θ_t,\ ∇f(\hat θ)\big).

    ``step(closure)`` moves to θ̂, runs the closure there, restores θ_t bit-exactly (copy) and steps the base
    optimizer; ``predicted()`` does the same for hand-written loops. Before the base optimizer has state the
    prediction is a no-op, and ``steps=0`` gives the base optimizer's trajectory bitwise. For SGD and RMSprop
    without momentum, and Nesterov SGD (Δ = g + μb), the last gradient is kept in the wrapper's state
    (``grad``) so that resuming from a ``state_dict`` predicts exactly as the uninterrupted run. ``steps``
    lives in each group as ``xgrad_steps``.

    Args:
        base_optimizer: A ``torch.optim`` SGD, RMSprop, Adam or AdamW, or valley's AdaBelief, AdaM3 or RAdam.
        steps: s, how many steps ahead to predict. Default 1 (Guan et al.).

    State: ``state["global"]["displacement_norm"]`` = ‖θ̂ − θ_t‖ of the last prediction; per parameter ``grad``
    where needed (see above).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0]))
        >>> xgrad = XGrad(torch.optim.SGD([w], lr=0.1, momentum=0.9))
        >>> def closure():
        ...     xgrad.zero_grad()
        ...     loss = (w**2).sum()
        ...     loss.backward()
        ...     return loss
        >>> _ = xgrad.step(closure); _ = xgrad.step(closure); round(xgrad.state["global"]["displacement_norm"], 4)
        0.2

    Reference: Guan et al., "XGrad: Boosting Gradient-Based Optimizers With Weight Prediction", IEEE TPAMI 2024,
    Algorithm 1.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {"xgrad_steps": check_count}

    def __init__(self, base_optimizer: Optimizer, steps: int = 1) -> None:
        if type(base_optimizer) not in SUPPORTED:
            names = ", ".join(cls.__name__ for cls in SUPPORTED)
            raise TypeError(f"XGrad cannot predict for {type(base_optimizer).__name__}; supported: {names}")
        super().__init__(base_optimizer, dict(xgrad_steps=steps))

    @contextmanager
    def predicted(self) -> Iterator[None]:
        """Within the block the parameters are at θ̂; on exit they are restored bit-exactly."""
        cached, displacements = [], []
        with torch.no_grad():
            for group in self.param_groups:
                if group["xgrad_steps"] == 0:
                    continue
                for p in group["params"]:
                    state = self.state.get(p, {})
                    found = direction(self.base_optimizer, group, p, state.get("grad"))
                    if found is None:
                        continue
                    delta = found[0].mul_(float(group["lr"]) * group["xgrad_steps"])
                    cached.append((p, p.detach().clone()))
                    p.sub_(delta)
                    displacements.append(torch.linalg.vector_norm(delta).to(torch.float64))
        norm = torch.stack(displacements).norm().item() if displacements else 0.0  # one device sync
        self.state[GLOBAL]["displacement_norm"] = norm  # ‖θ̂ − θ_t‖
        try:
            yield
        finally:
            with torch.no_grad():
                for p, point in cached:
                    p.copy_(point)

    @torch.no_grad()
    def _base_step(self) -> None:
        self.base_optimizer.step()
        for group in self.param_groups:
            if group["xgrad_steps"] == 0 or not _needs_last_grad(self.base_optimizer, group):
                continue
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["grad"] = p.grad.detach().clone()  # last gradient, for Δ

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run the closure at the predicted weights (if given), then step the base optimizer; return the loss.

        Args:
            closure: Zeroes the gradients, computes the loss, calls ``backward`` and returns the loss. Without
                it the base optimizer steps with the gradients already in ``.grad`` (from ``predicted()``).
        """
        loss = None
        if closure is not None:
            with self.predicted():
                loss = evaluate(closure)
        self._base_step()
        return loss
