"""Benchmark: 2D loss surfaces, measured side by side in one run, as ratios against an anchor and against a floor.

(s1) MLP 784-128-10 on 1000 samples (Gaussian inputs, random labels), ``--points`` x ``--points`` grid: valley's fast
     path, valley's reference loop, and ``loss_landscapes.random_plane`` when it is installed; and the fast path against
     its floor, the larger of a compute floor (FLOPs needed / measured peak matmul rate) and a memory floor (bytes that
     must move / measured copy bandwidth). Needed per point with the first-layer trick: the combination of the three
     first-layer products (2 * 3 * N * 128 FLOPs, N x 128 floats written and read) and the second layer
     (2 * N * 128 * 10 FLOPs); once per surface, the three first-layer products (3 * 2 * N * 784 * 128 FLOPs).
(s2) small CNN (conv 1->8, conv 8->16, max-pool, linear) on ``--cnn-samples`` 1x28x28 inputs, ``--cnn-points`` squared
     grid: the fast path (which evaluates its first points by vmap and the next by a channels-last loop, timing
     both, and keeps the faster; the choice is printed), the reference loop and ``loss_landscapes.random_plane``;
     compute floor from the FLOPs of one forward pass (``torch.utils.flop_counter``) per point.
(s3) peak memory of a ``--big-points`` squared MLP surface (fast path), in a fresh process: the peak resident set of
     that process (Linux's ``VmHWM``; ``ru_maxrss`` would also count the benchmark's own memory at the fork), its
     growth during the call, and the peak of Python allocations (``tracemalloc``).
(s4) the studies' ResNet (``studies.models.make_model("resnet", ...)``; by default ResNet-20: ``--resnet-blocks 3``
     basic blocks per stage, widths 16, 32, 64, BatchNorm, as the weight-norm study runs it on CIFAR-10) on
     ``--resnet-samples`` 3x32x32 inputs, ``--resnet-points`` squared grid, in eval mode with BatchNorm running
     statistics set by a few forward passes in train mode: the fast path (the way it chose is printed, with its
     calibration), the reference loop and ``loss_landscapes.random_plane``, as ratios, with max |loss fast - loss
     loop|; compute floor from the FLOPs of one forward pass per point. Target: the fast path is never slower than
     the loop. loss-landscapes runs with ``normalization="layer"`` here: its filter normalisation divides by zero on
     the zero-initialised BatchNorm biases (the cost of a point does not depend on the normalisation).

Each timed method runs ``--repeats`` times, interleaved, and the best wall-clock time is shown, so that other work on a
shared machine disturbs the ratios as little as possible; the load average is printed. The peak matmul rate and the
copy bandwidth behind the floors are measured before each part and after each of its rounds, and the best kept: the
floors then come from the same window as the times (a virtual machine's speed drifts by up to 2x within minutes).
loss-landscapes is an optional, benchmark-only install (``pip install --no-deps loss-landscapes``); its rows say
"not installed" without it.

Run: .venv/bin/python benchmarks/bench_surface.py [--points 51] [--cnn-points 11] [--big-points 401] [--resnet-points 5]
     [--repeats 3] [--threads N] [--parts s1 s2 s3 s4]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from landscape.directions import random_direction
from landscape.surfaces import make_grid, surface_2d
from studies.arguments import count, count_or_zero
from studies.models import make_model


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


class Machine:
    """The machine's peak float32 matmul rate (FLOP/s) and copy bandwidth (bytes read + written per second).

    Each :meth:`measure` times five 1024^3 products and five copies of 64 MiB and keeps the best rates seen so far.
    The surfaces' repeats call it between their timings, so that the floors come from the same window as the times
    they are compared with (a virtual machine's speed can drift by 2x within minutes).
    """

    def __init__(self) -> None:
        self.rate = self.bytes_per_s = 0.0
        self.measure()

    def measure(self) -> None:
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        self.rate = max(self.rate, 2 * 1024**3 / min(timed(lambda: a @ b)[1] for _ in range(5)))
        src, dst = torch.randn(16 * 2**20), torch.empty(16 * 2**20)
        self.bytes_per_s = max(
            self.bytes_per_s, 2 * src.nbytes / min(timed(lambda: dst.copy_(src))[1] for _ in range(5))
        )

    def __str__(self) -> str:
        return f"peak matmul {self.rate / 1e9:.1f} GFLOP/s, copy bandwidth {self.bytes_per_s / 1e9:.1f} GB/s"


def compare(model, data, points, repeats, chunk_size, machine, anchor_normalization="filter"):
    """Best wall/CPU seconds of the fast path, the loop and loss_landscapes.random_plane; the two valley surfaces.

    The machine's rates are measured again after each round of the three (best kept).
    """
    directions = [random_direction(model, "filter", seed=1), random_direction(model, "filter", seed=2)]
    grid = make_grid(-1.0, 1.0, points)

    def run(method: str):
        return surface_2d(model, data, directions, grid, grid, method=method, chunk_size=chunk_size, progress=False)

    anchor = None
    if importlib.util.find_spec("loss_landscapes") is not None:
        import loss_landscapes
        import loss_landscapes.metrics

        metric = loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), data[0], data[1])

        def anchor():
            return loss_landscapes.random_plane(
                model, metric, distance=1, steps=points, normalization=anchor_normalization, deepcopy_model=True
            )

    best: dict[str, list[float]] = {}
    surfaces = {}
    for _ in range(repeats):
        for method in ("fast", "loop", "loss_landscapes"):
            if method == "loss_landscapes":
                if anchor is None:
                    continue
                _, wall, cpu = timed(anchor)
            else:
                surfaces[method], wall, cpu = timed(lambda method=method: run(method))
            previous = best.get(method, [np.inf, np.inf])
            best[method] = [min(previous[0], wall), min(previous[1], cpu)]
        machine.measure()
    return best, surfaces


def print_table(best, surfaces, n, floors, machine):
    """Wall and CPU (process) seconds and the ratios on both; on a loaded machine the CPU ratios are the steadier."""
    fast, loop = surfaces["fast"], surfaces["loop"]
    rows = [(f"valley fast ({fast.config['evaluator']})", *best["fast"]), ("valley loop (reference)", *best["loop"])]
    rows.append(("loss_landscapes.random_plane", *best.get("loss_landscapes", [None, None])))
    anchor = best.get("loss_landscapes")
    print(
        "| method | wall s | CPU s | points/s (wall) | loop / this (wall, CPU) | loss_landscapes / this (wall, CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, wall, cpu in rows:
        if wall is None:
            print(f"| {name} | not installed | | | | |")
            continue
        versus = f"{anchor[0] / wall:.2f}x, {anchor[1] / cpu:.2f}x" if anchor is not None else "not installed"
        print(
            f"| {name} | {wall:.2f} | {cpu:.2f} | {n / wall:.0f} | {best['loop'][0] / wall:.2f}x,"
            f" {best['loop'][1] / cpu:.2f}x | {versus} |"
        )
    if fast.config.get("evaluator_calibration"):
        timing = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in fast.config["evaluator_calibration"].items())
        print(f"fast path calibration (CPU seconds per point, each way on its first points): {timing}")
    compute, memory = floors
    floor = max(compute, memory)
    print(
        f"floor ({machine}, best of this part's window): compute {compute:.3f} s, memory {memory:.3f} s;"
        f" fast / floor = {best['fast'][0] / floor:.2f} (wall), {best['fast'][1] / floor:.2f} (CPU)"
    )
    print(
        f"max |loss fast - loss loop| = {np.abs(fast.loss - loop.loss).max():.3e}, "
        f"max |accuracy fast - accuracy loop| = {np.abs(fast.accuracy - loop.accuracy).max():.3e}"
    )


def bench_mlp(points, repeats, chunk_size, machine):
    n = points**2
    print(f"\n(s1) MLP 784-128-10, 1000 samples, {points}x{points} grid ({n} points), best of {repeats}")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    data = (torch.randn(1000, 784), torch.randint(0, 10, (1000,)))
    best, surfaces = compare(model, data, points, repeats, chunk_size, machine)
    flops = n * (2 * 3 * 1000 * 128 + 2 * 1000 * 128 * 10) + 3 * 2 * 1000 * 784 * 128
    moved = n * 2 * 1000 * 128 * 4
    print_table(best, surfaces, n, (flops / machine.rate, moved / machine.bytes_per_s), machine)
    print("targets: fast within 4x of its floor")


def bench_cnn(points, samples, repeats, chunk_size, machine):
    n = points**2
    print(
        f"\n(s2) CNN conv(1->8)-conv(8->16)-maxpool-linear, {samples} samples 1x28x28, {points}x{points} grid,"
        f" best of {repeats}"
    )
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 12 * 12, 10),
    )
    data = (torch.randn(samples, 1, 28, 28), torch.randint(0, 10, (samples,)))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(data[0])
    best, surfaces = compare(model, data, points, repeats, chunk_size, machine)
    print_table(best, surfaces, n, (n * counter.get_total_flops() / machine.rate, 0.0), machine)
    print("targets: fast >= 2x faster than loss_landscapes.random_plane; fast never slower than the loop")


def bench_resnet(points, samples, blocks, repeats, chunk_size, machine):
    n = points**2
    print(
        f"\n(s4) studies' ResNet ({blocks} blocks per stage, widths 16-32-64, BatchNorm), {samples} samples 3x32x32,"
        f" {points}x{points} grid, best of {repeats}"
    )
    torch.manual_seed(0)
    model = make_model("resnet", (3, 32, 32), 10, blocks=blocks, widths=(16, 32, 64))
    data = (torch.randn(samples, 3, 32, 32), torch.randint(0, 10, (samples,)))
    model.train()
    with torch.no_grad():  # BatchNorm running statistics other than their initial values
        for _ in range(3):
            model(torch.randn(64, 3, 32, 32))
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(data[0])
    best, surfaces = compare(model, data, points, repeats, chunk_size, machine, anchor_normalization="layer")
    print_table(best, surfaces, n, (n * counter.get_total_flops() / machine.rate, 0.0), machine)
    print("target: fast never slower than the loop")


BIG = textwrap.dedent(
    """
    import os, resource, sys, tracemalloc
    import torch
    from torch import nn
    from landscape.directions import random_direction
    from landscape.surfaces import make_grid, surface_2d

    def resident():
        # (current, peak) resident set in MB of this process alone. Linux's VmHWM starts afresh at exec, while
        # ru_maxrss keeps the parent's resident set at the fork: a benchmark process of 600 MB made every child's
        # peak read 600 MB. Elsewhere ru_maxrss (bytes on macOS) serves for both.
        if os.path.exists("/proc/self/status"):
            fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
            return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
        return peak, peak

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    data = (torch.randn(1000, 784), torch.randint(0, 10, (1000,)))
    dirs = [random_direction(model, "filter", seed=1), random_direction(model, "filter", seed=2)]
    grid = make_grid(-1.0, 1.0, int(sys.argv[1]))
    surface_2d(model, data, dirs, grid[:3], grid[:3], progress=False)  # warm up libraries before the baseline
    before = resident()[0]
    tracemalloc.start()
    surface = surface_2d(model, data, dirs, grid, grid, progress=False)
    python_peak = tracemalloc.get_traced_memory()[1]
    peak = resident()[1]
    print(before, peak, peak - before, python_peak / 2**20, surface.config["evaluator"])
    """
)


def bench_big(points):
    print(f"\n(s3) peak memory of a {points}x{points} MLP surface ({points**2} points, fast path, fresh process)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", BIG, str(points)], capture_output=True, text=True, env=env, check=True)
    before, peak, growth, python_peak, evaluator = out.stdout.split()
    print(
        f"resident set: {float(before):.0f} MB before (torch loaded, warmed up), {float(peak):.0f} MB peak of the"
        f" process, growth {float(growth):.0f} MB; Python allocations peak {float(python_peak):.1f} MB;"
        f" {evaluator}; {time.perf_counter() - start:.0f} s"
    )
    print(f"target: peak under 500 MB: {'ok' if float(peak) < 500 else 'MISS'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=count, default=51, help="MLP grid points per axis")
    parser.add_argument("--cnn-points", type=count, default=11, help="CNN grid points per axis")
    parser.add_argument("--cnn-samples", type=count, default=1000, help="CNN evaluation examples")
    parser.add_argument("--big-points", type=count_or_zero, default=401, help="points per axis of (s3); 0 skips it")
    parser.add_argument("--resnet-points", type=count, default=5, help="ResNet grid points per axis")
    parser.add_argument("--resnet-samples", type=count, default=128, help="ResNet evaluation examples")
    parser.add_argument("--resnet-blocks", type=count, default=3, help="ResNet basic blocks per stage (3: ResNet-20)")
    parser.add_argument("--repeats", type=count, default=3, help="runs per method (best time is shown)")
    parser.add_argument("--chunk-size", type=count, default=64, help="grid points per chunk")
    parser.add_argument("--threads", type=count, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--parts", nargs="+", choices=("s1", "s2", "s3", "s4"), default=["s1", "s2", "s3", "s4"])
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()};"
        f" measured at the start: {Machine()}"
    )
    if "s1" in args.parts:
        bench_mlp(args.points, args.repeats, args.chunk_size, Machine())
    if "s2" in args.parts:
        bench_cnn(args.cnn_points, args.cnn_samples, args.repeats, args.chunk_size, Machine())
    if "s3" in args.parts and args.big_points > 0:
        bench_big(args.big_points)
    if "s4" in args.parts:
        bench_resnet(
            args.resnet_points, args.resnet_samples, args.resnet_blocks, args.repeats, args.chunk_size, Machine()
        )


if __name__ == "__main__":
    main()
