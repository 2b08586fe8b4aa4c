"""Weight-norm growth: scale-invariant weights of a BatchNorm ResNet under SGD, momentum, Adam, AdamW, SGDP, AdamP.

Heo, B., Chun, S., Oh, S. J., Han, D., Yun, S., Kim, G., Uh, Y. and Ha, J.-W. (2021). AdamP: Slowing Down the
Slowdown for Momentum Optimizers on Scale-invariant Weights. ICLR. A weight w followed by a normalisation layer is
scale-invariant: the loss depends on w/‖w‖ only, the gradient is orthogonal to w, and every step grows ‖w‖
(‖w_{t+1}‖² = ‖w_t‖² + ‖Δw‖² for plain SGD). The growth shrinks the effective step size — γ/‖w‖² for SGD (van
Laarhoven 2017) — and momentum accelerates it (Heo et al., Section 2 and Figure 2). SGDP and AdamP remove the radial
part of each update on such weights (projection), which keeps ‖w‖ and the effective step near their initial values.
The paper shows the norms and effective steps over ImageNet training of a ResNet-18.

Setup: ``studies.models.ResNet`` (BatchNorm after every convolution, convolutions without bias, so every convolution
weight is scale-invariant) on scikit-learn's digits at the quick and tiny scales, on CIFAR-10 at the full scale when
its files are present (else digits); every optimizer starts from one saved initialisation.

Hyperparameters (:data:`OPTIMIZERS`; mini-batches of 128): SGD lr 0.1; momentum lr 0.1, μ = 0.9 (the same γ as
SGD, as in Heo et al.'s comparison of SGD and momentum); SGDP lr 0.1, μ = 0.9, δ = 0.1, wd_ratio = 0.1 (official
code); Adam and AdamP lr 1e-3, β = (0.9, 0.999), ε = 1e-8 (official defaults); AdamW lr 1e-3 with decoupled decay
0.01 (torch default, Loshchilov & Hutter 2019). No weight decay anywhere else, so that projection alone (SGDP vs
momentum, AdamP vs Adam) and decay alone (AdamW vs Adam) are compared. Deviation: the paper also decays SGD/SGDP
weights (1e-4); we leave it out to isolate the projection.

Measured (``landscape.trajectory``; every quarter epoch): ``weight_norm`` and ``weight_norm_growth``
‖w_t‖/‖w_0‖ of every parameter (``WeightNorms``), ``effective_step`` ‖w_t − w_{t−1}‖/‖w_{t−1}‖ of every parameter
and ``effective_lr`` γ/‖w_t‖² of the convolution weights (``EffectiveStepSize``); the rows carry ``param`` and
``scale_invariant`` (True for convolution weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import nn

from landscape.trajectory import EffectiveStepSize, WeightNorms
from optim import SGDP, AdamP
from studies.data import load_dataset
from studies.models import make_model
from studies.runner import Context, Study
from studies.store import config_hash
from studies.train import train

#: name -> builder of the optimizer from parameters; see the module docstring for the sources.
OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1),
    "Momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "SGDP": lambda p: SGDP(p, lr=0.1, momentum=0.9, delta=0.1, wd_ratio=0.1),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.9, 0.999), eps=1e-8),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    "AdamP": lambda p: AdamP(p, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, delta=0.1, wd_ratio=0.1),
}
BATCH_SIZE = 128

#: scale -> data set, ResNet size, epochs, subset sizes and seeds.
_SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "dataset": "digits", "blocks": 1, "widths": (4, 8, 8), "epochs": 2, "n_train": 256, "n_test": 128,
        "seeds": (0,),
    },
    "quick": {
        "dataset": "digits", "blocks": 1, "widths": (8, 16, 32), "epochs": 15, "n_train": None, "n_test": None,
        "seeds": (0,),
    },
    "full": {
        "dataset": "cifar10", "blocks": 3, "widths": (16, 32, 64), "epochs": 100, "n_train": None, "n_test": None,
        "seeds": (0, 1, 2),
    },
}  # fmt: skip


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """Every optimizer of :data:`OPTIMIZERS` × the scale's seeds, on CIFAR-10 (full, when present) or digits."""
    setup = dict(_SCALES[scale])
    seeds = setup.pop("seeds")
    setup["dataset"] = ctx.dataset_or_digits(setup["dataset"], "weight-norm")
    return [
        dict(setup, model="resnet", optimizer=name, batch_size=BATCH_SIZE, seed=seed)
        for seed in seeds
        for name in OPTIMIZERS
    ]


def scale_invariant_weights(model: nn.Module) -> list[str]:
    """Names of the convolution weights: in ``studies.models.ResNet`` each is followed by BatchNorm.

    Example:
        >>> names = scale_invariant_weights(make_model("resnet", (1, 8, 8), 10, widths=(4, 8, 8)))
        >>> names[0], len(names)
        ('stem.0.weight', 9)
    """
    return [f"{name}.weight" if name else "weight" for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Train the ResNet with one optimizer from the shared initialisation, logging norms and effective steps."""
    data = load_dataset(config["dataset"], ctx.data_dir).subset(config["n_train"], config["n_test"])
    arch = {"blocks": config["blocks"], "widths": tuple(config["widths"])}

    def model_factory() -> nn.Module:
        return make_model(config["model"], data.input_shape, data.num_classes, **arch)

    init_key = config_hash({"model": config["model"], "data": config["dataset"], "seed": config["seed"], **arch})

    def initial_state() -> dict[str, torch.Tensor]:
        torch.manual_seed(config["seed"])
        return model_factory().state_dict()

    init = ctx.store.artifact(f"init-{config['model']}-{init_key}", initial_state)
    invariant = scale_invariant_weights(model_factory())
    every = max(1, -(-len(data.y_train) // config["batch_size"]) // 4)
    result = train(
        model_factory,
        lambda model: OPTIMIZERS[config["optimizer"]](model.parameters()),
        data,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        seed=config["seed"],
        device=ctx.device,
        init_state=init,
        callbacks=[WeightNorms(every=every), EffectiveStepSize(every=every, scale_invariant=invariant)],
        progress=ctx.progress,
        desc=config["optimizer"],
    )
    frame = result.metrics
    if "param" in frame.columns:
        frame["scale_invariant"] = frame["param"].isin(invariant)
    return frame


STUDY = Study(
    name="weight_norm_growth",
    title="Weight-norm growth of scale-invariant weights (Heo et al. 2021)",
    grid=grid,
    run=run,
)
