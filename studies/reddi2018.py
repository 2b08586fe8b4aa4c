r"""Reddi's counterexample: Adam drifts to the worst point of [−1, 1]; AMSGrad, Expectigrad and SGD do not.

Reddi, S. J., Kale, S. and Kumar, S. (2018). On the Convergence of Adam and Beyond. ICLR. Theorem 1 (online
problem), Theorem 3 (stochastic problem) and Section 5, Figure 1 (synthetic experiments). Expectigrad's authors
repeat the experiment (Daley, B. and Amato, C. (2020). Expectigrad: Fast Stochastic Optimization with Robust
Convergence Properties. arXiv:2010.01356).

Problems, on the feasible set :math:`\mathcal F = [-1, 1]` (projection = clipping after every step), x₁ = 0:

* online: :math:`f_t(x) = Cx` if :math:`t \bmod P = 1`, else :math:`f_t(x) = \ell x`;
* stochastic: :math:`f_t(x) = Cx` with probability p, else :math:`\ell x`, drawn independently at every step.

Both have E[∇f] > 0, so the best point is x = −1, and Adam, whose large rare gradient C is damped by the
simultaneously large v_t, drifts to x = +1. Two families (:data:`FAMILIES`):

* ``theory`` — the theorems' setting: C = 3, ℓ = −1, P = 3, and p = (1 + δ)/(C + 1) with δ = 0.1 (Theorem 3;
  E[∇f] = δ). Theorem 1's Adam is β₁ = 0, β₂ = 1/(1 + C²) = 0.1 (the "Adam (β₁=0, β₂=1/(1+C²))" run).
* ``paper`` — Section 5's experiments: C = 1010, ℓ = −10, P = 101 (online) and p = 0.01 (stochastic), with the
  practical β₁ = 0.9, β₂ = 0.99 of the paper's Figure 1 for Adam and AMSGrad (``torch.optim.Adam(amsgrad=True)``).

Expectigrad uses its authors' defaults β = 0.9, ε = 1e-8 with the sparse counter (``optim.Expectigrad``). The
adaptive methods use the step size α_t = α/√t of Theorem 1 (set in the param group before each step) with α = 1
(our choice: Reddi et al. do not state α in the text; α = 1 lets 10⁵ steps show the drift). SGD is plain projected
gradient descent with Zinkevich's (2003) step D/(G√t), D = 2 the diameter of F and G = C the largest |gradient|
(SGD is not invariant to the gradient's scale, unlike the adaptive methods). The paper ran 5·10⁶ steps; the quick
scale runs 10⁴ (theory) and 10⁵ (paper family) steps, the full scale the paper's 5·10⁶ for both.

All these optimizers are coordinate-wise, so one run stacks independent copies of the problem as the coordinates
of one parameter vector: coordinate 0 is the online problem, coordinates 1..S are S seeded streams of the
stochastic problem. This gives exactly the trajectories of separate runs (a test checks it) at the cost of one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from optim.expectigrad import Expectigrad
from studies.runner import Context, Study

#: family -> the problem's constants (see the module docstring for the sources).
FAMILIES: dict[str, dict[str, float]] = {
    "theory": {"C": 3.0, "low": -1.0, "period": 3, "p": (1 + 0.1) / (3.0 + 1)},
    "paper": {"C": 1010.0, "low": -10.0, "period": 101, "p": 0.01},
}
#: optimizer name -> (families it runs on, factory from (params, lr, C)).
OPTIMIZERS: dict[str, tuple[tuple[str, ...], Any]] = {
    "Adam (β₁=0, β₂=1/(1+C²))": (
        ("theory",),
        lambda params, lr, C: torch.optim.Adam(params, lr=lr, betas=(0.0, 1 / (1 + C**2)), eps=1e-8),
    ),
    "Adam": (("theory", "paper"), lambda params, lr, C: torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))),
    "AMSGrad": (
        ("theory", "paper"),
        lambda params, lr, C: torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99), amsgrad=True),
    ),
    "Expectigrad": (
        ("theory", "paper"),
        lambda params, lr, C: Expectigrad(params, lr=lr, beta=0.9, eps=1e-8, sparse_counter=True),
    ),
    "SGD": (("theory", "paper"), lambda params, lr, C: torch.optim.SGD(params, lr=lr)),
}
ALPHA = 1.0

#: scale -> (steps per family, stochastic seeds, recorded points per trajectory).
_SCALES = {
    "tiny": ({"theory": 1500}, 4, 60),
    "quick": ({"theory": 10_000, "paper": 100_000}, 8, 400),
    "full": ({"theory": 5_000_000, "paper": 5_000_000}, 16, 1000),
}


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """One run per (family, optimizer): the online problem and the stochastic seeds in one vector."""
    steps, seeds, points = _SCALES[scale]
    return [
        dict(family=family, optimizer=name, steps=n, seeds=seeds, points=points, alpha=step_size(family, name), seed=0)
        for family, n in steps.items()
        for name, (families, _) in OPTIMIZERS.items()
        if family in families
    ]


def step_size(family: str, optimizer: str) -> float:
    """α of α_t = α/√t: :data:`ALPHA` for the adaptive methods, Zinkevich's D/G = 2/C for SGD.

    Example:
        >>> step_size("theory", "SGD"), step_size("theory", "Adam")
        (0.6666666666666666, 1.0)
    """
    return 2 / FAMILIES[family]["C"] if optimizer == "SGD" else ALPHA


def gradients(family: str, seeds: int, steps: int, seed: int = 0, chunk: int = 10_000) -> Iterator[torch.Tensor]:
    r"""Yield the gradient vectors :math:`g_t` (t = 1, 2, …) of the stacked problems, ``chunk`` steps at a time.

    Coordinate 0 holds the online gradient (C if t mod P = 1 else ℓ); coordinates 1..``seeds`` hold independent
    stochastic gradients (C with probability p else ℓ) drawn from one seeded generator.

    Example:
        >>> next(gradients("theory", seeds=1, steps=4))[:, 0].tolist()
        [3.0, -1.0, -1.0, 3.0]
    """
    consts = FAMILIES[family]
    generator = torch.Generator().manual_seed(seed)
    for start in range(1, steps + 1, chunk):
        t = torch.arange(start, min(start + chunk, steps + 1), dtype=torch.int64)
        online = torch.where(t % int(consts["period"]) == 1, consts["C"], consts["low"]).to(torch.float64)
        draws = torch.rand(len(t), seeds, generator=generator, dtype=torch.float64) < consts["p"]
        stochastic = torch.where(draws, consts["C"], consts["low"])
        yield torch.cat([online[:, None], stochastic], dim=1)  # (steps in chunk, 1 + seeds)


def record_steps(steps: int, points: int) -> np.ndarray:
    """The steps at which x_t is kept: about ``points`` of them, half log-spaced and half evenly spaced.

    Example:
        >>> record_steps(100, 8).tolist()
        [1, 5, 22, 34, 67, 100]
    """
    log = np.geomspace(1, steps, points // 2)
    even = np.linspace(1, steps, points - points // 2)
    return np.unique(np.concatenate([log, even]).round().astype(np.int64))


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Run one optimizer on the stacked online and stochastic problems; rows ``step, problem, stream, x``."""
    consts = FAMILIES[config["family"]]
    steps, seeds = config["steps"], config["seeds"]
    x = torch.zeros(1 + seeds, dtype=torch.float64, requires_grad=True)
    optimizer = OPTIMIZERS[config["optimizer"]][1]([x], config["alpha"], consts["C"])
    keep = set(record_steps(steps, config["points"]).tolist())
    kept_steps, kept_x = [0], [x.detach().clone()]
    bar = tqdm(total=steps, desc=config["optimizer"], disable=not ctx.progress, leave=False, unit="step")
    t = 0
    for block in gradients(config["family"], seeds, steps, config["seed"]):
        for g in block:
            t += 1
            x.grad = g.clone()
            for group in optimizer.param_groups:
                group["lr"] = config["alpha"] / math.sqrt(t)  # α_t = α/√t
            optimizer.step()
            with torch.no_grad():
                x.clamp_(-1.0, 1.0)  # projection onto F = [-1, 1]
            if t in keep:
                kept_steps.append(t)
                kept_x.append(x.detach().clone())
        bar.update(len(block))
    bar.close()
    values = torch.stack(kept_x).numpy()
    n = len(kept_steps)
    return pd.DataFrame(
        {
            "step": np.repeat(kept_steps, 1 + seeds),
            "problem": np.tile(["online"] + ["stochastic"] * seeds, n),
            "stream": np.tile(np.arange(1 + seeds), n),
            "quantity": "x",
            "value": values.reshape(-1),
        }
    )


STUDY = Study(name="reddi2018", title="Reddi's counterexample: Adam vs AMSGrad, Expectigrad, SGD", grid=grid, run=run)
