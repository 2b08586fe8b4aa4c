"""XGrad weight prediction (Guan et al.): forward and backward at the weights the base optimizer will reach."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch.optim import SGD, Adam, AdamW, Optimizer, RMSprop

from optim._checks import Check, check_count, check_optional_bool, evaluate
from optim._directions import direction
from optim._foreach import copies
from optim._state import refuse_sparse
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
    (``grad``) so that resuming from a ``state_dict`` predicts exactly as the uninterrupted run. ``steps`` and
    ``foreach`` live in each group as ``xgrad_steps`` and ``xgrad_foreach``.

    Args:
        base_optimizer: A ``torch.optim`` SGD, RMSprop, Adam or AdamW, or valley's AdaBelief, AdaM3 or RAdam.
        steps: s, how many steps ahead to predict. Default 1 (Guan et al.).
        foreach: move to θ̂ and back with multi-tensor ops; ``None`` (default) does when every parameter is on a
            device with multi-tensor kernels (CUDA), as torch does. Δ itself is read per tensor.

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

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {"xgrad_steps": check_count, "xgrad_foreach": check_optional_bool}

    def __init__(self, base_optimizer: Optimizer, steps: int = 1, foreach: bool | None = None) -> None:
        if type(base_optimizer) not in SUPPORTED:
            names = ", ".join(cls.__name__ for cls in SUPPORTED)
            raise TypeError(f"XGrad cannot predict for {type(base_optimizer).__name__}; supported: {names}")
        super().__init__(base_optimizer, dict(xgrad_steps=steps, xgrad_foreach=foreach))

    @contextmanager
    def predicted(self) -> Iterator[None]:
        """Within the block the parameters are at θ̂; on exit they are restored bit-exactly.

        Also when moving there fails: an exception anywhere puts back the tensors already moved, so θ_t is left as it
        was. Sparse gradients (Δ of momentum SGD on an ``nn.Embedding(sparse=True)``) are refused by name. Each
        batch's Δ is freed before the next is made: holding them all would add a copy of the parameters to the peak.
        """
        cached = []  # (params, θ_t) of each batch moved so far
        try:
            with torch.no_grad():
                displacements = []
                for group, batch in self._batches(
                    "xgrad_foreach", lambda group: group["params"] if group["xgrad_steps"] else []
                ):
                    found = [
                        (p, direction(self.base_optimizer, group, p, self.state.get(p, {}).get("grad"))) for p in batch
                    ]
                    params = [p for p, delta in found if delta is not None]
                    if not params:
                        continue
                    deltas = [delta[0] for _, delta in found if delta is not None]
                    refuse_sparse(self, deltas)
                    torch._foreach_mul_(deltas, float(group["lr"]) * group["xgrad_steps"])
                    displacements += [norm.to(torch.float64) for norm in torch._foreach_norm(deltas)]
                    cached.append((params, copies(params)))
                    torch._foreach_sub_(params, deltas)
            norm = torch.stack(displacements).norm().item() if displacements else 0.0  # one device sync
            self.state[GLOBAL]["displacement_norm"] = norm  # ‖θ̂ − θ_t‖
            yield
        finally:
            with torch.no_grad():
                for params, points in cached:
                    torch._foreach_copy_(params, points)

    @torch.no_grad()
    def _base_step(self) -> None:
        def with_grad(group: dict[str, Any]) -> list[torch.Tensor]:
            if group["xgrad_steps"] == 0:
                return []
            params = [p for p in group["params"] if p.grad is not None]
            refuse_sparse(self, [p.grad for p in params])  # before the base steps: θ̂ of the next step needs Δ's norm
            return params if _needs_last_grad(self.base_optimizer, group) else []

        # the last gradient, for Δ, copied before the base step: torch's multi-tensor Nesterov SGD overwrites .grad
        last = [(params, copies([p.grad for p in params])) for _, params in self._batches("xgrad_foreach", with_grad)]
        self.base_optimizer.step()
        for params, grads in last:
            for p, grad in zip(params, grads, strict=True):
                self.state[p]["grad"] = grad

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
