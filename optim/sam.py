"""SAM (Foret et al. 2021) and its adaptive variant ASAM (Kwon et al. 2021) as a wrapper of any optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from optim._checks import Check, check_bool, check_nonnegative, check_optional_bool, evaluate
from optim._foreach import copies
from optim._state import refuse_sparse
from optim._wrapper import GLOBAL, Wrapper

__all__ = ["SAM", "frozen_bn"]


@contextmanager
def frozen_bn(model: nn.Module) -> Iterator[None]:
    """Within the block, forward passes leave the BatchNorm running statistics of ``model`` as they were.

    The running mean, variance and batch count of every BatchNorm layer that tracks them are saved on entry and
    copied back on exit (also on an exception), whatever the layer's ``momentum`` (``None``, the cumulative
    average, included). Batch statistics still normalise the forward passes in training mode. SAM uses it for the
    pass at the perturbed point, as users of the reference implementation do by setting the BatchNorm momenta to
    zero for that pass.

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> with frozen_bn(bn):
        ...     _ = bn(torch.randn(4, 2))
        >>> bn.running_mean.tolist(), int(bn.num_batches_tracked)
        ([0.0, 0.0], 0)
    """
    saved = [
        (buffer, buffer.detach().clone())
        for m in model.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
        for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
        if buffer is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _stacked(norms: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-tensor norms in float64 on the first tensor's device."""
    return torch.stack([n.to(device=norms[0].device, dtype=torch.float64) for n in norms])


def _as_float(loss: Any) -> float:
    return loss.detach().item() if isinstance(loss, torch.Tensor) else float(loss)


class SAM(Wrapper):
    r"""Sharpness-aware minimisation: the base optimizer steps with the gradient at the worst nearby point.

    ρ, η are ``rho``, ``eta``; T_w = 1 for SAM and :math:`T_w = |w| + η` for ASAM (``adaptive=True``).

    .. math::
        \hat ε(w) = ρ\,\frac{T_w^2\, ∇L(w)}{\lVert T_w ∇L(w)\rVert_2},\qquad
        w ← \text{base\_step}\big(w,\ ∇L(w + \hat ε(w))\big).

    The norm is global over all parameters (with each group's T). ``step(closure)`` evaluates the closure at w
    (its loss is returned), climbs to w + ε̂, evaluates the closure there, restores w by copy (not by
    subtraction) and steps the base optimizer; if the closure raises at w + ε̂, w is restored bit for bit before
    the exception propagates (the base optimizer has not stepped). ``first_step()``/``second_step()`` do the same
    for hand-written loops (AMP, DDP). Both paths (per tensor and multi-tensor, ``foreach``) save, perturb and
    restore the same way.

    BatchNorm: given ``model``, ``step(closure)`` runs the pass at w + ε̂ inside :func:`frozen_bn`, so the running
    statistics are those of the pass at w only, as users of the reference implementation expect (they set the
    BatchNorm momenta to zero for the second pass). SAM is built from parameters, not a model, so without ``model``
    it cannot know the BatchNorm layers and the second pass updates the statistics too; ``optim.make("sam", model)``
    passes the model. Hand-written loops wrap their second forward in ``with frozen_bn(model):``.

    ``rho``, ``adaptive``, ``eta`` and ``foreach`` go into every param group as ``sam_rho``, ``sam_adaptive``,
    ``sam_eta``, ``sam_foreach`` (a group given its own values keeps them, e.g. ``sam_adaptive=False`` for
    biases, as the ASAM authors apply T only to weights).

    Args:
        base_optimizer: The optimizer instance that takes the actual step.
        rho: ρ, radius of the neighbourhood. Default 0.05 (Foret et al. 2021); 0.5 for ASAM (Kwon et al. 2021).
        adaptive: ASAM's scale-invariant neighbourhood. Default False.
        eta: η of ASAM's T. Default 0.01 (Kwon et al. 2021).
        foreach: perturb and restore with multi-tensor ops; ``None`` (default) does when every parameter is on a
            device with multi-tensor kernels (CUDA), as torch does. The base optimizer has its own switch.
        model: the network whose parameters are optimised; its BatchNorm running statistics are kept unchanged
            by the pass at w + ε̂ in ``step(closure)``. Default ``None`` (no BatchNorm handling).

    State: per parameter ``point`` (w, kept only between the two half steps) and ``e_norm`` (‖ε̂‖ of the
    tensor); under ``state["global"]``: ``e_norm`` (‖ε̂‖), ``grad_norm`` (‖∇L(w)‖₂), and with a closure
    ``loss``, ``loss_perturbed`` and ``loss_rise`` = L(w + ε̂) − L(w).

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        >>> sam = SAM(torch.optim.SGD([w], lr=0.1), rho=0.5)
        >>> def closure():
        ...     sam.zero_grad()
        ...     loss = (w**2).sum()
        ...     loss.backward()
        ...     return loss
        >>> loss = sam.step(closure); sam.state["global"]["e_norm"]
        0.5

    References: Foret et al., "Sharpness-Aware Minimization for Efficiently Improving Generalization", ICLR 2021,
    Algorithm 1; Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization", ICML 2021, Eq. (8).
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {
        "sam_rho": check_nonnegative,
        "sam_adaptive": check_bool,
        "sam_eta": check_nonnegative,
        "sam_foreach": check_optional_bool,
    }

    def __init__(
        self,
        base_optimizer: Optimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        foreach: bool | None = None,
        model: nn.Module | None = None,
    ) -> None:
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
        super().__init__(base_optimizer, dict(sam_rho=rho, sam_adaptive=adaptive, sam_eta=eta, sam_foreach=foreach))
        self.model = model

    @staticmethod
    def _scales(group: dict[str, Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
        """ASAM's :math:`T_w = |w| + η` of each tensor."""
        scales = torch._foreach_abs(params)
        torch._foreach_add_(scales, group["sam_eta"])
        return scales

    def _norms(
        self, found: list[tuple[dict[str, Any], list[torch.Tensor]]], dtype: torch.dtype | None = None
    ) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """‖∇L‖ per tensor (a list per batch of ``found``) and ‖T_w ∇L‖ per tensor (the same norms for SAM).

        Measured in ``dtype`` (default: each gradient's own), for a gradient whose sum of squares overflows it.
        """
        norms, scaled_norms = [], []
        for group, params in found:
            norms.append(torch._foreach_norm([p.grad for p in params], dtype=dtype))
            if group["sam_adaptive"]:
                scaled = self._scales(group, params)
                torch._foreach_mul_(scaled, [p.grad for p in params])
                scaled_norms += torch._foreach_norm(scaled, dtype=dtype)
            else:
                scaled_norms += norms[-1]
        return norms, scaled_norms

    @torch.no_grad()
    def first_step(self) -> None:
        """Save w and move to w + ε̂ using the gradients currently in ``.grad``."""
        found = self._batches("sam_foreach", lambda group: [p for p in group["params"] if p.grad is not None])
        if not found:
            return
        refuse_sparse(self, [p.grad for _, params in found for p in params])
        norms, scaled_norms = self._norms(found)
        scaled_norm = _stacked(scaled_norms).norm().item()  # one device sync for the global norm
        if math.isinf(scaled_norm):  # a tensor's norm overflowed its dtype (float32 g of 1e20 each): again in float64
            norms, scaled_norms = self._norms(found, torch.float64)
            scaled_norm = _stacked(scaled_norms).norm().item()
        perturbed, e_norms, grad_norms = [], [], []
        for (group, params), batch_norms in zip(found, norms, strict=True):
            scale = group["sam_rho"] / scaled_norm if scaled_norm > 0 else 0.0
            for p, point in zip(params, copies(params), strict=True):
                self.state[p]["point"] = point  # w, restored by second_step
            grads = [p.grad for p in params]
            if group["sam_adaptive"]:
                e = torch._foreach_mul(grads, scale)
                scales = self._scales(group, params)
                torch._foreach_mul_(scales, scales)
                torch._foreach_mul_(e, scales)
                torch._foreach_add_(params, e)
                e_norms += torch._foreach_norm(e)
            else:  # ε̂ = scale·g is added without being stored, and ‖ε̂‖ = scale·‖g‖ (equal to rounding)
                torch._foreach_add_(params, grads, alpha=scale)
                e_norms += torch._foreach_mul(batch_norms, scale)
            perturbed += params
            grad_norms += batch_norms
        e_norms_stacked, grad_norms_stacked = _stacked(e_norms), _stacked(grad_norms)
        for p, e_norm in zip(perturbed, e_norms_stacked.tolist(), strict=True):
            self.state[p]["e_norm"] = e_norm  # ‖ε̂‖ of this tensor
        stats = self.state[GLOBAL]
        stats["e_norm"] = e_norms_stacked.norm().item()  # ‖ε̂‖ over all parameters
        stats["grad_norm"] = grad_norms_stacked.norm().item()  # ‖∇L(w)‖₂ over all parameters

    @torch.no_grad()
    def restore(self) -> None:
        """Put back w saved by ``first_step()`` exactly, on either path (a no-op when nothing is saved)."""
        points = {
            p: self.state[p].pop("point")
            for group in self.param_groups
            for p in group["params"]
            if "point" in self.state[p]
        }
        for _, params in self._batches("sam_foreach", lambda group: [p for p in group["params"] if p in points]):
            torch._foreach_copy_(params, [points[p] for p in params])

    @torch.no_grad()
    def second_step(self) -> None:
        """Restore w exactly and let the base optimizer step with the gradients taken at w + ε̂."""
        self.restore()
        self.base_optimizer.step()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run the closure at w and at w + ε̂, then step; return the loss at w.

        Args:
            closure: Zeroes the gradients, computes the loss, calls ``backward`` and returns the loss (required).
        """
        if closure is None:
            raise TypeError("SAM.step needs a closure (or use first_step() and second_step())")
        loss = evaluate(closure)
        self.first_step()
        try:
            with frozen_bn(self.model) if self.model is not None else nullcontext():
                loss_perturbed = evaluate(closure)
        except BaseException:
            self.restore()
            raise
        self.second_step()
        if loss is not None and loss_perturbed is not None:
            stats = self.state[GLOBAL]
            stats["loss"] = _as_float(loss)  # L(w)
            stats["loss_perturbed"] = _as_float(loss_perturbed)  # L(w + ε̂)
            stats["loss_rise"] = stats["loss_perturbed"] - stats["loss"]  # L(w + ε̂) − L(w)
        return loss
