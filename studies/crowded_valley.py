"""Crowded-valley trio: SAM, AdamP and Expectigrad (and Adam) on the dense 784-784-10 network.

Source: the project's crowded-valley report (described in docs/sources.md; its full reference is unknown,
and its name echoes Schmidt, Schneider and Hennig 2021, "Descending through a Crowded Valley — Benchmarking Deep
Learning Optimizers", ICML). It trained three recent optimizers — SAM (Foret et al. 2021, "Sharpness-Aware
Minimization for Efficiently Improving Generalization", ICLR), AdamP (Heo et al. 2021, "AdamP: Slowing Down the
Slowdown for Momentum Optimizers on Scale-invariant Weights", ICLR) and Expectigrad (Daley & Amato 2020,
arXiv:2010.01356) — on MNIST with a fully connected 784-784-10 ReLU network, learning rate 1e-3 and mini-batches of
128 for 100 epochs, and tabulated the test accuracy at every 10% of training. Its final accuracies were SAM 0.81,
AdamP 0.69 and Expectigrad 0.90 (:data:`REPORTED`), far below what this network reaches on MNIST (~0.98), so they
look under-trained; this study re-runs the setting to show what a correct run gives.
The report also drew 2D loss surfaces around the SGD and SAM solutions; those are produced by the flat-minima study
(:mod:`studies.flat_minima`) and are not repeated here.

Data: MNIST at the full scale when its files are present (else scikit-learn's digits, embedded); digits at the quick
and tiny scales. The network is ``studies.models.MLP`` with one hidden layer of 784 units (input 784 on MNIST, 64 on
digits). Every optimizer starts from the same saved initialisation (per seed).

Hyperparameters (:data:`OPTIMIZERS`): the report's setting, lr 1e-3 and batch 128, for all four methods; the other
hyperparameters are each paper's defaults — Adam β = (0.9, 0.999), ε = 1e-8 (Kingma & Ba 2015, Algorithm 1); AdamP
δ = 0.1, wd_ratio = 0.1, no weight decay (Heo et al. 2021, official code); Expectigrad β = 0.9, ε = 1e-8 (Daley &
Amato 2020); SAM ρ = 0.05 (Foret et al. 2021) around plain SGD ("SAM (base SGD)" as the report says). Plain SGD at
lr 1e-3 is a tiny step (Adam's effective step is ~lr per coordinate, SGD's is lr·‖g‖), so we add ``SAM lr=0.1``: the
same SAM around SGD with the usual MNIST SGD step 0.1 (the step of :mod:`studies.kingma2015adam`'s SGD); deviation
from the report, to separate "SAM is worse" from "SGD at 1e-3 has not converged".

Recorded besides the runner's metrics: for AdamP the fraction of weight tensors it projected in each epoch
(``adamp_projected_fraction``, read from the optimizer's documented ``projection`` state) — this network has no
normalisation layer, so its weights are not scale-invariant and AdamP is expected to act as Adam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import nn

from optim import SAM, AdamP, Expectigrad
from studies.data import load_dataset
from studies.models import make_model
from studies.runner import Context, Study
from studies.store import config_hash
from studies.train import TrainState, train

#: The source report's test accuracy after 100 epochs (MNIST, 784-784-10, lr 1e-3, batch 128).
REPORTED: dict[str, float] = {"SAM": 0.81, "AdamP": 0.69, "Expectigrad": 0.90}

#: name -> builder of the optimizer from the model; see the module docstring for the sources.
OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "Adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8),
    "AdamP": lambda m: AdamP(m.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, delta=0.1, wd_ratio=0.1),
    "Expectigrad": lambda m: Expectigrad(m.parameters(), lr=1e-3, beta=0.9, eps=1e-8),
    "SAM": lambda m: SAM(torch.optim.SGD(m.parameters(), lr=1e-3), rho=0.05),
    "SAM lr=0.1": lambda m: SAM(torch.optim.SGD(m.parameters(), lr=0.1), rho=0.05),
}
#: The report's hidden width and mini-batch size.
WIDTHS = (784,)
BATCH_SIZE = 128

#: scale -> data set, hidden widths, epochs, subset sizes and seeds.
_SCALES: dict[str, dict[str, Any]] = {
    "tiny": {"dataset": "digits", "widths": (64,), "epochs": 5, "n_train": 512, "n_test": 128, "seeds": (0,)},
    "quick": {"dataset": "digits", "widths": WIDTHS, "epochs": 100, "n_train": None, "n_test": None, "seeds": (0, 1)},
    "full": {"dataset": "mnist", "widths": WIDTHS, "epochs": 100, "n_train": None, "n_test": None, "seeds": (0, 1, 2)},
}


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """Every optimizer of :data:`OPTIMIZERS` × the scale's seeds, on MNIST (full, when present) or digits."""
    setup = dict(_SCALES[scale])
    seeds = setup.pop("seeds")
    setup["dataset"] = ctx.dataset_or_digits(setup["dataset"], "crowded-valley")
    return [dict(setup, optimizer=name, batch_size=BATCH_SIZE, seed=seed) for seed in seeds for name in OPTIMIZERS]


class _ProjectionCounter:
    """Per epoch, the fraction of (step, weight tensor) pairs that AdamP projected (its ``projection`` state)."""

    def __init__(self) -> None:
        self.projected = 0
        self.seen = 0

    def on_step_end(self, state: TrainState) -> None:
        for group in state.optimizer.param_groups:
            for p in group["params"]:
                if p.dim() >= 2 and "projection" in state.optimizer.state[p]:
                    self.seen += 1
                    self.projected += state.optimizer.state[p]["projection"] != "none"

    def on_epoch_end(self, state: TrainState) -> None:
        state.log("adamp_projected_fraction", self.projected / max(self.seen, 1))
        self.projected = self.seen = 0


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Train the MLP with one optimizer from the seed's shared initialisation; test accuracy every epoch."""
    data = load_dataset(config["dataset"], ctx.data_dir).subset(config["n_train"], config["n_test"])
    widths = tuple(config["widths"])

    def model_factory() -> nn.Module:
        return make_model("mlp", data.input_shape, data.num_classes, widths=widths)

    init_key = config_hash({"model": "mlp", "data": config["dataset"], "seed": config["seed"], "widths": widths})

    def initial_state() -> dict[str, torch.Tensor]:
        torch.manual_seed(config["seed"])
        return model_factory().state_dict()

    init = ctx.store.artifact(f"init-mlp-{init_key}", initial_state)
    callbacks = [_ProjectionCounter()] if config["optimizer"] == "AdamP" else []
    result = train(
        model_factory,
        OPTIMIZERS[config["optimizer"]],
        data,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        seed=config["seed"],
        device=ctx.device,
        init_state=init,
        callbacks=callbacks,
        progress=ctx.progress,
        desc=config["optimizer"],
    )
    return result.metrics.assign(hidden_width=widths[0])


STUDY = Study(
    name="crowded_valley",
    title="Crowded-valley trio: SAM, AdamP, Expectigrad and Adam on a 784-784-10 net",
    grid=grid,
    run=run,
)
