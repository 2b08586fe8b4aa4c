"""Benchmark: GPU against CPU for surfaces, Hessian-vector products and one study's training (side by side).

Measured on each device, in one run:

(a) surface points per second of a 2D surface of an MLP 784-128-10 on 1000 samples (Gaussian inputs, random labels),
    valley's fast path (vmap + first-affine-layer trick) and the reference loop; the fast/loop ratio on each device
    says whether the fast path pays off there, and the largest |fast - loop| is shown;
(b) Hessian-vector products per second of that MLP's cross-entropy Hessian over the 1000 samples (``HessianOperator``,
    ``matmat`` with ``--columns`` vectors at a time), in float32 and float64;
(c) seconds per epoch of one study's training: the Adam run of ``kingma2015adam`` at its ``--full`` setting
    (MLP with two hidden layers of 1000 units, batch 128; on MNIST when its files are in ``--data-dir``, else on the
    embedded digits, as the study itself does), for ``--epochs`` epochs; the first epoch (warm-up) is left out of
    the mean.

Each timing is the best of ``--repeats`` runs (a and b). The CUDA column is measured only when
``torch.cuda.is_available()``; otherwise the script says so and prints the CPU column alone.

Run: .venv/bin/python benchmarks/bench_gpu.py [--points 21] [--columns 10] [--epochs 3] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from landscape.curvature import HessianOperator
from landscape.directions import random_direction
from landscape.surfaces import make_grid, surface_2d
from studies import kingma2015adam
from studies.runner import Context
from studies.store import RunStore


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> tuple[object, float]:
    """The last result and the best wall-clock time of ``repeats`` calls (CUDA synchronised around each)."""
    best, result = np.inf, None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return result, best


def mlp_problem(device: torch.device) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The MLP 784-128-10 and 1000 Gaussian samples with random labels, on ``device``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    data = (torch.randn(1000, 784).to(device), torch.randint(0, 10, (1000,)).to(device))
    return model, data


def bench_surface(device: torch.device, points: int, chunk_size: int, repeats: int) -> dict[str, float]:
    """(a) points per second of the fast path and the loop, and their largest absolute difference."""
    model, data = mlp_problem(device)
    directions = [random_direction(model, "filter", seed=s) for s in (1, 2)]
    grid = make_grid(-1.0, 1.0, points)
    out, surfaces = {}, {}
    for method in ("fast", "loop"):

        def run(method: str = method):
            return surface_2d(model, data, directions, grid, grid, method=method, chunk_size=chunk_size, progress=False)

        surfaces[method], seconds = best_time(run, repeats, device)
        out[f"surface {method} (points/s)"] = len(grid) ** 2 / seconds
    out["surface fast/loop"] = out["surface fast (points/s)"] / out["surface loop (points/s)"]
    out["surface max |fast - loop|"] = float(np.nanmax(np.abs(surfaces["fast"].loss - surfaces["loop"].loss)))
    return out


def bench_hvp(device: torch.device, columns: int, repeats: int) -> dict[str, float]:
    """(b) Hessian-vector products per second, float32 and float64."""
    model, data = mlp_problem(device)
    out = {}
    for dtype in (torch.float32, torch.float64):
        operator = HessianOperator(model, F.cross_entropy, data, dtype=dtype)
        vectors = torch.randn(operator.shape[0], columns, dtype=dtype, device=device)
        operator.matmat(vectors)  # warm-up (allocator, kernels)
        _, seconds = best_time(lambda operator=operator, vectors=vectors: operator.matmat(vectors), repeats, device)
        out[f"HVP {str(dtype).removeprefix('torch.')} (HVPs/s)"] = columns / seconds
    return out


def bench_epoch(device: torch.device, epochs: int, data_dir: str | None) -> tuple[dict[str, float], str]:
    """(c) seconds per epoch (mean over epochs 2..E) of kingma2015adam's Adam run at the full setting."""
    with tempfile.TemporaryDirectory() as root:
        ctx = Context(RunStore(root, "bench"), str(device), data_dir, progress=False)
        configs = kingma2015adam.grid("full", ctx)
        config = next(c for c in configs if c["optimizer"] == "Adam" and c["dropout"] == 0.0)
        config = {**config, "epochs": epochs}
        metrics = kingma2015adam.run(config, ctx)
    seconds = metrics.loc[metrics["quantity"] == "seconds"].sort_values("epoch")["value"].to_numpy()
    label = f"{config['dataset']}, MLP {config['widths']}, batch {config['batch_size']}, Adam"
    return {"train (s/epoch)": float(seconds[1:].mean() if len(seconds) > 1 else seconds.mean())}, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=21, help="surface grid points per axis (default 21)")
    parser.add_argument("--chunk-size", type=int, default=64, help="surface points per chunk")
    parser.add_argument("--columns", type=int, default=10, help="vectors per HessianOperator.matmat")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing of (a) and (b); best is shown")
    parser.add_argument("--data-dir", default=None, help="folder with MNIST (else the embedded digits are used)")
    parser.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        print(f"CUDA: {torch.cuda.get_device_name(0)}")
    else:
        print("CUDA is unavailable (torch.cuda.is_available() is False): only the CPU column is measured;")
        print("run this script on a machine with a GPU for the GPU/CPU ratios.")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s); surface {args.points}x{args.points}")

    columns: dict[str, dict[str, float]] = {}
    label = ""
    for device in devices:
        results = bench_surface(device, args.points, args.chunk_size, args.repeats)
        results |= bench_hvp(device, args.columns, args.repeats)
        epoch, label = bench_epoch(device, args.epochs, args.data_dir)
        columns[device.type] = results | epoch
    print(f"training: kingma2015adam --full Adam run ({label}), {args.epochs} epochs")
    print()
    header = f"{'measure':32s} {'CPU':>12s} {'CUDA':>12s} {'CUDA/CPU':>10s}"
    print(header)
    print("-" * len(header))
    for key, cpu in columns["cpu"].items():
        gpu = columns.get("cuda", {}).get(key)
        if gpu is None:
            ratio = "n/a"
        elif key == "train (s/epoch)":
            ratio = f"{cpu / gpu:.2f}x"  # time: speed-up is CPU time over GPU time
        elif key.startswith("surface max"):
            ratio = ""
        else:
            ratio = f"{gpu / cpu:.2f}x"
        gpu_text = "n/a" if gpu is None else f"{gpu:12.4g}"
        print(f"{key:32s} {cpu:12.4g} {gpu_text:>12s} {ratio:>10s}")
    if "cuda" in columns:
        speedup = columns["cuda"]["surface fast/loop"]
        print(f"\nvmap fast path on GPU: {speedup:.2f}x the loop ({'pays' if speedup > 1.0 else 'does not pay'})")


if __name__ == "__main__":
    main()
