"""RAdam: the variance of the adaptive learning rate, and Adam, Adam-2k, Adam-eps, Adam + warmup and RAdam.

Liu, L., Jiang, H., He, P., Chen, W., Liu, X., Gao, J. and Han, J. (2020). On the Variance of the Adaptive Learning
Rate and Beyond. ICLR. Figure 8 (exact and first-order Var[ψ] of a scaled inverse χ² variable against its degrees
of freedom ρ), Figure 9 (simulated variance of Adam's adaptive learning rate ψ_t and of the rectified r_t·ψ_t over
t), Section 3 (the controls Adam-2k and Adam-eps), Figure 2 (histograms of |gradient| over the first updates,
distorted without warmup) and Section 5 (RAdam's robustness to the learning rate).

Two kinds of runs:

* ``theory`` — the data of Figures 8 and 9 from :func:`theory.radam.variance_curves` (ρ = 5..500, τ² = 1) and
  :func:`theory.radam.simulated_adaptive_lr_variance` (β₂ = 0.999, g ~ N(0, 1), paper Fig. 9; threshold ρ_t > 4 as
  in Algorithm 2), stored as tidy rows so the figure only draws them.
* ``train`` — an MLP (two hidden layers of 256 ReLU units) on MNIST-1D (embedded), cross-entropy, mini-batches of
  128, all optimizers from one saved initialisation, over a learning-rate sweep. Optimizers (β = (0.9, 0.999),
  ε = 1e-8 unless stated; paper Section 3): ``Adam`` (``torch.optim.Adam``); ``Adam-2k`` (``optim.Adam2k``: only v
  moves for the first k steps; the paper's k = 2000, here k = ``warmup`` steps of the scale, since our runs are
  short); ``Adam-eps`` (ε = 1e-4); ``Adam + warmup`` (``torch.optim.lr_scheduler.LinearLR`` from 1/``warmup`` of γ
  to γ over ``warmup`` steps, stepped after every update); ``RAdam`` (``optim.RAdam``, torch's defaults: rectified
  when ρ_t > 5). Every run records the training loss per step, the usual per-epoch metrics, and for the first
  ``hist_steps`` updates a histogram of log₁₀|g| over all gradient entries (48 bins on [−12, 0]; entries below
  1e-12, exact zeros included, go to the lowest bin).

Scales: tiny — 1 epoch on 512 examples, one learning rate, warmup 8; quick — 10 epochs (320 steps) on the 4000
examples, γ ∈ {1e-3, 3e-3, 1e-2, 3e-2}, warmup 100 (= 1/(10(1−β₂))); full — 100 epochs, the same γ, warmup 2000 (the
paper's Adam-2k and the usual warmup length).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from optim import Adam2k, RAdam
from studies.data import load_dataset
from studies.models import make_model
from studies.runner import Context, Study
from studies.store import config_hash
from studies.train import TrainState, train

OPTIMIZERS = ("Adam", "Adam-2k", "Adam-eps", "Adam + warmup", "RAdam")
BETAS = (0.9, 0.999)
WIDTHS = (256, 256)
HIST_BINS = np.linspace(-12.0, 0.0, 49)
_SCALES = {
    "tiny": {"epochs": 1, "n_train": 512, "lrs": (1e-2,), "warmup": 8, "hist_steps": 6, "fig9": (100, 2000)},
    "quick": {
        "epochs": 10,
        "n_train": None,
        "lrs": (1e-3, 3e-3, 1e-2, 3e-2),
        "warmup": 100,
        "hist_steps": 30,
        "fig9": (1000, 10_000),
    },
    "full": {
        "epochs": 100,
        "n_train": None,
        "lrs": (1e-3, 3e-3, 1e-2, 3e-2),
        "warmup": 2000,
        "hist_steps": 100,
        "fig9": (5000, 100_000),
    },
}


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """The two theory runs, then every optimizer at every learning rate."""
    s = _SCALES[scale]
    steps, samples = s["fig9"]
    theory = [dict(kind="theory", figure="fig8"), dict(kind="theory", figure="fig9", steps=steps, samples=samples)]
    train_runs = [
        dict(
            kind="train",
            optimizer=name,
            lr=lr,
            dataset="mnist1d",
            epochs=s["epochs"],
            n_train=s["n_train"],
            warmup=s["warmup"],
            hist_steps=s["hist_steps"],
            batch_size=128,
            seed=0,
        )
        for lr in s["lrs"]
        for name in OPTIMIZERS
    ]
    return theory + train_runs


def make_optimizer(name: str, params: Any, lr: float, warmup: int) -> tuple[torch.optim.Optimizer, Any]:
    """``(optimizer, scheduler or None)`` for one of :data:`OPTIMIZERS` (see the module docstring)."""
    if name == "Adam":
        return torch.optim.Adam(params, lr=lr, betas=BETAS, eps=1e-8), None
    if name == "Adam-2k":
        return Adam2k(params, lr=lr, betas=BETAS, eps=1e-8, freeze_steps=warmup), None
    if name == "Adam-eps":
        return torch.optim.Adam(params, lr=lr, betas=BETAS, eps=1e-4), None
    if name == "Adam + warmup":
        optimizer = torch.optim.Adam(params, lr=lr, betas=BETAS, eps=1e-8)
        return optimizer, torch.optim.lr_scheduler.LinearLR(optimizer, 1 / warmup, 1.0, total_iters=warmup)
    if name == "RAdam":
        return RAdam(params, lr=lr, betas=BETAS, eps=1e-8), None
    raise ValueError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


class GradientHistogram:
    """Callback: after each of the first ``steps`` updates, log the histogram of log₁₀|g| over all entries.

    Rows: ``quantity = "grad_hist"``, ``bin`` = the bin's lower edge, ``value`` = the fraction of entries in it.
    """

    def __init__(self, steps: int, scheduler: Any = None) -> None:
        self.steps = steps
        self.scheduler = scheduler

    def on_step_end(self, state: TrainState) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
        if state.step > self.steps:
            return
        grads = [p.grad.detach().abs().flatten() for p in state.model.parameters() if p.grad is not None]
        logs = torch.log10(torch.cat(grads).double().clamp_min(1e-12)).clamp(HIST_BINS[0], HIST_BINS[-1]).cpu()
        counts, _ = np.histogram(logs.numpy(), bins=HIST_BINS)
        for lower, fraction in zip(HIST_BINS[:-1], counts / counts.sum(), strict=True):
            state.log("grad_hist", float(fraction), bin=float(lower))


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """A theory run (Figure 8 or 9 data) or one training run."""
    if config["kind"] == "theory":
        # here, not at the top: theory loads sympy (about a second), which no other run of any study needs
        from theory.radam import simulated_adaptive_lr_variance, variance_curves

        if config["figure"] == "fig8":
            return variance_curves()
        frame = simulated_adaptive_lr_variance(BETAS, config["steps"], config["samples"], seed=0)
        return frame.rename(columns={"t": "step"})
    data = load_dataset(config["dataset"], ctx.data_dir).subset(config["n_train"], None)

    def model_factory() -> nn.Module:
        return make_model("mlp", data.input_shape, data.num_classes, widths=WIDTHS)

    init_key = config_hash({"data": config["dataset"], "widths": WIDTHS, "seed": config["seed"]})
    init = ctx.store.artifact(f"init-mlp-{init_key}", _seeded_state(model_factory, config["seed"]))
    callbacks: list[GradientHistogram] = []

    def optimizer_factory(model: nn.Module) -> torch.optim.Optimizer:
        optimizer, scheduler = make_optimizer(config["optimizer"], model.parameters(), config["lr"], config["warmup"])
        callbacks.append(GradientHistogram(config["hist_steps"], scheduler))
        return optimizer

    result = train(
        model_factory,
        optimizer_factory,
        data,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        seed=config["seed"],
        device=ctx.device,
        init_state=init,
        callbacks=[_Forward(callbacks)],
        progress=ctx.progress,
        desc=f"{config['optimizer']} lr={config['lr']:g}",
    )
    return result.metrics


class _Forward:
    """Forwards ``on_step_end`` to the callback the optimizer factory creates (it needs the optimizer)."""

    def __init__(self, targets: list[GradientHistogram]) -> None:
        self.targets = targets

    def on_step_end(self, state: TrainState) -> None:
        for target in self.targets:
            target.on_step_end(state)


def _seeded_state(model_factory, seed: int):
    def make() -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return model_factory().state_dict()

    return make


STUDY = Study(
    name="liu2020radam", title="RAdam: variance of the adaptive learning rate (Liu et al. 2020)", grid=grid, run=run
)
