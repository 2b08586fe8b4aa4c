"""``valley surface`` and ``valley curvature``: the loss surface and the Hessian of one trained model.

The weights come from a checkpoint written by :func:`studies.train.train` (``--checkpoint``, its ``"model"`` entry; a
bare state dict works too), loaded with ``weights_only=True`` into the architecture ``--model`` with ``--model-kwargs``
(a JSON object passed to :func:`studies.models.make_model`), sized from ``--dataset``. ``surface`` writes a 1D slice
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
import math
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from landscape import distributed
from landscape.files import OutputPathError, check_output_dir, check_output_file, publish
from studies import arguments, data
from studies.errors import UserError, one_line
from studies.models import MODELS, check_options, make_model
from studies.runner import resolve_device
from studies.store import environment
from studies.train import load_checkpoint

#: Marks a sidecar as written by valley (a file at the sidecar's path without it is never replaced).
WRITER = "valley"
#: Estimated bytes per surface point (grid coordinates, loss and accuracy, the table and its CSV text, per column).
_BYTES_PER_POINT_AND_COLUMN = 64


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``surface`` and ``curvature`` subcommands to the ``valley`` parser."""
    epilog = (
        "The model: --checkpoint is a file written by studies.train (its 'model' entry) or a saved state dict, "
        "loaded with torch.load(weights_only=True) into make_model(--model, shape and classes of --dataset, "
        "**--model-kwargs). Under torchrun --nproc-per-node N the work is split over the N processes; rank 0 "
        "prints and writes --out and OUT.meta.json (arguments, configuration, versions, the CSV's SHA-256)."
    )

    def target(p: argparse.ArgumentParser, out: str) -> None:
        p.epilog = epilog
        p.add_argument("--checkpoint", type=Path, required=True, help="weights written by studies.train (.pt)")
        p.add_argument("--model", required=True, choices=MODELS, help="the architecture of the checkpoint")
        p.add_argument(
            "--model-kwargs",
            type=arguments.json_object,
            default={},
            help="make_model options, e.g. '{\"widths\": [32]}'",
        )
        p.add_argument("--dataset", required=True, choices=data.DATASETS, help="sizes the model; its data is used")
        p.add_argument("--data-dir", default=None, help="folder with MNIST/Fashion-MNIST/CIFAR-10 ($VALLEY_DATA)")
        p.add_argument("--split", choices=("train", "test"), default="train", help="data split (default train)")
        p.add_argument("--samples", type=int, default=None, help="use the first N examples of the split")
        p.add_argument("--batch-size", type=int, default=1000, help="examples per forward pass (memory bound)")
        p.add_argument("--seed", type=int, default=0, help="random directions / start vector and probes")
        p.add_argument("--device", type=arguments.device, default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
        p.add_argument("--out", type=Path, default=Path(out), help=f"CSV to write (default {out}), and OUT.meta.json")
        p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")

    surface = sub.add_parser(
        "surface",
        help="loss surface of a checkpoint: 1D slice or interpolation, 2D random plane",
        description="Columns: alpha, [beta,] loss, accuracy. --dims 2: filter-normalised random plane "
        "θ + α d1 + β d2 on [-span, span]²; --dims 1: along one such direction, or with --to PATH the interpolation "
        "(1 − α) θ + α θ_to on [-span, 1 + span].",
    )
    target(surface, "surface.csv")
    surface.add_argument("--dims", type=int, choices=(1, 2), default=2, help="1D or 2D (default 2)")
    surface.add_argument("--to", type=Path, default=None, help="1D: interpolate to this checkpoint's weights")
    surface.add_argument("--resolution", type=int, default=21, help="points per axis (default 21)")
    surface.add_argument("--span", type=float, default=None, help="half width (default 1; 0.5 beyond ends with --to)")
    surface.add_argument(
        "--bn-policy",
        choices=("saved", "recompute"),
        default="saved",
        help="BatchNorm: saved, or re-estimated per point",
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
    target(curvature, "curvature.csv")
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
    """Build ``make_model(model, input_shape, num_classes, **model_kwargs)`` and load a checkpoint's weights into it.

    Raises:
        FileNotFoundError: if ``checkpoint`` does not exist.
        UserError: (a ``ValueError``) if the file is not a readable checkpoint (not a regular file, empty, damaged,
            refused because it holds pickled objects other than tensors and plain containers, meta tensors) or the
            weights do not fit the model (naming the first missing, unexpected or mis-shaped key).
        ValueError: if ``model_kwargs`` are not options of ``model``.
    """
    path = Path(checkpoint)
    check_options(model, model_kwargs)
    return _fit(_read_state(path), path, model, model_kwargs, input_shape, num_classes)


def _fit(
    state: dict[str, Tensor],
    path: Path,
    model: str,
    model_kwargs: dict,
    input_shape: Sequence[int],
    num_classes: int,
) -> nn.Module:
    """The model ``make_model(model, ...)`` in eval mode holding ``state``, read from the checkpoint ``path``."""
    net = make_model(model, input_shape, num_classes, **model_kwargs)
    expected = net.state_dict()
    what = f"checkpoint {str(path)!r} does not fit {model} {json.dumps(model_kwargs)}"
    if missing := [k for k in expected if k not in state]:
        raise UserError(f"{what}: the model's {missing[0]!r} is missing ({len(missing)} keys missing)")
    if unexpected := [k for k in state if k not in expected]:
        raise UserError(f"{what}: the checkpoint's {unexpected[0]!r} is not in the model ({len(unexpected)} keys)")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            shapes = f"{tuple(state[key].shape)} in the checkpoint, {tuple(tensor.shape)} in the model"
            raise UserError(f"{what}: {key!r} has shape {shapes}")
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(f"{what}: {one_line(str(error))}") from None
    return net.eval()


def _read_state(path: Path) -> dict[str, Tensor]:
    """The state dict of tensors in the checkpoint at ``path`` (its ``"model"`` entry, or the whole file)."""
    name = f"checkpoint {str(path)!r}"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name} does not exist") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a special file (FIFO, socket or device)"
        raise UserError(f"{name} is {kind}, not a checkpoint file; nothing was read")
    if info.st_size == 0:
        raise UserError(f"{name} is empty")
    try:
        payload = load_checkpoint(path)
    except Exception as error:  # a damaged file makes torch.load raise RuntimeError, EOFError, KeyError, ...
        text = one_line(str(error))
        if found := re.search(r"GLOBAL (\S+)", text):  # torch's weights_only unpickler refused an object
            raise UserError(
                f"{name} was refused: it holds a pickled object other than tensors and plain containers "
                f"({found.group(1)}); valley loads only those (torch.load with weights_only=True) and never runs "
                "code from a checkpoint"
            ) from None
        with open(path, "rb") as file:
            start = file.read(4)
        if not start.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive, or a legacy pickle
            raise UserError(f"{name} is not a PyTorch checkpoint (it starts with {start!r})") from None
        reason = f"{type(error).__name__}: {text}"[:200]
        raise UserError(f"{name} is a damaged PyTorch checkpoint (truncated?): {reason}") from None
    state = payload.get("model", payload) if isinstance(payload, dict) else payload
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{name} holds no state dict of tensors (expected studies.train's format)")
    if meta := [k for k, v in state.items() if v.is_meta]:
        raise UserError(f"{name} holds meta tensors (shapes without values), e.g. {meta[0]!r}")
    return state


def _analysis_target(args: argparse.Namespace) -> tuple[nn.Module, tuple[Tensor, Tensor], str, data.Dataset]:
    """The checkpoint's model in eval mode on this rank's device, and the chosen data ``(x, y)`` there."""
    if args.samples is not None and args.samples < 1:
        raise UserError(f"Invalid --samples: {args.samples}")
    if args.batch_size < 1:
        raise UserError(f"Invalid --batch-size: {args.batch_size}")
    try:
        check_options(args.model, args.model_kwargs)
    except ValueError as error:
        raise UserError(f"--model-kwargs: {error}") from None
    device = distributed.local_device(resolve_device(args.device))
    state = _read_state(args.checkpoint)  # a damaged checkpoint is refused before the data is loaded
    if getattr(args, "to", None) is not None:
        _read_state(args.to)
    dataset = data.load_dataset(args.dataset, args.data_dir)
    model = _fit(state, args.checkpoint, args.model, args.model_kwargs, dataset.input_shape, dataset.num_classes)
    x, y = (dataset.x_train, dataset.y_train) if args.split == "train" else (dataset.x_test, dataset.y_test)
    x, y = x[: args.samples], y[: args.samples]
    return model.to(device), (x.to(device), y.to(device)), device, dataset


def sidecar(out: Path) -> Path:
    """The metadata file written beside ``out``: its full name plus ``.meta.json`` (never equal to ``out``).

    Example:
        >>> sidecar(Path("runs/s.json"))
        PosixPath('runs/s.json.meta.json')
    """
    return out.with_name(out.name + ".meta.json")


def _written_by_valley(path: Path) -> bool:
    """Whether ``path`` is a sidecar valley wrote (a JSON object marked by :data:`WRITER`, or of its older form)."""
    if not path.is_file():  # absent, or a folder, FIFO, ... that must not be opened
        return False
    try:
        with open(path, "rb") as file:
            meta = json.loads(file.read(1 << 24))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (
        meta.get("written_by") == WRITER or {"arguments", "config", "environment"} <= meta.keys()
    )


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an ``--out`` (or its sidecar) valley may not replace, and an unusable cache folder."""
    out, meta = check_output_file(args.out), check_output_file(sidecar(args.out))
    if meta.exists() and not _written_by_valley(meta):
        raise OutputPathError(f"{meta}: exists and valley did not write it; move it away or choose another --out")
    legacy = out.with_suffix(".json")  # where valley wrote the sidecar before it was named OUT.meta.json
    if out.exists() and not meta.exists() and not _written_by_valley(legacy):
        raise OutputPathError(f"{out}: exists and valley did not write it (no {meta.name} beside it); move it away")
    if hasattr(args, "cache_dir"):
        check_output_dir(_cache_dir(args))


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
    if not distributed.is_main():
        return
    skip = ("func", "kept")
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in skip}
    table = frame.to_csv(index=False)
    meta = {"written_by": WRITER, "output": args.out.name, "sha256": hashlib.sha256(table.encode()).hexdigest()}
    meta |= {"arguments": arguments, "config": config}
    meta["environment"] = environment(device) | {"world_size": distributed.world_size()}
    _check_outputs(args)
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
    from landscape.directions import random_direction
    from landscape.surfaces import interpolate_1d, make_grid, surface_1d, surface_2d

    if args.resolution < 1:
        raise UserError(f"Invalid --resolution: {args.resolution}")
    if args.chunk_size < 1:
        raise UserError(f"Invalid --chunk-size: {args.chunk_size}")
    if args.to is not None and args.dims != 1:
        raise UserError(f"--to interpolates in 1D; got --dims {args.dims}")
    span = args.span if args.span is not None else (0.5 if args.to is not None else 1.0)
    if not (span > 0 and math.isfinite(span)):
        raise UserError(f"Invalid --span: {span} (a finite positive half width)")
    _check_grid_fits(args.resolution, args.dims)
    _check_outputs(args)
    model, batch, device, dataset = _analysis_target(args)
    options = {
        "bn": args.bn_policy,
        "bn_data": (dataset.x_train[: args.batch_size].to(device), dataset.y_train[: args.batch_size].to(device)),
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "cache_dir": _cache_dir(args),
        "progress": args.progress and distributed.is_main(),
        "distributed": True,
    }
    if args.to is not None:
        end = load_model(args.to, args.model, args.model_kwargs, dataset.input_shape, dataset.num_classes)
        alphas = make_grid(-span, 1 + span, args.resolution)
        surface = interpolate_1d(model, model, end.to(device), batch, alphas, **options)
    elif args.dims == 1:
        grid = make_grid(-span, span, args.resolution)
        surface = surface_1d(model, batch, random_direction(model, seed=args.seed), grid, **options)
    else:
        grid = make_grid(-span, span, args.resolution)
        directions = [random_direction(model, seed=args.seed + i) for i in range(2)]
        surface = surface_2d(model, batch, directions, grid, grid, **options)
    _write(args, surface.frame(), surface.config, device)
    if distributed.is_main():
        print(
            f"surface: {surface.loss.size} points, loss at the origin {surface.at_origin():.6g}, "
            f"{surface.config['chunks_computed']} chunks computed and {surface.config['chunks_reused']} reused on "
            f"{distributed.world_size()} process(es); written to {args.out}"
        )
    return 0


def _cmd_curvature(args: argparse.Namespace) -> int:
    from landscape.curvature import HessianOperator, hutchinson_trace, lanczos_eigenpairs, slq_density

    for name in ("top_k", "trace_probes", "slq_probes", "slq_steps"):
        if getattr(args, name) < 1:
            raise UserError(f"Invalid --{name.replace('_', '-')}: {getattr(args, name)}")
    _check_outputs(args)
    model, batch, device, _ = _analysis_target(args)
    dtype = getattr(torch, args.dtype)
    _check_eigenvectors_fit(model, args.top_k, dtype)
    hessian = HessianOperator(model, F.cross_entropy, batch, dtype, args.batch_size, distributed=True)
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
    config = {"parameters": hessian.shape[0], "examples": len(batch[1]), "lanczos": eigen.config}
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
            f"curvature: {hessian.shape[0]} parameters, {len(batch[1])} examples on {distributed.world_size()} "
            f"process(es); top-{args.top_k} eigenvalues {top}; trace {trace.estimate:.6g} ± {trace.standard_error:.2g}"
            f"; written to {args.out}"
        )
    return 0
