"""Adam paper reproduction: SGD, momentum, Adagrad, RMSprop and Adam, with and without dropout.

Kingma, D. P. and Ba, J. (2015). Adam: A Method for Stochastic Optimization. ICLR. §6.2 (multi-layer networks:
two hidden layers of 1000 ReLU units, mini-batches of 128, with and without dropout) and §6.3 (the CNN
c64-c64-c128-1000 on CIFAR-10). As in the student reproductions of the paper, every optimizer starts from the same
saved random initialisation and runs the same number of steps; we record the training loss per epoch and the
seconds per epoch.

Data: the MLP trains on scikit-learn's digits at the quick scale (embedded, no download) and on MNIST at the full
scale when its files are present (else digits again); the CNN runs only when CIFAR-10's files are present.

Hyperparameters (:data:`OPTIMIZERS`): Adam uses the paper's defaults α = 1e-3, β₁ = 0.9, β₂ = 0.999, ε = 1e-8
(Algorithm 1). The paper tuned the other methods' step sizes on a dense grid it does not list; we use the standard
values of their sources as torch ships them — Adagrad 1e-2 (Duchi et al. 2011, torch default), RMSprop 1e-3 with
decay 0.99 (Tieleman & Hinton 2012, torch default) — and SGD 0.1, momentum 0.9 with 0.01 (the usual MNIST values;
both have the effective step γ/(1−μ) = 0.1, so their curves nearly coincide); deviation: not re-tuned per data set.
Dropout: p = 0.5 on the hidden layers (Srivastava et al. 2014, as in §6.2).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn

from studies.data import load_dataset, why_unavailable
from studies.models import make_model
from studies.runner import Context, Study
from studies.store import config_hash
from studies.train import train

#: name -> (torch.optim class name, hyperparameters); see the module docstring for the sources.
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD": ("SGD", {"lr": 0.1}),
    "Momentum": ("SGD", {"lr": 0.01, "momentum": 0.9}),
    "Adagrad": ("Adagrad", {"lr": 0.01}),
    "RMSprop": ("RMSprop", {"lr": 1e-3, "alpha": 0.99}),
    "Adam": ("Adam", {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}),
}
DROPOUT = 0.5

#: scale -> settings of the MLP runs (data set, widths, epochs, subset sizes) and of the CNN runs.
_MLP = {
    "tiny": {"dataset": "digits", "widths": (32, 32), "epochs": 2, "n_train": 256, "n_test": 128},
    "quick": {"dataset": "digits", "widths": (1000, 1000), "epochs": 40, "n_train": None, "n_test": None},
    "full": {"dataset": "mnist", "widths": (1000, 1000), "epochs": 100, "n_train": None, "n_test": None},
}
_CNN = {
    "tiny": None,
    "quick": {"dataset": "cifar10", "epochs": 3, "n_train": 5000, "n_test": 1000},
    "full": {"dataset": "cifar10", "epochs": 45, "n_train": None, "n_test": None},
}


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """Five optimizers × {no dropout, dropout} for the MLP, and for the CNN when CIFAR-10 is present."""
    mlp = dict(_MLP[scale], model="mlp")
    mlp["dataset"] = ctx.dataset_or_digits(mlp["dataset"], "MLP")
    setups = [mlp]
    cnn = _CNN[scale]
    if cnn is not None:
        if (reason := why_unavailable(cnn["dataset"], ctx.data_dir)) is None:
            setups.append(dict(cnn, model="adam_cnn"))
        else:
            ctx.note(f"The CNN runs are skipped. {reason}")
    return [
        dict(setup, optimizer=name, dropout=dropout, batch_size=128, seed=0)
        for setup in setups
        for dropout in (0.0, DROPOUT)
        for name in OPTIMIZERS
    ]


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Train one (model, optimizer, dropout) run from the study's shared initialisation."""
    data = load_dataset(config["dataset"], ctx.data_dir).subset(config["n_train"], config["n_test"])
    arch = {"widths": tuple(config["widths"])} if config["model"] == "mlp" else {}

    def model_factory(dropout: float = config["dropout"]) -> nn.Module:
        return make_model(config["model"], data.input_shape, data.num_classes, dropout=dropout, **arch)

    init_key = config_hash({"model": config["model"], "data": config["dataset"], "seed": config["seed"], **arch})
    init = ctx.store.artifact(f"init-{config['model']}-{init_key}", _seeded_state(model_factory, config["seed"]))
    cls_name, hyper = OPTIMIZERS[config["optimizer"]]
    result = train(
        model_factory,
        lambda model: getattr(torch.optim, cls_name)(model.parameters(), **hyper),
        data,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        seed=config["seed"],
        device=ctx.device,
        init_state=init,
        progress=ctx.progress,
        desc=f"{config['optimizer']} p={config['dropout']}",
    )
    return result.metrics


def _seeded_state(model_factory, seed: int):
    def make() -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return model_factory(0.0).state_dict()

    return make


STUDY = Study(name="kingma2015adam", title="Adam paper reproduction (Kingma & Ba 2015)", grid=grid, run=run)
