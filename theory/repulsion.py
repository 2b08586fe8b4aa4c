r"""Gaussian-kernel repulsion from checkpoints (Tübingen bachelor thesis, Eq. (2.12)-(2.18)).

σ, s are ``sigma``, ``strength``; θ_c a stored checkpoint. Per coordinate,

.. math::

    \frac{\partial}{\partial\theta_i} e^{-(\theta_{c,i}-\theta_i)^2/(2\sigma^2)}
    = \frac{\theta_{c,i}-\theta_i}{\sigma^2}\, e^{-(\theta_{c,i}-\theta_i)^2/(2\sigma^2)},

zero at the checkpoint; gradient descent on s·k moves θ away from θ_c. Over all parameters the kernel is
exp(−‖θ − θ_c‖²/(2σ²)) and the same factor (θ_c − θ)/σ² multiplies it per coordinate. Check 15.
"""

from __future__ import annotations

import sympy as sp
import torch

from theory._result import CheckResult, checked_formula, is_zero, make_result

__all__ = ["kernel_gradient"]

SOURCE = "Tübingen bachelor thesis, Eq. (2.12)-(2.18)"
theta_, theta_c_ = sp.symbols("theta_i theta_ci", real=True)
sigma_ = sp.Symbol("sigma", positive=True)
KERNEL = sp.exp(-((theta_c_ - theta_) ** 2) / (2 * sigma_**2))
DERIVATIVE = (theta_c_ - theta_) / sigma_**2 * KERNEL


def kernel_gradient(
    formula: sp.Expr | None = None, sigma: float = 0.7, strength: float = 2.0, dim: int = 12, seed: int = 0
) -> CheckResult:
    r"""Item 15: derivative of the Gaussian kernel; autograd of the repulsion penalty equals it.

    Args:
        formula: Claimed ∂k/∂θ_i in ``theta_i``, ``theta_ci``, ``sigma`` (default above).
        sigma: σ of the numeric half.
        strength: s of the numeric half.
        dim: Parameters of the numeric half (split into two tensors).
        seed: Seed.

    Returns:
        The check result; value = max |autograd ∇P − s·Σ_c formula·Π_{j≠i} k_j| over coordinates (two
        checkpoints), reference 0. Uses ``optim.CheckpointRepulsion.penalty()`` when it exists, else the kernel
        written here in torch.
    """
    formula = checked_formula(formula, DERIVATIVE)
    derived = sp.diff(KERNEL, theta_)
    derivative_ok = is_zero(derived - formula)
    at_checkpoint = is_zero(formula.subs(theta_, theta_c_))
    # descent on the penalty moves theta by -formula; away from theta_c means sign(-formula) = sign(theta - theta_c)
    away = sp.simplify(-formula * (theta_ - theta_c_) / KERNEL)
    pushes_away = bool(away.is_nonnegative) and not is_zero(away)

    generator = torch.Generator().manual_seed(seed)
    params = [
        torch.randn(dim // 2, dtype=torch.float64, generator=generator).requires_grad_(True),
        torch.randn(dim - dim // 2, dtype=torch.float64, generator=generator).requires_grad_(True),
    ]
    checkpoints = []
    for _ in range(2):
        checkpoints.append(
            [(p.detach() + 0.5 * torch.randn(p.shape, dtype=p.dtype, generator=generator)) for p in params]
        )
    try:
        from optim import CheckpointRepulsion
    except ImportError:
        CheckpointRepulsion = None
    if CheckpointRepulsion is not None:
        repulsion = CheckpointRepulsion(params, sigma=sigma, strength=strength)
        for checkpoint in checkpoints:
            with torch.no_grad():
                saved = [p.detach().clone() for p in params]
                for p, c in zip(params, checkpoint, strict=True):
                    p.copy_(c)
                repulsion.add_checkpoint()
                for p, s in zip(params, saved, strict=True):
                    p.copy_(s)
        penalty = repulsion.penalty()
        numeric = "autograd of optim.CheckpointRepulsion.penalty()"
    else:
        distance = [sum((p - c).square().sum() for p, c in zip(params, ck, strict=True)) for ck in checkpoints]
        penalty = strength * sum(torch.exp(-d / (2 * sigma**2)) for d in distance)
        numeric = "autograd of the kernel in torch"
    grads = torch.autograd.grad(penalty, params)
    flat_theta = torch.cat([p.detach() for p in params])
    flat_grad = torch.cat(grads)
    derivative = sp.lambdify((theta_, theta_c_, sigma_), formula, "math")
    kernel = sp.lambdify((theta_, theta_c_, sigma_), KERNEL, "math")
    predicted = torch.zeros_like(flat_theta)
    for checkpoint in checkpoints:
        flat_c = torch.cat(checkpoint)
        factors = [kernel(a, b, sigma) for a, b in zip(flat_theta.tolist(), flat_c.tolist(), strict=True)]
        for i, (a, b) in enumerate(zip(flat_theta.tolist(), flat_c.tolist(), strict=True)):
            others = 1.0
            for j, f in enumerate(factors):
                if j != i:
                    others *= f
            predicted[i] += strength * derivative(a, b, sigma) * others
    deviation = float((flat_grad - predicted).abs().max())
    scale = float(flat_grad.abs().max())
    return make_result(
        id="repulsion.kernel_gradient",
        item=15,
        title="Gaussian-kernel repulsion gradient (autograd = derivative)",
        formula=sp.Eq(sp.Derivative(KERNEL, theta_), formula),
        method="diff + simplify to 0; subs theta=theta_c; sign of -dk * (theta - theta_c)",
        symbolic_ok=derivative_ok and at_checkpoint and pushes_away,
        value=deviation,
        reference=0.0,
        tolerance=1e-13 * max(scale, 1e-300),
        numeric=numeric,
        source=SOURCE,
        note=(
            f"derivative: {derivative_ok}; zero at the checkpoint: {at_checkpoint}; descent pushes away "
            f"(-dk*(theta-theta_c)/k = {away}): {pushes_away}. Numeric: {dim} parameters in 2 tensors, 2 "
            f"checkpoints, sigma={sigma}, s={strength}; max |grad| = {scale:.3g}."
        ),
    )
