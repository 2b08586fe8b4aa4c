"""Gaussian-kernel repulsion from stored checkpoints (distance function of the Tübingen bachelor thesis)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from optim._checks import as_params, check_nonnegative, check_optional_bool, check_positive
from optim._foreach import batches, copies, use_foreach

__all__ = ["CheckpointRepulsion"]


def _summed(dtype: torch.dtype) -> torch.dtype:
    """The dtype a parameter's part of d is summed in: its own, float32 for half precision."""
    return torch.promote_types(dtype, torch.float32)


class CheckpointRepulsion:
    r"""A loss term that pushes the parameters away from detached copies of earlier parameters.

    s, σ are ``strength``, ``sigma``; θ are the tracked parameters and θ_c the stored checkpoints.

    .. math::
        d(θ, θ_c) = \sum_i (θ_i - θ_{c,i})^2,\qquad
        P(θ) = s \sum_c \exp\Big(-\frac{d(θ, θ_c)}{2σ^2}\Big),\qquad
        ∇_θ P = -\frac{s}{σ^2} \sum_c (θ - θ_c)\, e^{-d(θ, θ_c)/(2σ^2)}.

    Add ``penalty()`` to the task loss; its gradient pushes away from each checkpoint and vanishes far from it.
    The object does not depend on a model class: it keeps a list of tensors and detached checkpoint copies,
    and its ``state_dict()`` holds the checkpoints.

    Args:
        params: The parameters to track (an iterable of tensors or an ``nn.Module``).
        sigma: σ > 0, kernel width. Default 1.0.
        strength: s ≥ 0. Default 1.0.
        foreach: store checkpoints and measure d with multi-tensor ops (one device-and-dtype bucket at a time);
            ``None`` (default) does when every parameter is on a device with multi-tensor kernels (CUDA), as
            torch does. The multi-tensor d is :math:`\sum \lVert θ - θ_c\rVert^2` over buckets, equal to rounding.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> rep = CheckpointRepulsion([w], sigma=1.0, strength=2.0)
        >>> rep.add_checkpoint(); rep.penalty().item(), rep.distances()
        (2.0, [0.0])
    """

    def __init__(
        self, params: Iterable[Tensor] | Any, sigma: float = 1.0, strength: float = 1.0, foreach: bool | None = None
    ) -> None:
        sigma, strength = check_positive("sigma", sigma), check_nonnegative("strength", strength)
        foreach = check_optional_bool("foreach", foreach)
        self.params = list(as_params(params))
        if not self.params or not all(isinstance(p, Tensor) for p in self.params):
            raise TypeError("params must be a non-empty iterable of tensors or an nn.Module")
        self.sigma = float(sigma)
        self.strength = float(strength)
        self.checkpoints: list[list[Tensor]] = []
        self.foreach = use_foreach(foreach, self.params)

    def _batches(self, checkpoint: list[Any]) -> list[list[list[Any]]]:
        """(parameters, ``checkpoint`` entries, indices) cut into lists for the multi-tensor ops."""
        return batches([self.params, checkpoint, range(len(self.params))], self.foreach)

    @torch.no_grad()
    def add_checkpoint(self) -> None:
        """Store a detached copy of the current parameters."""
        checkpoint: list[Any] = [None] * len(self.params)
        for params, _, indices in self._batches(checkpoint):
            for index, copy in zip(indices, copies(params), strict=True):
                checkpoint[index] = copy
        self.checkpoints.append(checkpoint)

    def clear(self) -> None:
        """Forget all checkpoints."""
        self.checkpoints = []

    def _squared_distance(self, checkpoint: list[Tensor]) -> Tensor:
        """d(θ, θ_c), each tensor's part summed in at least float32 (float16's (θ - θ_c)² overflows above 65504)."""
        if not self.foreach:
            pairs = zip(self.params, checkpoint, strict=True)
            return sum((p - c).to(_summed(p.dtype)).square().sum() for p, c in pairs)
        norms = [
            torch.stack(torch._foreach_norm(torch._foreach_sub(p, c), dtype=_summed(p[0].dtype)))
            for p, c, _ in self._batches(checkpoint)
        ]
        return sum(n.square().sum() for n in norms)

    def penalty(self) -> Tensor:
        r"""Return :math:`s \sum_c \exp(-d(θ, θ_c)/(2σ^2))`, differentiable in θ (0 without checkpoints).

        In the widest of the parameters' dtypes, float32 where that is a half precision (as d is summed).
        """
        total = torch.zeros((), dtype=self.params[0].dtype, device=self.params[0].device)
        for checkpoint in self.checkpoints:
            total = total + torch.exp(-self._squared_distance(checkpoint) / (2 * self.sigma**2))
        return self.strength * total

    @torch.no_grad()
    def distances(self) -> list[float]:
        r"""Return the Euclidean distances :math:`\sqrt{d(θ, θ_c)}` to each checkpoint, oldest first."""
        return [math.sqrt(float(self._squared_distance(c))) for c in self.checkpoints]

    def state_dict(self) -> dict[str, Any]:
        """Return σ, s and the checkpoints (cloned)."""
        return {
            "sigma": self.sigma,
            "strength": self.strength,
            "checkpoints": [[c.clone() for c in checkpoint] for checkpoint in self.checkpoints],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore σ, s and the checkpoints (moved to the parameters' devices and dtypes)."""
        sigma = check_positive("sigma", state_dict["sigma"])
        strength = check_nonnegative("strength", state_dict["strength"])
        checkpoints = []
        for checkpoint in state_dict["checkpoints"]:
            if len(checkpoint) != len(self.params):
                raise ValueError(f"checkpoint has {len(checkpoint)} tensors, expected {len(self.params)}")
            checkpoints.append(
                [c.detach().to(p.device, p.dtype).clone() for p, c in zip(self.params, checkpoint, strict=True)]
            )
        self.sigma = float(sigma)
        self.strength = float(strength)
        self.checkpoints = checkpoints
