"""Step time of every optimizer relative to torch.optim.Adam(foreach=True), and XGrad's overhead, on CPU.

Part 1: one ``step()`` on the parameter tensors of ResNet-18 (shapes written out below, 11,689,512 parameters)
with fixed random gradients. Part 2: a small CNN's full training step (forward + backward + step) with and
without XGrad around the same base. Run: ``python benchmarks/bench_optim.py`` (about two minutes on 2 cores).
"""

import statistics
import time

import torch
from torch import nn

import optim


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


STEP_CASES = {
    "torch Adam foreach (reference)": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    "torch Adam for-loop": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False),
    "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=True),
    "torch RAdam foreach": lambda ps: torch.optim.RAdam(ps, lr=1e-3, foreach=True),
    "torch SGD momentum foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=True),
    "optim.RAdam": lambda ps: optim.RAdam(ps, lr=1e-3),
    "optim.Adam2k": lambda ps: optim.Adam2k(ps, lr=1e-3, freeze_steps=0),
    "optim.AdamP": lambda ps: optim.AdamP(ps, lr=1e-3, weight_decay=1e-2),
    "optim.SGDP": lambda ps: optim.SGDP(ps, lr=0.1, momentum=0.9, weight_decay=1e-4),
    "optim.Expectigrad": lambda ps: optim.Expectigrad(ps, lr=1e-3),
    "optim.AdaBelief": lambda ps: optim.AdaBelief(ps, lr=1e-3, weight_decay=1e-2),
    "optim.AdaM3": lambda ps: optim.AdaM3(ps, lr=1e-3),
}
TARGETS = {"optim.AdamP": 1.5, "optim.AdaBelief": 1.5, "optim.AdaM3": 1.5, "optim.Expectigrad": 1.5}


def bench_steps(rounds=9, warmup=2):
    """Time one step of every optimizer, round-robin (rotating order) so that machine noise hits all alike."""
    gen = torch.Generator().manual_seed(0)
    shapes = resnet18_shapes()
    values = [torch.randn(s, generator=gen) * 0.05 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]  # shared: no optimizer here writes to .grad
    print(f"ResNet-18 parameter list: {len(shapes)} tensors, {sum(v.numel() for v in values):,} parameters")
    optimizers = {}
    for name, factory in STEP_CASES.items():
        params = [nn.Parameter(v.clone()) for v in values]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizers[name] = factory(params)
        for _ in range(warmup):
            optimizers[name].step()
    samples = {name: [] for name in optimizers}
    names = list(optimizers)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.process_time()  # CPU time of all threads: robust to other processes sharing the cores
            optimizers[name].step()
            samples[name].append(time.process_time() - start)
    times = {name: statistics.median(values) for name, values in samples.items()}
    reference = times["torch Adam foreach (reference)"]
    print(f"\n{'optimizer':34s} {'CPU ms':>9s} {'x torch Adam':>13s} {'target':>8s}")
    for name, seconds in times.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else (f"<={target} {'ok' if seconds / reference <= target else 'MISS'}")
        print(f"{name:34s} {seconds * 1e3:9.1f} {seconds / reference:13.2f} {verdict:>8s}")


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


if __name__ == "__main__":
    # One intra-op thread and CPU time (not wall time): on a shared 2-core machine, wall time and idle OpenMP
    # threads spinning under contention made ratios swing by 2x between runs; single-thread CPU time does not.
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread, CPU time per step")
    bench_steps()
    bench_xgrad()
