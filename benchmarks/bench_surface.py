"""Benchmark: a 51x51 loss surface of an MLP 784-128-10 on 1000 samples.

valley's fast path (vmap + first-affine-layer trick) against valley's reference loop, and the `loss_landscapes`
package's `random_plane` when it is installed. Prints one table; values are compared point by point.

Run: .venv/bin/python benchmarks/bench_surface.py [--points 51] [--chunk-size 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np
import torch
from torch import nn

from landscape.directions import random_direction
from landscape.surfaces import make_grid, surface_2d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=51, help="grid points per axis")
    parser.add_argument("--chunk-size", type=int, default=64, help="grid points per chunk of the fast path")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    data = (torch.randn(1000, 784), torch.randint(0, 10, (1000,)))
    directions = [random_direction(model, "filter", seed=1), random_direction(model, "filter", seed=2)]
    grid = make_grid(-1.0, 1.0, args.points)
    print(
        f"MLP 784-128-10, 1000 samples, {args.points}x{args.points} grid, filter-normalised directions, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    rows = []
    results = {}
    for method in ("fast", "loop"):
        start = time.perf_counter()
        s = surface_2d(model, data, directions, grid, grid, method=method, chunk_size=args.chunk_size, progress=False)
        seconds = time.perf_counter() - start
        results[method] = s
        rows.append((f"valley {method} ({s.config['evaluator']})", seconds))

    if importlib.util.find_spec("loss_landscapes") is None:
        rows.append(("loss_landscapes.random_plane", None))
    else:
        import loss_landscapes
        import loss_landscapes.metrics

        metric = loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), data[0], data[1])
        start = time.perf_counter()
        loss_landscapes.random_plane(model, metric, distance=1.0, steps=args.points, normalization="filter")
        rows.append(("loss_landscapes.random_plane", time.perf_counter() - start))

    loop_seconds = rows[1][1]
    fast, loop = results["fast"], results["loop"]
    print()
    print(f"| {'method':<34} | {'seconds':>8} | {'points/s':>9} | {'speed-up vs loop':>16} |")
    print(f"| {'-' * 34} | {'-' * 8}: | {'-' * 9}: | {'-' * 16}: |")
    n = args.points**2
    for name, seconds in rows:
        if seconds is None:
            print(f"| {name:<34} | {'not installed':>8} | {'':>9} | {'':>16} |")
        else:
            print(f"| {name:<34} | {seconds:8.2f} | {n / seconds:9.1f} | {loop_seconds / seconds:15.1f}x |")
    print()
    print(f"max |loss fast - loss loop|         = {np.abs(fast.loss - loop.loss).max():.3e}")
    print(f"max |accuracy fast - accuracy loop| = {np.abs(fast.accuracy - loop.accuracy).max():.3e}")
    print(f"loss at the centre (fast, loop)     = {fast.at_origin():.7f}, {loop.at_origin():.7f}")


if __name__ == "__main__":
    main()
