"""Benchmark: a 51x51 loss surface of an MLP 784-128-10 on 1000 samples (random Gaussian inputs, random labels).

valley's fast path (vmap + first-affine-layer trick) against valley's reference loop, and the `loss_landscapes`
package's `random_plane` when it is installed. Each method runs ``--repeats`` times, interleaved; the table shows the
best wall-clock and CPU (process) time, so that other work on a shared machine disturbs the ratio as little as
possible. Values are compared point by point.

Run: .venv/bin/python benchmarks/bench_surface.py [--points 51] [--repeats 3] [--chunk-size 64] [--threads N]
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


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=51, help="grid points per axis")
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (best time is shown)")
    parser.add_argument("--chunk-size", type=int, default=64, help="grid points per chunk")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    data = (torch.randn(1000, 784), torch.randint(0, 10, (1000,)))
    directions = [random_direction(model, "filter", seed=1), random_direction(model, "filter", seed=2)]
    grid = make_grid(-1.0, 1.0, args.points)
    n = args.points**2
    print(
        f"MLP 784-128-10, 1000 samples, {args.points}x{args.points} grid ({n} points), filter-normalised directions,"
        f" torch {torch.__version__}, {torch.get_num_threads()} thread(s), best of {args.repeats}"
    )

    def run(method: str):
        return surface_2d(
            model, data, directions, grid, grid, method=method, chunk_size=args.chunk_size, progress=False
        )

    best: dict[str, list[float]] = {}
    surfaces = {}
    for _ in range(args.repeats):
        for method in ("fast", "loop"):
            surfaces[method], wall, cpu = timed(lambda method=method: run(method))
            previous = best.get(method, [np.inf, np.inf])
            best[method] = [min(previous[0], wall), min(previous[1], cpu)]
    fast, loop = surfaces["fast"], surfaces["loop"]
    rows = [(f"valley fast ({fast.config['evaluator']})", *best["fast"]), ("valley loop (reference)", *best["loop"])]

    if importlib.util.find_spec("loss_landscapes") is None:
        rows.append(("loss_landscapes.random_plane", None, None))
    else:
        import loss_landscapes
        import loss_landscapes.metrics

        metric = loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), data[0], data[1])
        _, wall, cpu = timed(
            lambda: loss_landscapes.random_plane(model, metric, distance=1, steps=args.points, normalization="filter")
        )
        rows.append(("loss_landscapes.random_plane", wall, cpu))

    loop_wall, loop_cpu = best["loop"]
    print()
    print(
        f"| {'method':<32} | {'wall s':>13} | {'CPU s':>7} | {'points/s':>8} |"
        f" {'vs loop (wall)':>14} | {'vs loop (CPU)':>13} |"
    )
    print(f"|{'-' * 34}|{'-' * 14}:|{'-' * 8}:|{'-' * 9}:|{'-' * 15}:|{'-' * 14}:|")
    for name, wall, cpu in rows:
        if wall is None:
            print(f"| {name:<32} | {'not installed':>13} | {'':>7} | {'':>8} | {'':>14} | {'':>13} |")
        else:
            print(
                f"| {name:<32} | {wall:13.2f} | {cpu:7.2f} | {n / wall:8.0f} | {loop_wall / wall:13.1f}x |"
                f" {loop_cpu / cpu:12.1f}x |"
            )
    print()
    print(f"max |loss fast - loss loop|         = {np.abs(fast.loss - loop.loss).max():.3e}")
    print(f"max |accuracy fast - accuracy loop| = {np.abs(fast.accuracy - loop.accuracy).max():.3e}")
    print(f"loss at the centre (fast, loop)     = {fast.at_origin():.7f}, {loop.at_origin():.7f}")


if __name__ == "__main__":
    main()
