r"""Flat minima: small- vs large-batch SGD and SGD vs SAM — surfaces, sharpness and curvature against the gap.

Sources:

* Keskar, Mudigere, Nocedal, Smelyanskiy, Tang (2017). On Large-Batch Training for Deep Learning: Generalization Gap
  and Sharp Minima. ICLR. Small batches (256) and large batches (10% of the training set) from one initialisation;
  the 1D "parametric plot" :math:`f(\alpha x_l^* + (1-\alpha) x_s^*)` for :math:`\alpha \in [-1, 2]` (their Fig. 3,
  official code github.com/keskarnitish/large-batch-training: 25 points, train and test loss and accuracy) and
  the ε-sharpness :math:`\phi_{x,f}(\epsilon, A)` (Eq. 4, Table 3: ε = 1e-3 and 5e-4, full space and a random
  100-dimensional subspace, 10 L-BFGS-B iterations). Claim: large batches reach sharper minima and generalise worse.
* Foret, Kleiner, Mobahi, Neyshabur (2021). Sharpness-Aware Minimization for Efficiently Improving Generalization.
  ICLR. SAM with ρ = 0.05 around SGD; the sharpness :math:`\max_{\lVert\epsilon\rVert \le \rho} L(w+\epsilon)-L(w)`
  and the Hessian spectrum (their Fig. 3: SAM lowers λ_max and the bulk). Claim: SAM reaches flatter minima.
* Li, Xu, Taylor, Studer, Goldstein (2018). Visualizing the Loss Landscape of Neural Nets. NeurIPS. 2D surfaces along
  two filter-normalised Gaussian directions (biases and BN ignored), α, β ∈ [−1, 1] (51 × 51 in the paper).
* Dinh, Pascanu, Bengio, Bengio (2017). Sharp Minima Can Generalize For Deep Nets. ICML, Section 4. Multiplying a
  ReLU layer by α and the next by 1/α keeps the function (and so the test loss) but changes the curvature.
* Hessian spectra: top eigenvalues by Lanczos, trace by Hutchinson (1990), density by stochastic Lanczos quadrature
  (Ghorbani, Krishnan & Xiao 2019), all from :mod:`landscape.curvature`.

Setup: one saved random initialisation per seed; three solutions (:data:`SOLUTIONS`) — "SB SGD" (batch
``sb_batch``), "LB SGD" (10% of the training set, Keskar et al.) and "SB SAM" (SAM around the same SGD at the small
batch). SGD with momentum 0.9 and lr 0.05 (Foret et al.'s base optimizer; the lr is ours, the usual scale for this
MLP on MNIST-1D), no weight decay, so that the batch size and the SAM ascent are the only differences; SAM ρ = 0.05
(Foret et al.). Deviations: Keskar et al. trained with Adam for the same number of epochs; with SGD a large batch
needs more epochs to fit the training set, so it gets ``lb_epochs`` (≈ the small batch's number of steps) and both
reach ≈100% training accuracy, as both did in their Table 2 — the comparison is between minima, not between
budgets. Data: MNIST-1D (embedded, 4000/1000) with an MLP 40-100-100-10 at the quick scale; MNIST with an MLP
784-512-512-10 and Keskar's batch 256 at the full scale when its files are present (else MNIST-1D). The paper scale
trains the same MLP on the real Fashion-MNIST (60000/10000; required) for 10 small-batch and 50 large-batch epochs,
two seeds, and computes the sharpness, curvature and surface measures on a fixed random subset of 5000 training
examples (``n_measure``; Keskar et al. used the whole training set — deviation to fit a CPU in about an hour), the
losses, gaps and interpolations on the whole splits.

For each solution (``analysis="solution"``): training curves; train/test loss and accuracy and the gaps (test − train
loss, train − test accuracy); a filter-normalised 2D training-loss surface; Keskar's ε-sharpness; SAM sharpness (first
order and by projected gradient ascent) and ASAM's adaptive sharpness (Kwon et al. 2021, ρ = 0.5, η = 0.01); the top
Hessian eigenvalues (Lanczos), the trace (Hutchinson) and the spectral density (SLQ), all on the training set (the probe
subset where ``n_measure`` is set); and λ_max with the losses at snapshots taken at 5%-75% of training
(``analysis="trajectory"``), because the cross-entropy Hessian shrinks as the training loss goes to zero: two solutions
that end at different training losses are compared at equal training loss along these curves. Per pair of solutions
(``analysis="interpolation"``): the 1D interpolation on train and test data. On "SB SGD" (``analysis="dinh"``): the Dinh
rescaling of the first two layers for every factor in ``dinh_scales``.
"""

from __future__ import annotations

import copy
import math
from typing import Any, NamedTuple

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from landscape.curvature import HessianOperator, hutchinson_trace, lanczos_eigenpairs, slq_density
from landscape.directions import random_direction
from landscape.reparam import rescale_relu_layers
from landscape.sharpness import asam_sharpness, epsilon_sharpness, sam_sharpness
from landscape.surfaces import interpolate_1d, make_grid, surface_2d
from optim import SAM
from studies.data import Dataset, load_dataset, require_dataset, why_unavailable
from studies.models import make_model
from studies.runner import Context, Study
from studies.store import config_hash
from studies.train import TrainState, evaluate, train

VERSION = "3"
#: name -> (optimizer, batch regime); see the module docstring.
SOLUTIONS: dict[str, tuple[str, str]] = {
    "SB SGD": ("SGD", "small"),
    "LB SGD": ("SGD", "large"),
    "SB SAM": ("SAM", "small"),
}
#: The 1D interpolations (from, to): Keskar et al.'s small → large batch, and SGD → SAM.
PAIRS: tuple[tuple[str, str], ...] = (("SB SGD", "LB SGD"), ("SB SGD", "SB SAM"))
#: Optimizer hyperparameters (module docstring): SGD lr and momentum, SAM ρ, ASAM ρ and η, and Keskar's LB fraction.
HYPER: dict[str, float] = {"lr": 0.05, "momentum": 0.9, "rho": 0.05, "asam_rho": 0.5, "asam_eta": 0.01}
LB_FRACTION = 0.1
#: The splits whose losses, accuracies and interpolations are reported (the probe set only serves the measures).
SPLITS = ("train", "test")
#: Fractions of training at which a snapshot is kept for the sharpness-along-training curves.
SNAPSHOT_FRACTIONS = (0.05, 0.125, 0.25, 0.5, 0.75)
#: The two layers the Dinh rescaling multiplies by α and 1/α (ReLU between them).
DINH_LAYERS = ("layers.0", "layers.1")

_TRAINING_KEYS = ("dataset", "n_train", "n_test", "widths", "sb_batch", "sb_epochs", "lb_epochs", "seed")
_MNIST1D = {"dataset": "mnist1d", "n_train": None, "n_test": None, "widths": [100, 100]}
_MNIST1D |= {"sb_batch": 64, "sb_epochs": 40, "lb_epochs": 200}
#: scale -> data, model, training and analysis settings (grid sizes, estimator budgets, Dinh factors, seeds).
_SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "dataset": "mnist1d", "n_train": 512, "n_test": 256, "widths": [32, 32],
        "sb_batch": 32, "sb_epochs": 8, "lb_epochs": 30, "seeds": [0],
        "grid_points": 7, "interp_points": 7, "eigen_k": 2, "hutchinson_max": 20, "slq_probes": 1, "slq_steps": 10,
        "subspace_dim": None, "curvature_dtype": "float64", "eval_batch": None, "dinh_scales": [0.5, 1.0, 2.0],
    },
    "quick": {
        **_MNIST1D, "seeds": [0],
        "grid_points": 21, "interp_points": 31, "eigen_k": 5, "hutchinson_max": 100, "slq_probes": 2, "slq_steps": 30,
        "subspace_dim": None, "curvature_dtype": "float32", "eval_batch": None,
        "dinh_scales": [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
    },
    "paper": {
        "dataset": "fashion_mnist", "n_train": None, "n_test": None, "widths": [512, 512],
        "sb_batch": 256, "sb_epochs": 10, "lb_epochs": 50, "seeds": [0, 1], "n_measure": 5000,
        "grid_points": 21, "interp_points": 25, "eigen_k": 5, "hutchinson_max": 100, "slq_probes": 2, "slq_steps": 30,
        "subspace_dim": 100, "curvature_dtype": "float32", "eval_batch": 2500,
        "dinh_scales": [0.25, 1.0, 4.0],
    },
    "full": {
        "dataset": "mnist", "n_train": None, "n_test": None, "widths": [512, 512],
        "sb_batch": 256, "sb_epochs": 50, "lb_epochs": 250, "seeds": [0, 1, 2],
        "grid_points": 51, "interp_points": 61, "eigen_k": 10, "hutchinson_max": 500, "slq_probes": 10,
        "slq_steps": 90, "subspace_dim": 100, "curvature_dtype": "float64", "eval_batch": 2000,
        "dinh_scales": [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
    },
}  # fmt: skip


def grid(scale: str, ctx: Context) -> list[dict[str, Any]]:
    """Per seed: one config per solution, one per interpolated pair, one for the Dinh rescaling."""
    setup = dict(_SCALES[scale])
    if scale == "paper":
        require_dataset(setup["dataset"], ctx.data_dir)
    if (reason := why_unavailable(setup["dataset"], ctx.data_dir)) is not None:
        ctx.note(f"The flat-minima runs use the embedded MNIST-1D data (quick training settings). {reason}")
        setup |= _MNIST1D
    seeds = setup.pop("seeds")
    configs = []
    for seed in seeds:
        base = dict(setup, seed=seed)
        configs += [dict(base, analysis="solution", solution=name) for name in SOLUTIONS]
        configs += [dict(base, analysis="interpolation", from_solution=a, to_solution=b) for a, b in PAIRS]
        configs.append(dict(base, analysis="dinh", solution="SB SGD"))
    return configs


def run(config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Train (or load) the solutions a config needs, then compute its analysis as a tidy frame."""
    data = load_dataset(config["dataset"], ctx.data_dir).subset(config["n_train"], config["n_test"])
    names = [config["from_solution"], config["to_solution"]] if config["analysis"] == "interpolation" else []
    names = names or [config["solution"]]
    solutions = {name: _solution(config, name, data, ctx) for name in names}
    widths = "-".join(str(w) for w in config["widths"])
    setup = {
        "model": f"MLP {math.prod(data.input_shape)}-{widths}-{data.num_classes}",
        "n_train_used": len(data.y_train),
    }
    setup |= {k: HYPER[k] for k in ("lr", "momentum", "rho")}
    for name, solution in solutions.items():
        if solution.diverged:
            ctx.note(f"{name} (seed {config['seed']}) diverged; its {config['analysis']} analysis is skipped.")
            return solution.metrics.assign(analysis="training", **setup)
    splits = {
        "train": (data.x_train.to(ctx.device), data.y_train.to(ctx.device)),
        "test": (data.x_test.to(ctx.device), data.y_test.to(ctx.device)),
    }
    probe = data.subset(config.get("n_measure"), seed=config["seed"])
    splits["probe"] = (probe.x_train.to(ctx.device), probe.y_train.to(ctx.device))
    if config["analysis"] == "interpolation":
        start, end = solutions.values()
        return _interpolation(start.model, end.model, splits, config).assign(**setup)
    solution = solutions[config["solution"]]
    if config["analysis"] == "dinh":
        return _dinh(solution.model, splits, config).assign(**setup)
    measures = _measures(solution.model, splits, config, ctx)
    trajectory = _trajectory(solution, splits, config)
    frames = [solution.metrics.assign(analysis="training"), measures, trajectory]
    return pd.concat(frames, ignore_index=True).assign(**setup)


class _Solution(NamedTuple):
    """A trained solution: the model (eval mode), its training metrics, divergence and snapshots by epoch."""

    model: nn.Module
    metrics: pd.DataFrame
    diverged: bool
    snapshots: dict[int, dict[str, Tensor]]


class _Snapshots:
    """Training callback keeping a CPU copy of the weights after each epoch of ``epochs``."""

    def __init__(self, epochs: set[int]) -> None:
        self.epochs = epochs
        self.states: dict[str, dict[str, Tensor]] = {}

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch in self.epochs:
            self.states[str(state.epoch)] = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}


def snapshot_epochs(epochs: int) -> list[int]:
    """Epochs at :data:`SNAPSHOT_FRACTIONS` of training, before the last one (which is the solution itself).

    Example:
        >>> snapshot_epochs(40)
        [2, 5, 10, 20, 30]
    """
    return sorted({max(1, round(f * epochs)) for f in SNAPSHOT_FRACTIONS} - {epochs})


def _solution(config: dict[str, Any], name: str, data: Dataset, ctx: Context) -> _Solution:
    """The trained solution ``name``: a store artifact shared by every analysis of the seed (trained once)."""
    optimizer, regime = SOLUTIONS[name]
    batch = config["sb_batch"] if regime == "small" else max(1, round(LB_FRACTION * len(data.y_train)))
    epochs = config["sb_epochs"] if regime == "small" else config["lb_epochs"]
    widths = tuple(config["widths"])

    def model_factory() -> nn.Module:
        return make_model("mlp", data.input_shape, data.num_classes, widths=widths)

    def initial_state() -> dict[str, Tensor]:
        torch.manual_seed(config["seed"])
        return model_factory().state_dict()

    def optimizer_factory(model: nn.Module) -> torch.optim.Optimizer:
        sgd = torch.optim.SGD(model.parameters(), lr=HYPER["lr"], momentum=HYPER["momentum"])
        return SAM(sgd, rho=HYPER["rho"]) if optimizer == "SAM" else sgd

    init_key = config_hash({"model": "mlp", "data": config["dataset"], "seed": config["seed"], "widths": widths})
    init = ctx.store.artifact(f"init-mlp-{init_key}", initial_state)

    def trained() -> dict[str, Any]:
        snapshots = _Snapshots(set(snapshot_epochs(epochs)))
        result = train(
            model_factory,
            optimizer_factory,
            data,
            epochs=epochs,
            batch_size=batch,
            seed=config["seed"],
            device=ctx.device,
            init_state=init,
            callbacks=[snapshots],
            progress=ctx.progress,
            desc=name,
        )
        metrics = {column: result.metrics[column].tolist() for column in result.metrics.columns}
        return {
            "state": result.state_dict,
            "metrics": metrics,
            "diverged": result.diverged,
            "snapshots": snapshots.states,
        }

    spec = {key: config[key] for key in _TRAINING_KEYS} | {"solution": name, "hyper": HYPER, "batch_size": batch}
    saved = ctx.store.artifact(f"solution-{config_hash(spec, VERSION)}", trained)
    model = model_factory().to(ctx.device)
    model.load_state_dict(saved["state"])
    model.eval()
    metrics = pd.DataFrame(saved["metrics"]).assign(batch_size=batch, epochs=epochs, optimizer=optimizer)
    snapshots = {int(epoch): state for epoch, state in saved["snapshots"].items()}
    return _Solution(model, metrics, bool(saved["diverged"]), snapshots)


def _rows(analysis: str, values: dict[str, float], **keys: Any) -> list[dict[str, Any]]:
    return [{"analysis": analysis, "quantity": q, "value": float(v), **keys} for q, v in values.items()]


def _losses(model: nn.Module, splits: dict[str, tuple[Tensor, Tensor]], config: dict[str, Any]) -> dict[str, float]:
    """Train and test loss and accuracy, and the generalisation gaps (test − train loss, train − test accuracy)."""
    batch = config["eval_batch"] or len(splits["train"][1])
    (train_loss, train_acc), (test_loss, test_acc) = (evaluate(model, *splits[s], batch_size=batch) for s in SPLITS)
    values = {"train_loss": train_loss, "test_loss": test_loss, "train_accuracy": train_acc, "test_accuracy": test_acc}
    values = {k: float(v) for k, v in values.items()}
    values["loss_gap"] = values["test_loss"] - values["train_loss"]
    values["accuracy_gap"] = values["train_accuracy"] - values["test_accuracy"]
    return values


def _sharpness(model: nn.Module, train_data: tuple[Tensor, Tensor], config: dict[str, Any]) -> dict[str, float]:
    """Keskar's ε-sharpness (ε = 1e-3, 5e-4; a 100-dim subspace where asked), SAM (first order, ascent), ASAM."""
    options = {"batch_size": config["eval_batch"], "seed": config["seed"]}
    values = {
        f"epsilon_sharpness_{eps:g}": epsilon_sharpness(model, train_data, eps, **options).value for eps in (1e-3, 5e-4)
    }
    if config["subspace_dim"] is not None:
        dim = config["subspace_dim"]
        values[f"epsilon_sharpness_1e-3_p{dim}"] = epsilon_sharpness(model, train_data, 1e-3, dim, **options).value
    values["sam_sharpness"] = sam_sharpness(model, train_data, HYPER["rho"], **options).value
    values["sam_sharpness_ascent"] = sam_sharpness(model, train_data, HYPER["rho"], "ascent", **options).value
    values["asam_sharpness"] = asam_sharpness(model, train_data, HYPER["asam_rho"], HYPER["asam_eta"], **options).value
    return values


def _hessian(model: nn.Module, train_data: tuple[Tensor, Tensor], config: dict[str, Any]) -> HessianOperator:
    dtype = getattr(torch, config["curvature_dtype"])
    return HessianOperator(model, F.cross_entropy, train_data, dtype=dtype, batch_size=config["eval_batch"])


def _lanczos(operator: HessianOperator, k: int, seed: int):
    """Top-k eigenpairs; float32 products carry ~1e-7 relative noise, so the residual check is relaxed to 1e-4 there."""
    residual_tol = 1e-6 if operator.torch_dtype == torch.float64 else 1e-4
    return lanczos_eigenpairs(operator, k=k, seed=seed, residual_tol=residual_tol)


def _measures(model: nn.Module, splits: dict, config: dict[str, Any], ctx: Context) -> pd.DataFrame:
    """Every per-solution measure: losses and gaps, sharpness, curvature, spectral density and the 2D surface."""
    seed = config["seed"]
    summary = _losses(model, splits, config) | _sharpness(model, splits["probe"], config)
    eigen = _lanczos(_hessian(model, splits["probe"], config), config["eigen_k"], seed)
    trace = hutchinson_trace(_hessian(model, splits["probe"], config), config["hutchinson_max"], seed=seed)
    density = slq_density(
        _hessian(model, splits["probe"], config), config["slq_probes"], config["slq_steps"], num_grid=400, seed=seed
    )
    summary |= {
        "lambda_max": eigen.eigenvalues[0],
        "lanczos_applications": eigen.applications,
        "hessian_trace": trace.estimate,
        "hessian_trace_se": trace.standard_error,
        "hutchinson_applications": trace.applications,
        "slq_trace": density.moment(1) * density.dimension,
        "parameters": density.dimension,
    }
    rows = _rows("summary", summary)
    for i, (value, residual, ok) in enumerate(zip(eigen.eigenvalues, eigen.residuals, eigen.converged, strict=True)):
        rows += _rows("eigenvalue", {"eigenvalue": value, "residual": residual, "converged": ok}, index=i)
    rows += [
        {"analysis": "spectrum", "quantity": "density", "value": float(d), "eigenvalue": float(t)}
        for t, d in zip(density.grid, density.density, strict=True)
    ]
    directions = [random_direction(model, seed=2 * seed + k) for k in (1, 2)]
    coords = make_grid(-1.0, 1.0, config["grid_points"])
    surface = surface_2d(
        model,
        splits["probe"],
        directions,
        coords,
        coords,
        batch_size=config["eval_batch"],
        cache_dir=ctx.store.run_dir(config) / "surface_chunks",
        progress=ctx.progress,
    )
    grid_frame = surface.frame().melt(["alpha", "beta"], var_name="quantity", value_name="value")
    rows += grid_frame.assign(analysis="surface", cosine=surface.config["cosine"]).to_dict("records")
    return pd.DataFrame(rows)


def _trajectory(solution: _Solution, splits: dict, config: dict[str, Any]) -> pd.DataFrame:
    """λ_max (Lanczos) and the losses at the snapshots: sharpness compared at equal training loss, not only at the end.

    The cross-entropy Hessian shrinks as the training loss goes to zero, so two minima are compared fairly along
    their trajectories, at matching training losses.
    """
    rows = []
    for epoch, state in sorted(solution.snapshots.items()):
        model = copy.deepcopy(solution.model)
        model.load_state_dict(state)
        values = _losses(model, splits, config)
        values["lambda_max"] = _lanczos(_hessian(model, splits["probe"], config), 1, config["seed"]).eigenvalues[0]
        rows += _rows("trajectory", values, epoch=epoch)
    return pd.DataFrame(rows)


def _interpolation(model_a: nn.Module, model_b: nn.Module, splits: dict, config: dict) -> pd.DataFrame:
    """Loss and accuracy along (1 − α)θ_a + αθ_b, α ∈ [−1, 2] (Keskar et al.'s range), on train and test data."""
    alphas = make_grid(-1.0, 2.0, config["interp_points"], include=(0.0, 1.0))  # both solutions on the curve
    frames = []
    for split in SPLITS:
        data = splits[split]
        curve = interpolate_1d(model_a, model_a, model_b, data, alphas, batch_size=config["eval_batch"], progress=False)
        frames.append(curve.frame().melt(["alpha"], var_name="quantity", value_name="value").assign(split=split))
    return pd.concat(frames, ignore_index=True).assign(analysis="interpolation")


def _dinh(model: nn.Module, splits: dict, config: dict[str, Any]) -> pd.DataFrame:
    r"""Per factor α: :math:`T_\alpha` on the first two layers, then losses, λ_max and the sharpness measures."""
    rows = []
    for alpha in config["dinh_scales"]:
        scaled = rescale_relu_layers(model, *DINH_LAYERS, alpha)
        values = _losses(scaled, splits, config) | _sharpness(scaled, splits["probe"], config)
        values["lambda_max"] = _lanczos(_hessian(scaled, splits["probe"], config), 1, config["seed"]).eigenvalues[0]
        rows += _rows("dinh", values, scale=alpha)
    return pd.DataFrame(rows)


STUDY = Study(
    name="flat_minima",
    title="Flat minima: small vs large batch and SGD vs SAM (Keskar et al. 2017; Foret et al. 2021; Dinh et al. 2017)",
    grid=grid,
    run=run,
    version=VERSION,
    scales=("tiny", "quick", "paper", "full"),
)
