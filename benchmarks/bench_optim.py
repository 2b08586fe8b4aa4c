"""Optimizer steps against the memory-bandwidth floor on CPU: valley's paths beside torch's Adam, and SAM's cost.

Part 1: one ``step()`` on the parameter tensors of ResNet-18 (shapes written out below, 11,689,512 parameters) with
fixed random gradients, for every valley optimizer on its per-tensor and its multi-tensor (``foreach``) path, and on
its compiled path (``compiled=True``) where it has one, beside ``torch.optim.Adam`` fused, foreach
and for-loop; the first step of each compiled path, which compiles, is timed apart. Each row reports ms per step and
the bytes that must move per step (parameter read + written, gradient read, every state slot read + written) as a
fraction of the memory bandwidth measured in the same run (a large copy and a large add; the faster one counts), and
its time per byte relative to torch's fused Adam. Targets: every valley optimizer within 2x of fused Adam's time per
byte and no slower per byte than torch's foreach Adam. AdamP and SGDP must also read θ and g of every tensor with at
least two dims once more, for the projection test, before any coordinate can be updated (the test is a reduction
over the tensor); a line under the table gives their ratio with those bytes counted too (the verdict columns do
not). With random gradients they project almost nothing; a last block times their multi-tensor and compiled paths
with gradients orthogonal to θ row by row (as a BatchNorm-followed layer's are), where they project every tensor
of two or more dims, for information (no target; learning rate 0 there, so that θ stays orthogonal to the fixed
gradients from step to step: the kernels are the same at any learning rate).

Part 2: SAM's overhead over its base step (momentum SGD): ``first_step()`` + ``second_step()`` minus the base
step alone, for valley's SAM on both paths and for ``pytorch_optimizer``'s SAM (a row skipped when that package
is absent; it is not a dependency). Target: valley's overhead at or below pytorch_optimizer's.

Part 3: a small CNN's full training step with and without XGrad around the same base.

Timing: wall time, 2 intra-op threads, every case once per round in rotating order, best of the rounds (machine
noise only ever adds time). Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE`` unless set):
on a machine shared with other processes a spinning thread makes two-thread runs stall several-fold.
On a GPU (``--device cuda``) parts 1 and 2 run there: tensors on the device, bandwidth measured on the device,
each timing ten calls of a case between two synchronisations (queued device work overlaps the host's Python, as in
training, so a case's time is the larger of the two; one call per synchronisation would add the wait each time).
torch's default rule then takes the multi-tensor path for ``foreach=None``, and the table shows valley's
per-tensor, multi-tensor and compiled paths beside torch's fused Adam (the compiled kernels are then Triton's).
Part 3 stays on CPU.

Run: ``python benchmarks/bench_optim.py [rounds] [parts] [--device cpu|cuda]``, e.g. ``5 12`` for parts 1 and 2
only (default: 15 rounds, all parts, CPU).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

import optim
from studies.arguments import count

try:
    import pytorch_optimizer
except ImportError:  # benchmark-only comparison
    pytorch_optimizer = None


def resnet18_shapes():
    shapes = [(64, 3, 7, 7), (64,), (64,)]  # conv1, bn1
    in_ch = 64
    for out_ch, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            first_in = in_ch if block == 0 else out_ch
            shapes += [(out_ch, first_in, 3, 3), (out_ch,), (out_ch,), (out_ch, out_ch, 3, 3), (out_ch,), (out_ch,)]
            if block == 0 and (stride != 1 or in_ch != out_ch):
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]  # downsample conv + bn
        in_ch = out_ch
    shapes += [(1000, 512), (1000,)]  # fc
    return shapes


# name -> (factory taking the path's switch, state slots besides the parameter and the gradient)
STEP_CASES: dict[str, tuple[Callable, int]] = {
    "torch Adam fused": (lambda ps, **path: torch.optim.Adam(ps, lr=1e-3, fused=True), 2),
    "torch Adam foreach": (lambda ps, **path: torch.optim.Adam(ps, lr=1e-3, foreach=True), 2),
    "torch Adam for-loop": (lambda ps, **path: torch.optim.Adam(ps, lr=1e-3, foreach=False), 2),
    "RAdam": (lambda ps, **path: optim.RAdam(ps, lr=1e-3, **path), 2),
    "Adam2k": (lambda ps, **path: optim.Adam2k(ps, lr=1e-3, freeze_steps=0, **path), 2),
    "AdamP": (lambda ps, **path: optim.AdamP(ps, lr=1e-3, weight_decay=1e-2, **path), 2),
    "SGDP": (lambda ps, **path: optim.SGDP(ps, lr=0.1, momentum=0.9, weight_decay=1e-4, **path), 1),
    "AdaBelief": (lambda ps, **path: optim.AdaBelief(ps, lr=1e-3, weight_decay=1e-2, **path), 2),
    "AdaM3": (lambda ps, **path: optim.AdaM3(ps, lr=1e-3, **path), 2),
    "Expectigrad": (lambda ps, **path: optim.Expectigrad(ps, lr=1e-3, **path), 3),
}


DEVICE = torch.device("cpu")  # set from --device in main()
CALLS = 1  # calls of a case per timing: 10 on a GPU (main())


def paths(name: str) -> list[tuple[str, dict[str, bool]]]:
    """The paths a case is timed on, as (label, switch).

    torch's Adam as it is; valley's per-tensor, multi-tensor and, where the optimizer has one, compiled.
    """
    if name.startswith("torch"):
        return [("", {})]
    found = [("per-tensor", {"foreach": False}), ("foreach", {"foreach": True})]
    if "compiled" in getattr(optim, name).HYPERPARAMETERS:
        found.append(("compiled", {"compiled": True}))
    return found


def parameters(values, grads):
    params = [nn.Parameter(v.to(DEVICE, copy=True)) for v in values]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.to(DEVICE, copy=True)
    return params


def synchronize() -> None:
    """Wait for the device's queued work (a GPU runs asynchronously; on CPU nothing to wait for)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def best_of(cases: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Wall and CPU seconds (all threads) of one call of each case, each the best of ``rounds`` rounds.

    Every round runs every case once, in rotating order. CPU time does not count the time a case waits while
    other processes hold the cores (idle threads sleep), so it is the steadier of the two on a shared machine.
    """
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            synchronize()
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(CALLS):
                cases[name]()
            synchronize()
            cpu[name].append((time.process_time() - start_cpu) / CALLS)
            wall[name].append((time.perf_counter() - start) / CALLS)
    return {n: min(v) for n, v in wall.items()}, {n: min(v) for n, v in cpu.items()}


def bandwidth_cases(numel: int) -> tuple[dict[str, Callable[[], object]], dict[str, int]]:
    """A copy and an add over ``numel`` float32 values each, and the bytes each moves."""
    a, b, c = torch.rand(numel, device=DEVICE), torch.rand(numel, device=DEVICE), torch.empty(numel, device=DEVICE)
    cases = {"copy": lambda: c.copy_(a), "add": lambda: torch.add(a, b, out=c)}
    return cases, {"copy": 2 * 4 * numel, "add": 3 * 4 * numel}


def row_orthogonal(values: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """``grads`` with each row of a tensor of two or more dims made orthogonal to that row of θ.

    A convolution followed by BatchNorm has such gradients (its loss does not change when a row of θ is scaled), and
    AdamP and SGDP then project every such tensor: their other path.
    """
    found = []
    for value, grad in zip(values, grads, strict=True):
        if value.dim() >= 2:
            rows, grad_rows = value.reshape(len(value), -1), grad.reshape(len(value), -1)
            grad = grad_rows - (grad_rows * rows).sum(1, keepdim=True) / rows.square().sum(1, keepdim=True) * rows
            grad = grad.view(value.shape)
        found.append(grad)
    return found


def bench_steps(rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = resnet18_shapes()
    values = [torch.randn(s, generator=gen) * 0.05 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    numel = sum(v.numel() for v in values)
    print(f"ResNet-18 parameter list: {len(shapes)} tensors, {numel:,} parameters (float32) on {DEVICE}")
    cases, moved, first_steps = {}, {}, {}
    projected: dict[str, str] = {}  # label -> its case with row-orthogonal gradients: how many tensors it projects
    for name, (factory, slots) in STEP_CASES.items():
        for path, switch in paths(name):
            label = f"{name} {path}".strip()
            opt = factory(parameters(values, grads), **switch)
            start = time.perf_counter()
            opt.step()
            first_steps[label] = time.perf_counter() - start
            opt.step()  # state allocated, first-step branches passed (and compiled)
            cases[label] = opt.step
            moved[label] = (3 + 2 * slots) * 4 * numel
            if name in ("AdamP", "SGDP") and path != "per-tensor":
                opt = factory(parameters(values, row_orthogonal(values, grads)), **switch)
                opt.param_groups[0]["lr"] = 0.0  # θ stays put, so the gradients stay orthogonal to it (same kernels)
                opt.step()
                opt.step()
                count = sum(state["projection"] != "none" for state in opt.state.values())
                cases[f"{label}, projected"], moved[f"{label}, projected"] = opt.step, moved[label]
                projected[label] = f"{count} of {len(shapes)} tensors projected"
    compiled = {label: t for label, t in first_steps.items() if label.endswith("compiled")}
    print("first step of each compiled path (compiles): " + ", ".join(f"{k} {t:.1f} s" for k, t in compiled.items()))
    bw_cases, bw_bytes = bandwidth_cases(numel)  # 47 MB per array, beyond the caches
    times, cpu = best_of({**bw_cases, **cases}, rounds)
    bandwidth = max(bw_bytes[k] / times[k] for k in bw_cases)
    print(
        f"memory bandwidth (wall): copy {bw_bytes['copy'] / times['copy'] / 1e9:.1f} GB/s, "
        f"add {bw_bytes['add'] / times['add'] / 1e9:.1f} GB/s"
    )
    fused, fused_cpu = (t["torch Adam fused"] / moved["torch Adam fused"] for t in (times, cpu))
    foreach_adam, foreach_adam_cpu = (t["torch Adam foreach"] / moved["torch Adam foreach"] for t in (times, cpu))
    print(
        f"\n{'optimizer':24s} {'wall ms':>8s} {'CPU ms':>7s} {'MB':>5s} {'of bw':>6s} "
        f"{'t/B:fused wall':>14s} {'CPU':>5s}  targets per byte (wall | CPU)"
    )
    for label in [label for label in cases if not label.endswith(", projected")]:
        per_byte, per_byte_cpu = times[label] / moved[label], cpu[label] / moved[label]
        verdict = ""
        if not label.startswith("torch"):
            checks = (
                per_byte <= 2 * fused,
                per_byte_cpu <= 2 * fused_cpu,
                per_byte <= foreach_adam,
                per_byte_cpu <= foreach_adam_cpu,
            )
            marks = ["ok" if ok else "MISS" for ok in checks]
            verdict = f"2x fused {marks[0]} | {marks[1]}; foreach Adam {marks[2]} | {marks[3]}"
        print(
            f"{label:24s} {times[label] * 1e3:8.2f} {cpu[label] * 1e3:7.2f} {moved[label] / 1e6:5.0f} "
            f"{moved[label] / times[label] / bandwidth:6.0%} {per_byte / fused:14.2f} {per_byte_cpu / fused_cpu:5.2f}  "
            f"{verdict}"
        )
    tested = 2 * 4 * sum(v.numel() for v in values if v.dim() >= 2)
    for label in [f"{n} {p}" for n in ("AdamP", "SGDP") for p, _ in paths(n) if p != "per-tensor"]:
        ratio = times[label] / (moved[label] + tested) / fused
        print(
            f"{label}: counting the projection test's read of θ and g ({tested / 1e6:.0f} MB, needed in full before "
            f"any coordinate can be updated), t/B:fused = {ratio:.2f}"
        )
    print("\nthe same with each row of a tensor of 2+ dims orthogonal to θ (BatchNorm-followed layers; not a target):")
    for label, count in projected.items():
        case = f"{label}, projected"
        print(
            f"{case:30s} {times[case] * 1e3:8.2f} ms ({count}), t/B:fused wall {times[case] / moved[case] / fused:.2f},"
            f" CPU {cpu[case] / moved[case] / fused_cpu:.2f}"
        )


def bench_sam(rounds: int) -> None:
    gen = torch.Generator().manual_seed(1)
    values = [torch.randn(s, generator=gen) * 0.05 for s in resnet18_shapes()]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in resnet18_shapes()]

    def sgd(params, foreach=None):
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, foreach=foreach)

    def two_steps(opt, **kwargs):
        def run():
            opt.first_step(**kwargs)
            opt.second_step(**kwargs)

        return run

    cases = {}
    for foreach in (False, True):
        base = sgd(parameters(values, grads), foreach)
        cases[f"base momentum SGD {'foreach' if foreach else 'for-loop'}"] = base.step
        cases[f"valley SAM {'foreach' if foreach else 'per-tensor'}"] = two_steps(
            optim.SAM(sgd(parameters(values, grads), foreach), rho=0.05, foreach=foreach)
        )
        if pytorch_optimizer is not None:
            their = pytorch_optimizer.SAM(
                parameters(values, grads), torch.optim.SGD, rho=0.05, lr=0.01, momentum=0.9, foreach=foreach
            )
            cases[f"pytorch_optimizer SAM {'foreach' if foreach else 'for-loop'}"] = two_steps(their, zero_grad=False)
    for run in cases.values():
        run()
    times, cpu = best_of(cases, rounds)
    print("\nSAM on the ResNet-18 parameter list (around momentum SGD); overhead = SAM's two half steps - base step")
    print(f"{'case':32s} {'wall ms':>8s} {'CPU ms':>7s} {'overhead wall':>13s} {'CPU':>7s}  target (wall | CPU)")
    for label in times:
        kind = "foreach" if "foreach" in label else "for-loop"
        base = f"base momentum SGD {kind}"
        overhead, overhead_cpu = times[label] - times[base], cpu[label] - cpu[base]
        verdict = ""
        if label.startswith("valley") and pytorch_optimizer is not None:
            theirs = f"pytorch_optimizer SAM {kind}"
            wall_ok = overhead <= times[theirs] - times[base]
            cpu_ok = overhead_cpu <= cpu[theirs] - cpu[base]
            verdict = f"<= pytorch_optimizer: {'ok' if wall_ok else 'MISS'} | {'ok' if cpu_ok else 'MISS'}"
        shown = "" if label.startswith("base") else f"{overhead * 1e3:13.2f} {overhead_cpu * 1e3:7.2f}"
        print(f"{label:32s} {times[label] * 1e3:8.2f} {cpu[label] * 1e3:7.2f} {shown:>21s}  {verdict}")
    if pytorch_optimizer is None:
        print("(pytorch_optimizer not installed: its rows are skipped)")


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x):
        return self.head(self.features(x))


XGRAD_BASES = {
    "SGD momentum": lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "AdaBelief": lambda ps: optim.AdaBelief(ps, lr=1e-3),
}


def bench_xgrad(steps=20, rounds=5):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    print(f"\nSmall CNN training step (batch 64, 3x32x32, {sum(p.numel() for p in SmallCNN().parameters()):,} params)")
    print(f"{'base':14s} {'base ms':>9s} {'XGrad ms':>9s} {'overhead':>9s} {'target':>8s}")
    for name, factory in XGRAD_BASES.items():
        runs = {}
        for wrapped in (False, True):
            torch.manual_seed(0)
            model = SmallCNN()
            opt = factory(model.parameters())
            if wrapped:
                opt = optim.XGrad(opt, steps=1)

            def closure(model=model, opt=opt):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            for _ in range(3):
                opt.step(closure)
            runs[wrapped] = (opt, closure)
        samples = {False: [], True: []}
        for _ in range(rounds):  # interleave the two so that machine noise hits both alike
            for wrapped, (opt, closure) in runs.items():
                start = time.process_time()
                for _ in range(steps):
                    opt.step(closure)
                samples[wrapped].append((time.process_time() - start) / steps)
        base, xgrad = statistics.median(samples[False]), statistics.median(samples[True])
        overhead = xgrad / base - 1
        print(
            f"{name:14s} {base * 1e3:9.2f} {xgrad * 1e3:9.2f} {overhead * 100:8.1f}% "
            f"{'<=12% ' + ('ok' if overhead <= 0.12 else 'MISS'):>8s}"
        )


def _device(text: str) -> torch.device:
    if text != "cpu" and not (text == "cuda" or text.startswith("cuda:") and text[5:].isdigit()):
        raise argparse.ArgumentTypeError(f"device must be cpu, cuda or cuda:N (got {text!r})")
    return torch.device(text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Optimizer steps against the memory-bandwidth floor.")
    parser.add_argument("rounds", nargs="?", type=count, default=15, help="rounds; each case's best is shown")
    parser.add_argument("parts", nargs="?", default="123", help="digits among 1, 2, 3 (default all)")
    parser.add_argument("--device", type=_device, default="cpu", help="device of parts 1 and 2 (cpu, cuda, cuda:N)")
    args = parser.parse_args()
    rounds, parts = args.rounds, args.parts
    if not parts or set(parts) - set("123"):
        sys.exit(f"bench_optim: parts must be digits among 1, 2, 3 (got {parts!r})")
    DEVICE = args.device
    if DEVICE.type == "cuda" and not (torch.cuda.is_available() and (DEVICE.index or 0) < torch.cuda.device_count()):
        sys.exit(f"bench_optim: --device {DEVICE} asked, but torch sees no such CUDA device")
    if DEVICE.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(DEVICE)}; each timing: 10 calls between synchronisations")
        CALLS = 10
    torch.set_num_threads(2)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, wall time, best of {rounds} rounds")
    print(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average at start: {load}")
    if "1" in parts:
        bench_steps(rounds)
    if "2" in parts:
        bench_sam(rounds)
    print(f"load average at the end of parts 1-2: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if "3" in parts:
        torch.set_num_threads(1)  # XGrad's overhead: single-thread CPU time, robust to other processes
        bench_xgrad()
