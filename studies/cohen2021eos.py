r"""Edge of stability: sharpness against the stability threshold during full-batch GD, heavy ball and Adam.

Sources:

* Cohen, Kaur, Li, Kolter, Talwalkar (2021). Gradient Descent on Neural Networks Typically Occurs at the Edge of
  Stability. ICLR. Full-batch GD on a tanh fully connected network (a 5k-example CIFAR-10 subset, MSE and
  cross-entropy): the sharpness :math:`\lambda_{\max}(H)` rises during training ("progressive sharpening") until it
  reaches :math:`2/\eta`, then hovers just above it ("edge of stability") while the training loss keeps
  decreasing over long horizons, non-monotonically. For heavy-ball momentum the threshold is :math:`(2+2\beta)/\eta`
  (their App.; torch's form :math:`b \leftarrow \beta b + g`).
* Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl, Gilmer (2022). Adaptive Gradient
  Methods at the Edge of Stability. The preconditioned sharpness :math:`\lambda_{\max}(P^{-1}H)`, with :math:`P` from
  Adam's second moment, settles at :math:`(2+2\beta_1)/((1-\beta_1)\eta)` = 38/η for β₁ = 0.9.

Setup: a tanh MLP (``widths`` hidden units per layer, torch's default initialisation, the same for every run of a
seed) trained full-batch (every step uses the whole fixed training subset) for ``steps`` steps by
``torch.optim.SGD`` (GD; heavy ball with β = 0.9) and ``torch.optim.Adam`` (β = (0.9, 0.999), ε = 1e-8), each at
the step sizes of :data:`_SCALES`; losses: the half squared error :math:`\tfrac12\lVert f(x) - e_y\rVert^2` to the
one-hot target, averaged over examples (Cohen et al.'s MSE), and cross-entropy. Every ``every`` steps
:class:`landscape.SharpnessDynamics` measures on the whole training subset (the probe set is the training set, as in
the papers) the sharpness by warm-started Lanczos (float64 products), for Adam also the preconditioned sharpness,
the threshold of the optimizer and their ratio (every fifth measurement starts Lanczos cold instead, which gives the
cost of a cold start on the same trajectory). Quick scale: 256 examples of the embedded digits, a 32-32 MLP,
1000 steps; full scale: a 5000-example subset of CIFAR-10 (digits when absent), a 200-200 MLP, 10000 steps.

Deviations: smaller networks, data sets and horizons than the papers (CPU budget); the step sizes are chosen so that
the thresholds lie where this network's sharpness can reach them within the horizon.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from landscape.sharpness_dynamics import SharpnessDynamics
from studies.data import load_dataset
from studies.runner import Context, Study
from studies.train import train

VERSION = "1"
MOMENTUM = 0.9
BETAS = (0.9, 0.999)
#: Every COLD_EVERY-th measurement starts Lanczos cold, so warm and cold costs are compared on the same trajectory.
COLD_EVERY = 5

#: scale -> data, network, horizon, measurement interval and the runs ``(optimizer, loss, lr)``.
_SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "dataset": "digits", "n_train": 64, "n_test": 32, "widths": [8], "steps": 40, "every": 10, "seeds": [0],
        "runs": [("GD", "mse", 0.2), ("GD", "cross_entropy", 0.5), ("Momentum", "mse", 0.05), ("Adam", "mse", 0.01)],
    },
    "quick": {
        "dataset": "digits", "n_train": 256, "n_test": 128, "widths": [32, 32], "steps": 1000, "every": 20,
        "seeds": [0],
        "runs": [
            ("GD", "mse", 0.14), ("GD", "mse", 0.17), ("GD", "mse", 0.2),
            ("GD", "cross_entropy", 0.5), ("GD", "cross_entropy", 1.0),
            ("Momentum", "mse", 0.2), ("Adam", "mse", 0.003), ("Adam", "mse", 0.01),
        ],
    },
    "full": {
        "dataset": "cifar10", "n_train": 5000, "n_test": 1000, "widths": [200, 200], "steps": 10000, "every": 50,
        "seeds": [0],
        "runs": [
            ("GD", "mse", 2 / 60), ("GD", "mse", 2 / 40), ("GD", "mse", 2 / 20),
            ("GD", "cross_entropy", 2 / 30), ("GD", "cross_entropy", 2 / 15),
            ("Momentum", "mse", 3.8 / 60), ("Adam", "mse", 1e-3), ("Adam", "mse", 3e-3),
        ],
    },
}  # fmt: skip


def half_squared_error(outputs: Tensor, labels: Tensor) -> Tensor:
    r"""Cohen et al.'s MSE: :math:`\tfrac12\lVert f(x) - e_y\rVert^2` to the one-hot target, mean over examples.

    Example:
        >>> round(float(half_squared_error(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))), 6)
        0.5
    """
    target = F.one_hot(labels, outputs.shape[1]).to(outputs.dtype)
    return 0.5 * ((outputs - target) ** 2).sum(dim=1).mean()


LOSSES = {"mse": half_squared_error, "cross_entropy": F.cross_entropy}


def tanh_mlp(input_shape: Sequence[int], num_classes: int, widths: Sequence[int]) -> nn.Sequential:
    """The fully connected tanh network ``in → widths → classes`` (flattening its input).

    Example:
        >>> tanh_mlp((1, 8, 8), 10, [16])(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    sizes = [math.prod(input_shape), *widths]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """GD, heavy ball (β = 0.9) or Adam (β = (0.9, 0.999), ε = 1e-8) at step size ``lr``."""
    if name == "GD":
        return torch.optim.SGD(model.parameters(), lr=lr)
    if name == "Momentum":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM)
    if name == "Adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=BETAS, eps=1e-8)
    raise ValueError(f"Unknown optimizer: {name!r}")


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """One config per run of the scale and seed, on its data set (the full scale falls back to digits)."""
    setup = dict(_SCALES[scale])
    setup["dataset"] = ctx.dataset_or_digits(setup["dataset"], "edge-of-stability")
    runs, seeds = setup.pop("runs"), setup.pop("seeds")
    return [
        dict(setup, optimizer=optimizer, loss=loss, lr=lr, seed=seed) for seed in seeds for optimizer, loss, lr in runs
    ]


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Train full-batch with the sharpness tracker as a callback; the metrics and the tracker's rows, tidy."""
    data = load_dataset(config["dataset"], ctx.data_dir).subset(config["n_train"], config["n_test"])
    loss_fn = LOSSES[config["loss"]]
    probe = (data.x_train.to(ctx.device), data.y_train.to(ctx.device))
    tracker = SharpnessDynamics(
        loss_fn, probe, every=config["every"], dtype=torch.float64, cold_every=COLD_EVERY, seed=config["seed"]
    )
    result = train(
        lambda: tanh_mlp(data.input_shape, data.num_classes, config["widths"]),
        lambda model: make_optimizer(config["optimizer"], model, config["lr"]),
        data,
        epochs=config["steps"],
        batch_size=len(data.y_train),
        seed=config["seed"],
        device=ctx.device,
        callbacks=[tracker],
        loss_fn=loss_fn,
        progress=ctx.progress,
        desc=f"{config['optimizer']} {config['loss']} lr={config['lr']:g}",
    )
    widths = "-".join(str(w) for w in config["widths"])
    return result.metrics.assign(model=f"tanh MLP {widths}", n_train_used=len(data.y_train))


STUDY = Study(
    name="cohen2021eos",
    title="Edge of stability: sharpness vs 2/η under full-batch GD, heavy ball and Adam (Cohen et al. 2021, 2022)",
    grid=grid,
    run=run,
    version=VERSION,
)
