"""``valley surface`` and ``valley curvature``: the loss surface and the Hessian of one trained model.

The model, its weights, the data and the loss are named as :mod:`studies.specs` describes: ``--model`` a built-in
architecture or ``pkg.module:factory`` (with ``--model-kwargs``), ``--checkpoint`` a state dict (plain, under
``model``/``state_dict``/``model_state_dict``, or valley's own checkpoint; read with ``weights_only=True``),
``--data`` a built-in data set, a ``.pt``/``.npz`` file or ``pkg.module:fn``, ``--loss`` a name or ``pkg.module:fn``
and ``--forward`` an optional ``forward_fn(model, batch) -> (outputs, targets)``. ``surface`` writes a 1D slice
along a filter-normalised random direction, a 1D interpolation to a second checkpoint (``--to``) or a 2D
filter-normalised random plane, chunked and resumable through ``--cache-dir``; ``curvature`` writes the top-k Hessian
eigenvalues (Lanczos), the Hutchinson trace and optionally the SLQ spectral density. Both write a tidy CSV and, beside
it, ``<out>.meta.json`` (the full name plus ``.meta.json``, so it never equals the CSV) with the configuration; the two
are published together (:func:`landscape.files.publish`). The outputs and the chunk cache are checked before any work
starts, and a file at ``--out`` or at its sidecar that valley did not write is never replaced. Under ``torchrun`` the
work is split over the processes and rank 0 writes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from studies import arguments
from studies.errors import UserError

if TYPE_CHECKING:  # imported inside the commands: building the parser stays light (valley --help)
    import pandas as pd
    import torch
    from torch import nn

    from studies import specs

#: Marks a sidecar as written by valley (a file at the sidecar's path without it is never replaced).
WRITER = "valley"
#: Estimated bytes per surface point (grid coordinates, loss and accuracy, the table and its CSV text, per column).
_BYTES_PER_POINT_AND_COLUMN = 64

EPILOG = (
    "--model: a built-in architecture (mlp, lenet5, adam_cnn, resnet; sized from the data) or pkg.module:factory "
    "returning an nn.Module, called with --model-kwargs. --checkpoint: a plain state_dict, one under 'model', "
    "'state_dict' or 'model_state_dict', or valley's own checkpoint (torch.load(weights_only=True)). --data: a "
    "built-in data set, a .pt/.npz file of tensors (x/y, inputs/targets or x_train/y_train/x_test/y_test) or "
    "pkg.module:fn returning (inputs, targets), batches or a DataLoader. Under torchrun --nproc-per-node N the work "
    "is split over the N processes; rank 0 prints and writes --out and OUT.meta.json (arguments, configuration, "
    "versions, the CSV's SHA-256)."
)


def target_arguments(p: argparse.ArgumentParser, out: str, out_help: str = "CSV to write") -> None:
    """The arguments naming model, weights, data, loss and device, shared by surface, curvature and analyse."""
    p.epilog = EPILOG
    p.add_argument("--checkpoint", type=Path, required=True, help="the weights (.pt state dict or checkpoint)")
    p.add_argument("--model", required=True, help="built-in name (mlp, lenet5, adam_cnn, resnet) or pkg.module:factory")
    p.add_argument(
        "--model-kwargs", type=arguments.json_object, default={}, help="JSON keyword arguments of the model factory"
    )
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
    p.add_argument("--seed", type=arguments.seed, default=0, help="random directions / start vector and probes")
    p.add_argument("--device", type=arguments.device, default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
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
    surface.add_argument(
        "--span", type=arguments.span, default=None, help="half width (default 1; 0.5 beyond ends with --to)"
    )
    surface.add_argument(
        "--bn-policy",
        choices=("saved", "recompute"),
        default=None,
        help="BatchNorm: saved, or re-estimated per point (default: recompute along --to between BatchNorm models)",
    )
    surface.add_argument("--chunk-size", type=int, default=64, help="grid points per chunk (default 64)")
    surface.add_argument("--cache-dir", type=Path, default=None, help="finished chunks (default OUT.chunks/)")
    surface.set_defaults(func=_cmd_surface, kept=_chunks_kept)

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


def sidecar(out: Path) -> Path:
    """The metadata file written beside ``out``: its full name plus ``.meta.json`` (never equal to ``out``).

    Example:
        >>> sidecar(Path("runs/s.json"))
        PosixPath('runs/s.json.meta.json')
    """
    return out.with_name(out.name + ".meta.json")


def written_by_valley(
    path: Path, writer: str = WRITER, older: frozenset[str] = frozenset({"arguments", "config", "environment"})
) -> bool:
    """Whether ``path`` is a JSON object valley wrote; by default a sidecar (:data:`WRITER`).

    Marked ``written_by: writer``, or of its older form: unmarked, holding the keys ``older``.
    """
    if not path.is_file():  # absent, or a folder, FIFO, ... that must not be opened
        return False
    try:
        with open(path, "rb") as file:
            meta = json.loads(file.read(1 << 24))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("written_by") == writer or older <= meta.keys())


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an ``--out`` (or its sidecar) valley may not replace, and an unusable cache folder."""
    from landscape.files import OutputPathError, check_output_dir, check_output_file

    out, meta = check_output_file(args.out), check_output_file(sidecar(args.out))
    if meta.exists() and not written_by_valley(meta):
        raise OutputPathError(f"{meta}: exists and valley did not write it; move it away or choose another --out")
    legacy = out.with_suffix(".json")  # where valley wrote the sidecar before it was named OUT.meta.json
    if out.exists() and not meta.exists() and not written_by_valley(legacy):
        raise OutputPathError(f"{out}: exists and valley did not write it (no {meta.name} beside it); move it away")
    if hasattr(args, "cache_dir"):
        cache = _cache_dir(args)
        if cache.resolve() in (out.resolve(), meta.resolve()):
            raise OutputPathError(f"--cache-dir {cache} is the output file itself; give a folder of its own")
        check_output_dir(cache)


def _cache_dir(args: argparse.Namespace) -> Path:
    """``--cache-dir``, else ``OUT.chunks`` (``OUT`` with its suffix replaced; never ``OUT`` itself)."""
    if args.cache_dir is not None:
        return args.cache_dir
    default = args.out.with_suffix(".chunks") if args.out.name not in ("", ".", "..") else args.out / "chunks"
    return default if default != args.out else args.out.with_name(args.out.name + ".chunks")


def _chunks_kept(args: argparse.Namespace) -> str:
    folder = _cache_dir(args)
    return f"{sum(1 for _ in folder.glob('*/chunk_*.npz'))} finished chunks kept in {folder}"


def _write(args: argparse.Namespace, frame: pd.DataFrame, config: dict, device: str) -> None:
    """Rank 0 publishes the CSV and its sidecar together: the CSV's SHA-256, the arguments, the config, versions."""
    from landscape import distributed
    from landscape.files import publish
    from studies.store import environment

    if not distributed.is_main():
        return
    skip = ("func", "kept")
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in skip}
    table = frame.to_csv(index=False)
    meta = {"written_by": WRITER, "output": args.out.name, "sha256": hashlib.sha256(table.encode()).hexdigest()}
    meta |= {"arguments": arguments, "config": config}
    meta["environment"] = environment(device) | {"world_size": distributed.world_size()}
    check_outputs(args)
    publish({args.out: table, sidecar(args.out): json.dumps(meta, indent=2, default=str)})


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_grid_fits(resolution: int, dims: int) -> None:
    """Refuse a grid whose results alone would need more than half of this machine's memory (before allocating)."""
    points = resolution**dims
    needed = points * (dims + 2) * _BYTES_PER_POINT_AND_COLUMN
    memory = _memory_bytes()
    if needed > memory / 2:
        grid = "×".join([str(resolution)] * dims)
        raise UserError(
            f"--resolution {resolution}: a {grid} grid has {points:,} points and its results need about "
            f"{needed / 2**30:,.1f} GiB, more than half of this machine's {memory / 2**30:,.1f} GiB; lower --resolution"
        )


def _check_eigenvectors_fit(model: nn.Module, top_k: int, dtype: torch.dtype) -> None:
    """Refuse ``--top-k`` when the k eigenvectors alone (k × parameters) need more than half of the memory."""
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    needed = min(top_k, parameters) * parameters * dtype.itemsize
    memory = _memory_bytes()
    if needed > memory / 2:
        raise UserError(
            f"--top-k {top_k}: {top_k} eigenvectors of {parameters:,} parameters need about {needed / 2**30:,.1f} "
            f"GiB, more than half of this machine's {memory / 2**30:,.1f} GiB; lower --top-k"
        )


def _cmd_surface(args: argparse.Namespace) -> int:
    from landscape import distributed
    from landscape.directions import random_direction
    from landscape.surfaces import interpolate_1d, make_grid, surface_1d, surface_2d
    from studies import specs

    if args.resolution < 1:
        raise UserError(f"Invalid --resolution: {args.resolution}")
    if args.chunk_size < 1:
        raise UserError(f"Invalid --chunk-size: {args.chunk_size}")
    if args.to is not None and args.dims != 1:
        raise UserError(f"--to interpolates in 1D; got --dims {args.dims}")
    span = args.span if args.span is not None else (0.5 if args.to is not None else 1.0)
    _check_grid_fits(args.resolution, args.dims)
    check_outputs(args)
    if args.to is not None:
        specs.read_state_dict(args.to)  # a damaged second checkpoint is refused before the data is loaded
    target, device = analysis_target(args)
    model = target.model
    options = {
        **({"bn": args.bn_policy} if args.bn_policy else {}),
        "bn_data": target.batches[:1],
        "loss_fn": target.loss_fn,
        "forward_fn": target.forward_fn,
        "chunk_size": args.chunk_size,
        "cache_dir": _cache_dir(args),
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
            raise UserError(f"Invalid --{name.replace('_', '-')}: {getattr(args, name)}")
    check_outputs(args)
    target, device = analysis_target(args)
    dtype = getattr(torch, args.dtype)
    _check_eigenvectors_fit(target.model, args.top_k, dtype)
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
