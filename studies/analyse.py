"""``valley surface`` and ``valley curvature``: the loss surface and the Hessian of one trained model.

The model, its weights, the data and the loss are named as :mod:`studies.specs` describes: ``--model`` a built-in
architecture or ``pkg.module:factory`` (with ``--model-kwargs``), ``--checkpoint`` a state dict (plain, under
``model``/``state_dict``/``model_state_dict``, or valley's own checkpoint; read with ``weights_only=True``),
``--data`` a built-in data set, a ``.pt``/``.npz`` file or ``pkg.module:fn``, ``--loss`` a name or ``pkg.module:fn``
and ``--forward`` an optional ``forward_fn(model, batch) -> (outputs, targets)``. ``surface`` writes a 1D slice
along a filter-normalised random direction, a 1D interpolation to a second checkpoint (``--to``) or a 2D
filter-normalised random plane, chunked and resumable through ``--cache-dir``; ``curvature`` writes the top-k Hessian
eigenvalues (Lanczos), the Hutchinson trace and optionally the SLQ spectral density. Both write a tidy CSV (atomically)
and a JSON of their configuration beside it; under ``torchrun`` the work is split over the processes and rank 0 writes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported inside the commands: building the parser stays light (valley --help)
    import pandas as pd
    from torch import nn

    from studies import specs

EPILOG = (
    "--model: a built-in architecture (mlp, lenet5, adam_cnn, resnet; sized from the data) or pkg.module:factory "
    "returning an nn.Module, called with --model-kwargs. --checkpoint: a plain state_dict, one under 'model', "
    "'state_dict' or 'model_state_dict', or valley's own checkpoint (torch.load(weights_only=True)). --data: a "
    "built-in data set, a .pt/.npz file of tensors (x/y, inputs/targets or x_train/y_train/x_test/y_test) or "
    "pkg.module:fn returning (inputs, targets), batches or a DataLoader. Under torchrun --nproc-per-node N the work "
    "is split over the N processes; rank 0 prints and writes --out and its .json (arguments, configuration, versions)."
)


def target_arguments(p: argparse.ArgumentParser, out: str, out_help: str = "CSV to write") -> None:
    """The arguments naming model, weights, data, loss and device, shared by surface, curvature and analyse."""
    p.epilog = EPILOG
    p.add_argument("--checkpoint", type=Path, required=True, help="the weights (.pt state dict or checkpoint)")
    p.add_argument("--model", required=True, help="built-in name (mlp, lenet5, adam_cnn, resnet) or pkg.module:factory")
    p.add_argument("--model-kwargs", type=json.loads, default={}, help="JSON keyword arguments of the model factory")
    p.add_argument(
        "--data", "--dataset", dest="data", required=True, help="built-in name, .pt/.npz file or pkg.module:fn"
    )
    p.add_argument(
        "--loss", default="cross_entropy", help="cross_entropy (default), mse, l1, nll, ... or pkg.module:fn"
    )
    p.add_argument("--forward", default=None, help="pkg.module:fn with fn(model, batch) -> (outputs, targets)")
    p.add_argument("--data-dir", default=None, help="folder with MNIST/Fashion-MNIST/CIFAR-10 ($VALLEY_DATA)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="data split (default train)")
    p.add_argument("--samples", type=int, default=None, help="use the first N examples of the split")
    p.add_argument("--batch-size", type=int, default=1000, help="examples per forward pass (memory bound)")
    p.add_argument("--seed", type=int, default=0, help="random directions / start vector and probes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    p.add_argument("--out", type=Path, default=Path(out), help=f"{out_help} (default {out})")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bars (default: on when stderr is a terminal)",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``surface`` and ``curvature`` subcommands to the ``valley`` parser."""
    surface = sub.add_parser(
        "surface",
        help="loss surface of a checkpoint: 1D slice or interpolation, 2D random plane",
        description="Columns: alpha, [beta,] loss, accuracy. --dims 2: filter-normalised random plane "
        "θ + α d1 + β d2 on [-span, span]²; --dims 1: along one such direction, or with --to PATH the interpolation "
        "(1 − α) θ + α θ_to on [-span, 1 + span].",
    )
    target_arguments(surface, "surface.csv")
    surface.add_argument("--dims", type=int, choices=(1, 2), default=2, help="1D or 2D (default 2)")
    surface.add_argument("--to", type=Path, default=None, help="1D: interpolate to this checkpoint's weights")
    surface.add_argument("--resolution", type=int, default=21, help="points per axis (default 21)")
    surface.add_argument("--span", type=float, default=None, help="half width (default 1; 0.5 beyond ends with --to)")
    surface.add_argument(
        "--bn-policy",
        choices=("saved", "recompute"),
        default=None,
        help="BatchNorm: saved, or re-estimated per point (default: recompute along --to between BatchNorm models)",
    )
    surface.add_argument("--chunk-size", type=int, default=64, help="grid points per chunk (default 64)")
    surface.add_argument("--cache-dir", type=Path, default=None, help="finished chunks (default OUT.chunks/)")
    surface.set_defaults(func=_cmd_surface)

    curvature = sub.add_parser(
        "curvature",
        help="Hessian of a checkpoint's loss: top-k eigenvalues, trace, spectral density",
        description="Columns: estimator, quantity, index, value. Lanczos: eigenvalue, residual, converged; "
        "Hutchinson (a fixed number of Rademacher probes): trace, standard_error; SLQ (--density): grid, density.",
    )
    target_arguments(curvature, "curvature.csv")
    curvature.add_argument("--dtype", choices=("float32", "float64"), default="float64", help="Hessian dtype")
    curvature.add_argument("--top-k", type=int, default=3, help="eigenvalues by Lanczos (default 3)")
    curvature.add_argument("--trace-probes", type=int, default=100, help="Hutchinson probes (default 100)")
    curvature.add_argument("--density", action="store_true", help="add the SLQ spectral density")
    curvature.add_argument("--slq-probes", type=int, default=4, help="SLQ probe vectors (default 4)")
    curvature.add_argument("--slq-steps", type=int, default=40, help="Lanczos steps per SLQ probe (default 40)")
    curvature.set_defaults(func=_cmd_curvature)


def load_model(
    checkpoint: str | Path, model: str, model_kwargs: dict, input_shape: Sequence[int], num_classes: int
) -> nn.Module:
    """Build ``model`` and load a checkpoint's weights into it (see :mod:`studies.specs`); returns it in eval mode.

    ``model`` is a built-in name (sized by ``input_shape`` and ``num_classes``) or ``pkg.module:factory``.

    Raises:
        FileNotFoundError: if ``checkpoint`` does not exist.
        ValueError: if the weights do not fit the model (naming the first missing, unexpected or mis-shaped key).
    """
    from studies import specs

    net = specs.build_model(model, model_kwargs, specs.Sizing(tuple(input_shape), num_classes))
    what = f"checkpoint {str(checkpoint)!r} does not fit {model} {json.dumps(model_kwargs)}"
    return specs.load_weights(net, specs.read_state_dict(checkpoint), what)


def analysis_target(args: argparse.Namespace) -> tuple[specs.Target, str]:
    """The checkpoint's model in eval mode on this rank's device, with the chosen data, loss and hook there."""
    from landscape import distributed
    from studies import specs
    from studies.runner import resolve_device

    device = distributed.local_device(resolve_device(args.device))
    target = specs.load_target(
        args.model,
        args.checkpoint,
        args.data,
        args.model_kwargs,
        args.loss,
        args.forward,
        args.split,
        args.samples,
        args.batch_size,
        args.data_dir,
        device,
    )
    return target, device


def _write(args: argparse.Namespace, frame: pd.DataFrame, config: dict, device: str) -> None:
    """Rank 0 writes the CSV and, beside it, ``<out>.json`` with the command's arguments and the result's config."""
    from landscape import distributed
    from landscape.files import atomic_write
    from studies.store import environment, write_frame

    if not distributed.is_main():
        return
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "func"}
    meta = {"arguments": arguments, "config": config, "environment": environment(device)}
    meta["environment"]["world_size"] = distributed.world_size()
    write_frame(args.out, frame)
    atomic_write(args.out.with_suffix(".json"), json.dumps(meta, indent=2, default=str))


def _cmd_surface(args: argparse.Namespace) -> int:
    from landscape import distributed
    from landscape.directions import random_direction
    from landscape.surfaces import interpolate_1d, make_grid, surface_1d, surface_2d
    from studies import specs

    if args.resolution < 1:
        raise ValueError(f"Invalid --resolution: {args.resolution}")
    if args.to is not None and args.dims != 1:
        raise ValueError(f"--to interpolates in 1D; got --dims {args.dims}")
    span = args.span if args.span is not None else (0.5 if args.to is not None else 1.0)
    if not span > 0:
        raise ValueError(f"Invalid --span: {span}")
    target, device = analysis_target(args)
    model = target.model
    options = {
        **({"bn": args.bn_policy} if args.bn_policy else {}),
        "bn_data": target.batches[:1],
        "loss_fn": target.loss_fn,
        "forward_fn": target.forward_fn,
        "chunk_size": args.chunk_size,
        "cache_dir": args.cache_dir or args.out.with_suffix(".chunks"),
        "progress": args.progress and distributed.is_main(),
        "distributed": True,
    }
    if args.to is not None:
        end = specs.load_second(target, args.to, args.model, args.model_kwargs)
        alphas = make_grid(-span, 1 + span, args.resolution, include=(0.0, 1.0))
        surface = interpolate_1d(model, model, end, target.batches, alphas, **options)
    elif args.dims == 1:
        grid = make_grid(-span, span, args.resolution)
        surface = surface_1d(model, target.batches, random_direction(model, seed=args.seed), grid, **options)
    else:
        grid = make_grid(-span, span, args.resolution)
        directions = [random_direction(model, seed=args.seed + i) for i in range(2)]
        surface = surface_2d(model, target.batches, directions, grid, grid, **options)
    _write(args, surface.frame(), surface.config | {"target": target.record}, device)
    if distributed.is_main():
        print(
            f"surface: {surface.loss.size} points, loss at the origin {surface.at_origin():.6g}, "
            f"{surface.config['chunks_computed']} chunks computed and {surface.config['chunks_reused']} reused on "
            f"{distributed.world_size()} process(es); written to {args.out}"
        )
    return 0


def _cmd_curvature(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from landscape import distributed
    from landscape.curvature import HessianOperator, hutchinson_trace, lanczos_eigenpairs, slq_density

    for name in ("top_k", "trace_probes", "slq_probes", "slq_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"Invalid --{name.replace('_', '-')}: {getattr(args, name)}")
    target, device = analysis_target(args)
    dtype = getattr(torch, args.dtype)
    hessian = HessianOperator(
        target.model, target.loss_fn, target.batches, dtype, distributed=True, forward_fn=target.forward_fn
    )
    progress = args.progress and distributed.is_main()
    eigen = lanczos_eigenpairs(hessian, k=args.top_k, seed=args.seed, progress=progress)
    probes = args.trace_probes
    trace = hutchinson_trace(hessian, probes, rtol=0.0, min_samples=max(2, probes), seed=args.seed, progress=progress)
    rows = [
        {"estimator": "lanczos", "quantity": q, "index": i, "value": float(v)}
        for q, values in (
            ("eigenvalue", eigen.eigenvalues),
            ("residual", eigen.residuals),
            ("converged", eigen.converged),
        )
        for i, v in enumerate(values)
    ]
    rows += [
        {"estimator": "hutchinson", "quantity": "trace", "index": 0, "value": trace.estimate},
        {"estimator": "hutchinson", "quantity": "standard_error", "index": 0, "value": trace.standard_error},
    ]
    config = {"parameters": hessian.shape[0], "examples": target.n_examples, "lanczos": eigen.config}
    config["target"] = target.record
    config |= {"lanczos_applications": eigen.applications, "trace_applications": trace.applications}
    if args.density:
        density = slq_density(hessian, args.slq_probes, args.slq_steps, num_grid=200, seed=args.seed, progress=progress)
        for quantity, values in (("grid", density.grid), ("density", density.density)):
            rows += [
                {"estimator": "slq", "quantity": quantity, "index": i, "value": float(v)} for i, v in enumerate(values)
            ]
        config |= {"slq": density.config, "slq_applications": density.applications}
    _write(args, pd.DataFrame(rows), config, device)
    if distributed.is_main():
        top = ", ".join(f"{v:.6g}" for v in eigen.eigenvalues)
        print(
            f"curvature: {hessian.shape[0]} parameters, {target.n_examples} examples on {distributed.world_size()} "
            f"process(es); top-{args.top_k} eigenvalues {top}; trace {trace.estimate:.6g} ± {trace.standard_error:.2g}"
            f"; written to {args.out}"
        )
    return 0
