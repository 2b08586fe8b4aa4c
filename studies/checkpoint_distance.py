"""Checkpoint distance: repulsion from saved checkpoints vs plain training vs cosine warm restarts; snapshot ensembles.

Source: a Tübingen bachelor thesis on checkpoint distances (docs/sources.md, "Checkpoint repulsion"; theory items
20-21, thesis §1.2.3-1.2.4). It trains with SGD-momentum and L2 regularisation, saves a checkpoint θ_c after E
epochs and continues with the Gaussian-kernel repulsion L = L_task + s·Σ_c exp(−‖θ − θ_c‖²/(2σ²))
(``optim.CheckpointRepulsion``), sweeping the width σ and the strength s, and follows the distance from the
checkpoints over training. It compares with plain training and with cosine annealing with warm restarts
(Loshchilov & Hutter 2017, "SGDR"), whose end-of-cycle snapshots form a snapshot ensemble (Huang et al. 2017,
"Snapshot Ensembles: Train 1, get M for free"). An ensemble of k members whose errors have variance v and pairwise
covariance c has E[(mean error)²] = v/k + (k−1)c/k, so the ratio c/v says how much averaging can gain (c = v: none).

Protocol (one training run per method, identical for the first E epochs — same seed, deterministic on CPU):

* every method: SGD with momentum 0.9, lr 0.05 and L2 1e-3 (``weight_decay``, coupled as in the thesis), mini-batches
  of 128, ``E + K·P`` epochs; snapshots at the end of epochs E + P, …, E + K·P (the K ensemble members);
* ``plain``: constant lr after epoch E;
* ``restarts``: from epoch E on, ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts`` with a cycle of P epochs
  (T_0 = P·steps per epoch, η_min = 0), stepped after every optimizer step, so each snapshot sits at a cycle's end;
* ``repulsion``: at the end of epoch E the weights become the first checkpoint and the repulsion term is added to
  the training loss; every snapshot is added as a further checkpoint (the run is pushed away from all of them).
  The term enters only the training objective, as ``studies.train.train``'s ``regularizer``: it is logged per step
  as ``regularizer``, while ``train_loss`` (the task loss), test loss and accuracy exclude it.

Measured: distance, relative distance, cosine and kernel value to each checkpoint over training
(``landscape.trajectory.CheckpointDistances``, checkpoints at epochs E, E + P, …); per snapshot its test accuracy;
the ensemble (mean of the snapshots' softmax outputs) accuracy; and with e_i(x) = softmax_i(x) − onehot(y) the error
moments v = mean_i E‖e_i‖², c = mean_{i≠j} E⟨e_i, e_j⟩ and E‖ē‖² (:func:`error_moments`).

Hyperparameters: momentum 0.9 and L2 1e-3 are the thesis's; lr 0.05 is our choice for this network (not stated).
σ and s are swept around the distance plain training covers in one cycle (≈0.5-2 on digits, measured), so that
the kernel acts at that scale. Data and model: an MLP (``studies.models.MLP``) on digits (quick, tiny) and on
Fashion-MNIST when present (full, else digits).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from landscape.trajectory import CheckpointDistances
from optim import CheckpointRepulsion
from studies.data import Dataset, load_dataset
from studies.models import make_model
from studies.runner import Context, Study
from studies.store import config_hash
from studies.train import TrainState, train

#: SGD-momentum with L2 (thesis: momentum 0.9, L2 1e-3; lr ours).
LR, MOMENTUM, L2 = 0.05, 0.9, 1e-3
BATCH_SIZE = 128

#: scale -> data, widths, warm-up epochs E, cycle length P (epochs), cycles K, (σ, s) sweep, seeds.
_SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "dataset": "digits", "widths": (32,), "n_train": 256, "n_test": 128, "warmup": 1, "cycle": 1, "cycles": 2,
        "sweep": ((1.0, 1.0),), "seeds": (0,),
    },
    "quick": {
        "dataset": "digits", "widths": (256,), "n_train": None, "n_test": None, "warmup": 10, "cycle": 5,
        "cycles": 4, "sweep": ((0.5, 0.5), (0.5, 2.0), (2.0, 0.5), (2.0, 2.0)), "seeds": (0, 1),
    },
    "full": {
        "dataset": "fashion_mnist", "widths": (512, 512), "n_train": None, "n_test": None, "warmup": 20,
        "cycle": 10, "cycles": 5,
        "sweep": tuple((sigma, s) for sigma in (0.5, 1.0, 2.0, 4.0) for s in (0.1, 0.5, 2.0)), "seeds": (0, 1, 2),
    },
}  # fmt: skip


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """Plain, restarts and every (σ, s) of the sweep × seeds."""
    setup = dict(_SCALES[scale])
    sweep, seeds = setup.pop("sweep"), setup.pop("seeds")
    setup["dataset"] = ctx.dataset_or_digits(setup["dataset"], "checkpoint-distance")
    methods = [{"method": "plain"}, {"method": "restarts"}]
    methods += [{"method": "repulsion", "sigma": sigma, "strength": s} for sigma, s in sweep]
    return [dict(setup, **m, batch_size=BATCH_SIZE, seed=seed) for seed in seeds for m in methods]


def label(config: dict[str, Any]) -> str:
    """Display name of a method, e.g. ``"repulsion σ=0.5 s=2"``."""
    if config["method"] != "repulsion":
        return config["method"]
    return f"repulsion σ={config['sigma']:g} s={config['strength']:g}"


def error_moments(probs: Tensor, y: Tensor) -> dict[str, float]:
    r"""Error moments of an ensemble of k ≥ 2 members, with :math:`e_i(x) = p_i(x) - \text{onehot}(y)`.

    .. math::
        v = \frac1k\sum_i E_x\lVert e_i\rVert^2,\quad
        c = \frac{1}{k(k-1)}\sum_{i\ne j} E_x\langle e_i, e_j\rangle,\quad
        E_x\lVert \bar e\rVert^2 = \frac{v}{k} + \frac{k-1}{k}c.

    Args:
        probs: ``(k, n, classes)`` predicted probabilities of the k members.
        y: ``(n,)`` labels.

    Returns:
        ``v``, ``c``, ``c_over_v`` and ``ensemble_error`` (E‖ē‖², computed directly from the mean prediction).

    Example:
        >>> p = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
        >>> error_moments(p, torch.tensor([0]))
        {'v': 1.0, 'c': 0.0, 'c_over_v': 0.0, 'ensemble_error': 0.5}
    """
    k = probs.shape[0]
    if k < 2:
        raise ValueError(f"An ensemble needs at least 2 members, got {k}")
    errors = probs.double() - F.one_hot(y, probs.shape[-1]).double()
    gram = torch.einsum("inc,jnc->ij", errors, errors) / errors.shape[1]
    v = float(gram.diagonal().mean())
    c = float((gram.sum() - gram.diagonal().sum()) / (k * (k - 1)))
    ensemble = float(errors.mean(0).square().sum(-1).mean())
    return {"v": v, "c": c, "c_over_v": c / v if v > 0 else float("nan"), "ensemble_error": ensemble}


class _Snapshots:
    """Keeps a copy of the weights at the snapshot epochs; adds each to the repulsion's checkpoints if given."""

    def __init__(self, epochs: set[int], repulsion: CheckpointRepulsion | None, first_checkpoint: int) -> None:
        self.epochs = epochs
        self.repulsion = repulsion
        self.first_checkpoint = first_checkpoint
        self.states: list[dict[str, Tensor]] = []

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch in self.epochs:
            self.states.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})
        if self.repulsion is not None and (state.epoch == self.first_checkpoint or state.epoch in self.epochs):
            self.repulsion.add_checkpoint()


class _WarmRestarts:
    """Cosine annealing with warm restarts from epoch ``start`` on, stepped after every optimizer step."""

    def __init__(self, start: int, cycle_steps: int) -> None:
        self.start = start
        self.cycle_steps = cycle_steps
        self.scheduler: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts | None = None

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch == self.start:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
                state.optimizer, T_0=self.cycle_steps, eta_min=0.0
            )

    def on_step_end(self, state: TrainState) -> None:
        if self.scheduler is not None:
            self.scheduler.step()
            state.log("lr", state.optimizer.param_groups[0]["lr"])


def _ensemble_rows(states: list[dict[str, Tensor]], model: nn.Module, data: Dataset, device: str) -> list[dict]:
    x, y = data.x_test.to(device), data.y_test.to(device)
    probs = []
    model.eval()
    with torch.no_grad():
        for weights in states:
            model.load_state_dict(weights)
            probs.append(torch.softmax(model(x).double(), -1))
    stacked = torch.stack(probs)
    rows = [
        {"quantity": "snapshot_accuracy", "value": float((p.argmax(-1) == y).double().mean()), "snapshot": i + 1}
        for i, p in enumerate(probs)
    ]
    rows.append({"quantity": "ensemble_accuracy", "value": float((stacked.mean(0).argmax(-1) == y).double().mean())})
    rows += [{"quantity": key, "value": value} for key, value in error_moments(stacked, y).items()]
    return rows


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Train one method; log checkpoint distances; evaluate its snapshots alone and as an ensemble."""
    data = load_dataset(config["dataset"], ctx.data_dir).subset(config["n_train"], config["n_test"])
    widths = tuple(config["widths"])
    warmup, cycle, cycles = config["warmup"], config["cycle"], config["cycles"]
    epochs = warmup + cycle * cycles
    snapshot_epochs = {warmup + cycle * k for k in range(1, cycles + 1)}
    steps_per_epoch = -(-len(data.y_train) // config["batch_size"])

    def model_factory() -> nn.Module:
        return make_model("mlp", data.input_shape, data.num_classes, widths=widths)

    init_key = config_hash({"model": "mlp", "data": config["dataset"], "seed": config["seed"], "widths": widths})

    def initial_state() -> dict[str, Tensor]:
        torch.manual_seed(config["seed"])
        return model_factory().state_dict()

    init = ctx.store.artifact(f"init-mlp-{init_key}", initial_state)
    holder: dict[str, CheckpointRepulsion] = {}
    snapshots = _Snapshots(snapshot_epochs, None, warmup)
    repulsive = config["method"] == "repulsion"

    def optimizer_factory(model: nn.Module) -> torch.optim.Optimizer:
        if repulsive:
            holder["repulsion"] = CheckpointRepulsion(model, sigma=config["sigma"], strength=config["strength"])
            snapshots.repulsion = holder["repulsion"]
        return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=L2)

    def repulsion(model: nn.Module) -> Tensor:
        return holder["repulsion"].penalty()

    distances = CheckpointDistances(
        every=max(1, steps_per_epoch // 4),
        at_epochs=sorted(({warmup} | snapshot_epochs) - {epochs}),
        sigma=config.get("sigma", 1.0),
    )
    callbacks: list[object] = [snapshots, distances]
    if config["method"] == "restarts":
        callbacks.append(_WarmRestarts(warmup, cycle * steps_per_epoch))
    result = train(
        model_factory,
        optimizer_factory,
        data,
        epochs=epochs,
        batch_size=config["batch_size"],
        seed=config["seed"],
        device=ctx.device,
        init_state=init,
        callbacks=callbacks,
        regularizer=repulsion if repulsive else None,
        progress=ctx.progress,
        desc=label(config),
    )
    frame = result.metrics
    if not result.diverged and len(snapshots.states) >= 2:
        rows = _ensemble_rows(snapshots.states, model_factory().to(ctx.device), data, ctx.device)
        frame = pd.concat([frame, pd.DataFrame(rows).assign(step=frame["step"].max(), epoch=epochs)])
    return frame.assign(label=label(config)).reset_index(drop=True)


STUDY = Study(
    name="checkpoint_distance",
    title="Checkpoint distance: repulsion vs plain training vs warm restarts, snapshot ensembles",
    grid=grid,
    run=run,
    version="2",  # 2: train_loss is the task loss, the repulsion is logged as regularizer
)
