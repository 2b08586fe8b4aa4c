"""XGrad: six optimizers with and without weight prediction (s = 1..4 steps ahead); accuracy, time and memory.

Guan, L. et al. (2024). XGrad: Boosting Gradient-Based Optimizers With Weight Prediction. IEEE Transactions on
Pattern Analysis and Machine Intelligence. Before each forward pass XGrad
moves the weights to θ̂ = θ_t − γ·s·Δ_{t+1}, the point the base optimizer will reach s steps later, computes the
gradient there, restores θ_t and lets the base optimizer step (Algorithm 1; ``optim.XGrad``). The paper compares
SGDM, RMSprop, Adam, AdamW, AdaBelief and AdaM3 with their XGrad versions, reports the best top-1 accuracy, and
measures the cost per epoch: +5.67% time over SGDM and +11.21% over Adam, +1.8% and +5.0% GPU memory
(:data:`REPORTED_OVERHEAD`).

Data and model: LeNet-5 (``studies.models.LeNet5``) on Fashion-MNIST at the paper and full scales, scikit-learn's
digits at the quick and tiny scales (and at the full scale when Fashion-MNIST is absent, with a note; the paper scale
requires it); every run of a seed starts from one saved initialisation. The paper scale is the paper's LeNet
experiment: 50 epochs, mini-batches of 128, SGDM, Adam, AdamW, AdaBelief and AdaM3 with s ∈ {0, 1}, two seeds.
s = 0 is the plain base optimizer (no wrapper), the reference of the overheads.

Hyperparameters (:data:`BASES`; mini-batches of 128): SGDM lr 0.05, momentum 0.9; RMSprop lr 1e-3, α = 0.99 (torch
default); Adam lr 1e-3, β = (0.9, 0.999), ε = 1e-8 (Kingma & Ba 2015); AdamW the same with decoupled decay 0.01
(torch default, Loshchilov & Hutter 2019); AdaBelief and AdaM3 lr 1e-3, β = (0.9, 0.999), ε = 1e-16 (their authors'
defaults). The paper tunes per task and trains ResNets/VGG on CIFAR for 200 epochs; these are the usual
defaults for a LeNet (deviation: not re-tuned).

Cost measures (one row each per run):

* ``seconds`` — the runner's wall time of each epoch's training steps (evaluation excluded);
* ``cpu_seconds_per_step`` — median process CPU time (all threads) of one training step in each epoch, the first
  step after an evaluation excluded: steadier than wall time on a shared CPU;
* ``peak_memory_bytes`` — peak bytes of tensors the training allocates (model, gradients, optimizer state,
  XGrad's copy of θ_t, activations and temporaries; the data excluded), from building the model through
  :data:`MEMORY_STEPS` training steps. On CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the
  model is built. On CPU, torch keeps no allocation statistics, so the run is repeated under ``torch.profiler`` with
  ``profile_memory=True`` and the peak of the running sum of its allocation events is taken (exact for tensor
  storage; Python objects and allocator overhead are not counted).
"""

from __future__ import annotations

import gc
import itertools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from optim import AdaBelief, AdaM3, XGrad
from studies.data import load_dataset, require_dataset
from studies.models import make_model
from studies.runner import Context, Study
from studies.store import config_hash
from studies.train import TrainState, train

#: Guan et al.'s cost of XGrad (s = 1) per epoch, relative to the base optimizer: (time %, memory %).
REPORTED_OVERHEAD: dict[str, tuple[float, float]] = {"SGDM": (5.67, 1.8), "Adam": (11.21, 5.0)}

#: name -> builder of the base optimizer from parameters; see the module docstring for the sources.
BASES: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "SGDM": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.99),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.9, 0.999), eps=1e-8),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
    "AdaBelief": lambda p: AdaBelief(p, lr=1e-3, betas=(0.9, 0.999), eps=1e-16),
    "AdaM3": lambda p: AdaM3(p, lr=1e-3, betas=(0.9, 0.999), eps=1e-16),
}
BATCH_SIZE = 128
#: Training steps run while the peak memory is measured (the optimizer state exists from the first step on).
MEMORY_STEPS = 3

#: scale -> data set, epochs, subset sizes, bases, prediction steps s and seeds.
_SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "dataset": "digits", "epochs": 2, "n_train": 256, "n_test": 128,
        "bases": ("SGDM", "Adam"), "steps": (0, 1), "seeds": (0,),
    },
    "quick": {
        "dataset": "digits", "epochs": 12, "n_train": None, "n_test": None,
        "bases": tuple(BASES), "steps": (0, 1, 2), "seeds": (0,),
    },
    "paper": {
        "dataset": "fashion_mnist", "epochs": 50, "n_train": None, "n_test": None,
        "bases": ("SGDM", "Adam", "AdamW", "AdaBelief", "AdaM3"), "steps": (0, 1), "seeds": (0, 1),
    },
    "full": {
        "dataset": "fashion_mnist", "epochs": 50, "n_train": None, "n_test": None,
        "bases": tuple(BASES), "steps": (0, 1, 2, 3, 4), "seeds": (0, 1, 2),
    },
}  # fmt: skip


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """Bases × prediction steps s (0 = the base alone) × seeds, on Fashion-MNIST (paper; full if present) or digits."""
    setup = dict(_SCALES[scale])
    bases, steps, seeds = setup.pop("bases"), setup.pop("steps"), setup.pop("seeds")
    if scale == "paper":
        require_dataset(setup["dataset"], ctx.data_dir)
    setup["dataset"] = ctx.dataset_or_digits(setup["dataset"], "XGrad")
    return [
        dict(setup, model="lenet5", base=base, steps=s, batch_size=BATCH_SIZE, seed=seed)
        for seed in seeds
        for base in bases
        for s in steps
    ]


def make_optimizer(base: str, steps: int, params: Any) -> torch.optim.Optimizer:
    """The base optimizer ``base`` of :data:`BASES`, wrapped in ``optim.XGrad(steps=steps)`` when ``steps > 0``."""
    optimizer = BASES[base](params)
    return XGrad(optimizer, steps=steps) if steps > 0 else optimizer


class _StepCpuTime:
    """Logs per epoch the median process CPU time of a training step (the first step of each epoch excluded)."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.times: list[float] = []

    def on_step_end(self, state: TrainState) -> None:
        now = time.process_time()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now

    def on_epoch_end(self, state: TrainState) -> None:
        if self.times:
            state.log("cpu_seconds_per_step", statistics.median(self.times))
        self.last, self.times = None, []


def peak_training_memory(
    model_factory: Callable[[], nn.Module],
    optimizer_factory: Callable[[nn.Module], Any],
    x: Tensor,
    y: Tensor,
    steps: int = MEMORY_STEPS,
) -> int:
    """Peak bytes of tensors allocated while building the model and optimizer and training ``steps`` steps on (x, y).

    ``x`` and ``y`` are allocated beforehand and not counted. CUDA: ``max_memory_allocated`` above the allocation
    at the start. CPU: the peak running sum of the allocation events ``torch.profiler`` records with
    ``profile_memory=True`` (frees of tensors allocated before the window would lower it, so garbage is collected
    first and nothing from outside the window is released inside it). The events are read from
    ``prof.profiler.kineto_results``, which torch does not document (checked on torch 2.13); ``prof.events()``
    keeps only the allocations no operator claims.
    """
    gc.collect()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        before = torch.cuda.memory_allocated(x.device)
        _train_steps(model_factory, optimizer_factory, x, y, steps)
        torch.cuda.synchronize(x.device)
        return int(torch.cuda.max_memory_allocated(x.device) - before)
    from torch.profiler import ProfilerActivity, profile

    quiet = "KINETO_LOG_LEVEL" not in os.environ  # else torch's profiler prints two "USDT:" lines per window
    if quiet:
        os.environ["KINETO_LOG_LEVEL"] = "6"  # read once, when the profiler first starts in the process
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            _train_steps(model_factory, optimizer_factory, x, y, steps)
    finally:
        if quiet:
            del os.environ["KINETO_LOG_LEVEL"]
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    return int(max(itertools.accumulate((e.nbytes() for e in events), initial=0)))


def _train_steps(model_factory, optimizer_factory, x: Tensor, y: Tensor, steps: int) -> None:
    model = model_factory().to(x.device).train()
    optimizer = optimizer_factory(model)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Train LeNet-5 with one (base, s) pair from the seed's shared initialisation; then measure its peak memory."""
    data = load_dataset(config["dataset"], ctx.data_dir).subset(config["n_train"], config["n_test"])

    def model_factory() -> nn.Module:
        return make_model(config["model"], data.input_shape, data.num_classes)

    init_key = config_hash({"model": config["model"], "data": config["dataset"], "seed": config["seed"]})

    def initial_state() -> dict[str, Tensor]:
        torch.manual_seed(config["seed"])
        return model_factory().state_dict()

    init = ctx.store.artifact(f"init-{config['model']}-{init_key}", initial_state)

    def optimizer_factory(model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(config["base"], config["steps"], model.parameters())

    result = train(
        model_factory,
        optimizer_factory,
        data,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        seed=config["seed"],
        device=ctx.device,
        init_state=init,
        callbacks=[_StepCpuTime()],
        progress=ctx.progress,
        desc=f"{config['base']} s={config['steps']}",
        channels_last=True,
    )
    x = data.x_train[: config["batch_size"]].to(ctx.device)
    y = data.y_train[: config["batch_size"]].to(ctx.device)
    peak = peak_training_memory(model_factory, optimizer_factory, x, y)
    memory = pd.DataFrame([{"step": 0, "epoch": 0, "quantity": "peak_memory_bytes", "value": float(peak)}])
    return pd.concat([result.metrics, memory], ignore_index=True)


STUDY = Study(
    name="guan_xgrad",
    title="XGrad weight prediction (Guan et al. 2024): accuracy, time and memory",
    grid=grid,
    run=run,
    scales=("tiny", "quick", "paper", "full"),
)
