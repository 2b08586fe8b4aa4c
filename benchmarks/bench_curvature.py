"""Benchmark of landscape.curvature on an MLP 784-128-10 with 1000 Gaussian samples and random labels (CPU).

(a) the issue's table, as ratios measured side by side in one run (best CPU time of --product-repeats in (a1) and
    --repeats - 1 in (a2), interleaved):
    (a1) one Hessian-vector product in gradients, float32 and float64, rebuilding the first-order graph for every
         product (graph="recompute") and keeping it (graph="reuse"), a 10-column matmat, and PyHessian's product
         (it keeps the gradient's graph) when pyhessian is installed; equality of reuse and recompute, and of reuse
         and a dense torch.func.hessian on a small MLP; the measured size of the kept graph.
    (a2) SLQ density, 80 steps x 10 probes, against PyHessian's density at the same 800 products (when installed),
         and SLQ's cost per product against lanczos_eigenpairs' on the same operator at the same 80 steps (and, for
         information, when Lanczos stops at its largest eigenvalue's convergence); graphs built before timing.
    (a3) Hutch++ and Hutchinson with their default stopping rules: products, mean error, and how often the error is
         within 2 and 3 reported standard errors, on a flat and a decaying spectrum (rotated diagonal matrices) and
         on the MLP's Hessian (exact trace from the closed form below).
(b) top-5 Hessian eigenvalues, for several start-vector seeds: valley Lanczos (full reorthogonalisation, stops on the
    Ritz residual bounds, no extra application for residuals) at tol=1e-3 and tol=1e-10, ARPACK's eigsh (kept for
    comparison; k extra applications measure residuals) and valley power iteration with PyHessian's method and stopping
    rule (relative tolerance 1e-3 on the eigenvalue, at most 100 iterations per eigenvalue; k extra applications measure
    residuals, which PyHessian itself does not do): operator applications and max relative eigenvalue error against a
    tight reference (eigsh, tol=0, ncv=40, another start vector; its residuals printed). The ratios Lanczos / power are
    given against power's applications with and without its k residual checks (the latter is PyHessian's own cost).
(c) trace: Hutchinson vs Hutch++ at equal numbers of applications, |error| against the exact trace. The exact trace
    comes from a closed form for a one-hidden-layer MLP with cross-entropy (per example, with logits' gradient g_i and
    Hessian H_i = diag(p_i) - p_i p_i^T):
      tr_W1+b1 = 1/N sum_i (|x_i|^2 + 1) sum_j [s'(a_ij)^2 w_j^T H_i w_j + s''(a_ij) w_j^T g_i]   (w_j = W2[:, j])
      tr_W2+b2 = 1/N sum_i (|h_i|^2 + 1) tr(H_i)
    checked here against the trace of a dense Hessian (n unit-vector HVPs) on a small MLP 20-8-3, which is cheap.

pyhessian is an optional, benchmark-only install (pip install --no-deps pyhessian); its columns say "not installed"
without it.

Usage: python benchmarks/bench_curvature.py [--threads 1] [--product-repeats 15] [--repeats 5] [--seeds 3]
    [--eigen-seeds 5] [--parts a b c]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
import warnings
from functools import partial

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from landscape.curvature import (
    HessianOperator,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_eigenpairs,
    power_iteration_eigenpairs,
    slq_density,
)
from studies import arguments


def make_problem(
    d_in: int, hidden: int, classes: int, n: int, steps: int, dtype: torch.dtype, seed: int = 0, decay: float = 0.0
):
    """Gaussian inputs (feature k scaled by k^-decay; 0: isotropic), random labels, Linear-Tanh-Linear, Adam steps."""
    torch.manual_seed(seed)
    x = torch.randn(n, d_in, dtype=dtype) * torch.arange(1, d_in + 1, dtype=dtype) ** -decay
    y = torch.randint(0, classes, (n,))
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).to(dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):  # a few full-batch steps so the Hessian is not the one at initialisation
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, x, y


def exact_trace(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> float:
    """Closed-form trace of the cross-entropy Hessian of Linear-Tanh-Linear (see the module docstring)."""
    first, last = model[0], model[2]
    x, w1, b1 = x.double(), first.weight.detach().double(), first.bias.detach().double()
    w2, b2 = last.weight.detach().double(), last.bias.detach().double()
    a = x @ w1.T + b1
    h = torch.tanh(a)
    d1, d2 = 1 - h**2, -2 * h * (1 - h**2)  # tanh', tanh''
    p = torch.softmax(h @ w2.T + b2, dim=1)
    g = p - F.one_hot(y, p.shape[1]).double()
    # w_j^T H_i w_j = sum_c p_ic w_cj^2 - (sum_c p_ic w_cj)^2
    quad = p @ w2**2 - (p @ w2) ** 2
    inner = (d1**2 * quad + d2 * (g @ w2)).sum(dim=1)
    trace_first = ((x**2).sum(dim=1) + 1) * inner
    trace_last = ((h**2).sum(dim=1) + 1) * (p - p**2).sum(dim=1)
    return float((trace_first + trace_last).mean())


def check_exact_trace() -> tuple[float, float]:
    model, x, y = make_problem(20, 8, 3, 200, 20, torch.float64, seed=1)
    op = HessianOperator(model, F.cross_entropy, (x, y))
    return exact_trace(model, x, y), float(np.trace(op.matmat(np.eye(op.shape[0]))))


def bench_eigen(seeds: int) -> pd.DataFrame:
    model, x, y = make_problem(784, 128, 10, 1000, 100, torch.float64)
    op = HessianOperator(model, F.cross_entropy, (x, y))
    print(f"MLP 784-128-10, n = {op.shape[0]} parameters, 1000 samples, float64")
    start = time.perf_counter()
    reference = lanczos_eigenpairs(op, k=5, tol=0.0, ncv=40, seed=12345, method="arpack")
    print(
        f"reference: eigsh tol=0 ncv=40: {reference.applications} applications, "
        f"{time.perf_counter() - start:.1f} s, max relative residual "
        f"{(reference.residuals / np.abs(reference.eigenvalues)).max():.1e}"
    )
    print("reference top-5:", np.array2string(reference.eigenvalues, precision=8))
    k = 5
    runs = [
        ("lanczos tol=1e-3", seeds, 0, lambda s: lanczos_eigenpairs(op, k=k, tol=1e-3, seed=s)),
        ("lanczos tol=1e-10", seeds, 0, lambda s: lanczos_eigenpairs(op, k=k, tol=1e-10, seed=s)),
        ("eigsh tol=1e-3", seeds, k, lambda s: lanczos_eigenpairs(op, k=k, tol=1e-3, seed=s, method="arpack")),
        ("eigsh tol=0", seeds, k, lambda s: lanczos_eigenpairs(op, k=k, tol=0.0, seed=s, method="arpack")),
        ("power (PyHessian rule)", seeds, k, lambda s: power_iteration_eigenpairs(op, k=k, seed=s)),
        ("power tol=1e-6 max_iter=500", 1, k, lambda s: power_iteration_eigenpairs(op, k, 500, 1e-6, seed=s)),
    ]
    rows = []
    for name, count, checks, run in runs:
        for seed in range(count):
            start = time.perf_counter()
            result = run(seed)
            error = np.abs(result.eigenvalues - reference.eigenvalues) / np.abs(reference.eigenvalues)
            rows.append(
                {
                    "method": name,
                    "seed": seed,
                    "applications": result.applications,
                    "residual_checks": checks,
                    "max_rel_error": error.max(),
                    "worst_index": int(error.argmax()),
                    "max_rel_residual": (result.residuals / np.abs(result.eigenvalues)).max(),
                    "converged": int(result.converged.sum()),
                    "seconds": time.perf_counter() - start,
                    "eigenvalues": np.array2string(result.eigenvalues, precision=5),
                }
            )
    return pd.DataFrame(rows)


def print_eigen(eigen: pd.DataFrame) -> None:
    print(eigen.drop(columns="eigenvalues").to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    summary = eigen.groupby("method", sort=False).agg(
        applications_mean=("applications", "mean"),
        applications_max=("applications", "max"),
        max_rel_error_median=("max_rel_error", "median"),
        max_rel_error_worst=("max_rel_error", "max"),
    )
    print(summary.to_string(float_format=lambda v: f"{v:.3g}"))
    print("converged: pairs with residual <= 1e-6 max|lambda| (the default residual_tol), stricter than tol=1e-3")
    power = eigen[eigen.method == "power (PyHessian rule)"].set_index("seed")
    power_all, power_iterations = power.applications, power.applications - power.residual_checks
    print("ratio of applications to power (PyHessian rule), same seed; target <= 0.25:")
    for name in ("lanczos tol=1e-3", "lanczos tol=1e-10", "eigsh tol=1e-3", "eigsh tol=0"):
        other = eigen[eigen.method == name].set_index("seed").applications
        print(
            f"  {name:18s} / power incl. its residual checks: mean {other.mean() / power_all.mean():.3f}, "
            f"worst seed {(other / power_all).max():.3f};  / power iterations only: mean "
            f"{other.mean() / power_iterations.mean():.3f}, worst seed {(other / power_iterations).max():.3f}"
        )
    print("eigenvalues returned by power iteration per seed:")
    for _, row in eigen[eigen.method.str.startswith("power")].iterrows():
        print(f"  {row.method}, seed {row.seed}: {row.eigenvalues}")


def bench_trace(seeds: int, budgets: tuple[int, ...], decay: float) -> tuple[pd.DataFrame, float]:
    model, x, y = make_problem(784, 128, 10, 1000, 100, torch.float32, decay=decay)
    op = HessianOperator(model, F.cross_entropy, (x, y))
    exact = exact_trace(model, x, y)
    rows = []
    for budget in budgets:
        for estimator in (hutchinson_trace, hutchpp_trace):
            for seed in range(seeds):
                result = estimator(op, max_applications=budget, rtol=0.0, seed=seed)
                rows.append(
                    {
                        "applications": result.applications,
                        "method": result.method,
                        "seed": seed,
                        "abs_error": abs(result.estimate - exact),
                        "reported_se": result.standard_error,
                    }
                )
    return pd.DataFrame(rows), exact


def bench_trace_part(seeds: int) -> None:
    print("\n(c) trace at equal applications (float32 operator, exact trace in float64)")
    closed, dense = check_exact_trace()
    print(f"check on MLP 20-8-3 (float64): closed-form trace {closed:.15g}, dense trace {dense:.15g}")
    for decay, label in ((0.0, "isotropic Gaussian inputs (the benchmark problem)"), (1.0, "inputs scaled k^-1")):
        trace, exact = bench_trace(seeds, (30, 90, 300), decay)
        print(f"\n{label}: exact trace {exact:.6g}")
        trace["within_4se"] = trace.abs_error <= 4 * trace.reported_se
        table = trace.groupby(["applications", "method"], sort=False).agg(
            mean_abs_error=("abs_error", "mean"),
            mean_reported_se=("reported_se", "mean"),
            within_4se=("within_4se", "sum"),
        )
        table["mean_rel_error"] = table.mean_abs_error / abs(exact)
        print(table.to_string(float_format=lambda v: f"{v:.3g}"))
        errors = table.mean_abs_error
        ratio = errors.xs("hutchinson", level="method") / errors.xs("hutch++", level="method")
        print("mean |error| hutchinson / hutch++ by applications:", ratio.round(2).to_dict())


def best_of(fn, repeats: int) -> float:
    """Best CPU (process) seconds of ``repeats`` calls: the least disturbed by other work on a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def pyhessian_available() -> bool:
    return importlib.util.find_spec("pyhessian") is not None


def _symmetric_eig(matrix: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.eig``'s old return format for a symmetric matrix (PyHessian's density calls it; torch removed it)."""
    values, vectors = torch.linalg.eigh(matrix)
    return torch.stack([values, torch.zeros_like(values)], dim=1), vectors


def bench_products(repeats: int) -> None:
    """Row 1: one Hessian-vector product as multiples of one gradient, with and without graph reuse."""
    print("\n(a1) one Hessian-vector product in gradients (MLP 784-128-10, 1000 samples; best CPU of", repeats, "runs)")
    print(
        "| dtype | gradient ms | HVP recompute | HVP reuse | matmat(10) reuse, per column | PyHessian |"
        " reuse / PyHessian | max |reuse - recompute| | max |reuse - dense(func.hessian)| on 20-8-3 | kept graph MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for dtype in (torch.float32, torch.float64):
        _product_row(dtype, repeats)
    print("target: HVP reuse <= 1.3 gradients in float32 and float64")


def _product_row(dtype: torch.dtype, repeats: int) -> None:
    """One row of (a1)."""
    model, x, y = make_problem(784, 128, 10, 1000, 0, dtype)
    params = list(model.parameters())
    reuse = HessianOperator(model, F.cross_entropy, (x, y), graph="reuse")
    recompute = HessianOperator(model, F.cross_entropy, (x, y), graph="recompute")
    v = torch.randn(reuse.shape[0], dtype=dtype)
    block = torch.randn(reuse.shape[0], 10, dtype=dtype)
    diff = float((reuse.matvec(v) - recompute.matvec(v)).abs().max())

    def gradient():
        torch.autograd.grad(F.cross_entropy(model(x), y), params)

    times = {"gradient": [], "recompute": [], "reuse": [], "block": [], "pyhessian": []}
    hessian = None
    if pyhessian_available():
        from pyhessian import hessian as pyhessian_hessian
        from pyhessian.utils import hessian_vector_product

        hessian = pyhessian_hessian(model, F.cross_entropy, data=(x, y), cuda=False)
        pv = list(v.split([p.numel() for p in params]))
        pv = [t.view_as(p) for t, p in zip(pv, params, strict=True)]
    for _ in range(repeats):  # interleaved, so that load changes hit every column alike
        times["gradient"].append(best_of(gradient, 1))
        times["recompute"].append(best_of(lambda: recompute.matvec(v), 1))
        times["reuse"].append(best_of(lambda: reuse.matvec(v), 1))
        times["block"].append(best_of(lambda: reuse.matmat(block), 1) / 10)
        if hessian is not None:
            times["pyhessian"].append(best_of(lambda: hessian_vector_product(hessian.gradsH, hessian.params, pv), 1))
    best = {k: min(t) if t else float("nan") for k, t in times.items()}
    g = best["gradient"]
    small, sx, sy = make_problem(20, 8, 3, 200, 0, dtype, seed=1)
    small_op = HessianOperator(small, F.cross_entropy, (sx, sy), graph="reuse")
    names = [n for n, _ in small.named_parameters()]

    def loss_of(theta):
        p = dict(zip(names, small_op.unflatten(theta), strict=True))
        return F.cross_entropy(torch.func.functional_call(small, p, (sx,)), sy)

    theta = torch.cat([p.detach().reshape(-1) for p in small.parameters()])
    dense = torch.func.hessian(loss_of)(theta)
    sv = torch.randn(len(theta), dtype=dtype)
    dense_diff = float((small_op.matvec(sv) - dense @ sv).abs().max())
    py = best["pyhessian"] / g if hessian is not None else float("nan")
    py_text = f"{py:.2f}" if hessian is not None else "not installed"
    ratio = f"{best['reuse'] / best['pyhessian']:.2f}" if hessian is not None else "-"
    print(
        f"| {str(dtype).removeprefix('torch.')} | {g * 1e3:.1f} | {best['recompute'] / g:.2f} |"
        f" {best['reuse'] / g:.2f} | {best['block'] / g:.2f} | {py_text} | {ratio} | {diff:.1e} | {dense_diff:.1e} |"
        f" {reuse.graph_nbytes / 2**20:.1f} |"
    )


def bench_slq(repeats: int) -> None:
    """Row 2: SLQ density, 80 Lanczos steps x 10 probes, against PyHessian's density and Lanczos per product.

    Every operator has its first-order graph built before the clock starts, as PyHessian's ``hessian`` object has
    its gradient graph when constructed: the times are those of the products and the recurrences around them. With
    full reorthogonalisation a Lanczos step costs a product plus four passes over the basis built so far, so a
    product's share grows with the step: the target compares SLQ with ``lanczos_eigenpairs`` run to the same 80
    steps (``which="SA"``: the smallest eigenvalue, which does not converge before 80 steps here; the steps taken are
    printed). The largest eigenvalue (``"LA"``) converges in fewer steps, against a smaller basis; that ratio is
    printed for information.
    """
    print(f"\n(a2) SLQ spectral density, 80 steps x 10 probes (float32 MLP; best CPU of {repeats} runs; graphs built)")
    model, x, y = make_problem(784, 128, 10, 1000, 100, torch.float32)
    times = {"valley": [], "pyhessian": [], "SA": [], "LA": []}
    steps = {}
    hessian = None
    if pyhessian_available():
        from pyhessian import hessian as pyhessian_hessian

        hessian = pyhessian_hessian(model, F.cross_entropy, data=(x, y), cuda=False)
        torch.eig = _symmetric_eig  # its tridiagonal eigenproblem only; the 800 products are PyHessian's own
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Lanczos stops at max_basis on purpose
        for _ in range(repeats):  # interleaved, so that load changes hit every method alike
            with HessianOperator(model, F.cross_entropy, (x, y)) as op:
                op.matvec(torch.zeros(op.shape[0]))  # builds (and keeps) the graph
                times["valley"].append(best_of(lambda op=op: slq_density(op, probes=10, steps=80, seed=0), 1))
                mode = op.graph_mode
            if hessian is not None:
                times["pyhessian"].append(best_of(lambda: hessian.density(iter=80, n_v=10), 1))
            for which in ("SA", "LA"):
                with HessianOperator(model, F.cross_entropy, (x, y)) as op:
                    op.matvec(torch.zeros(op.shape[0]))
                    before = op.applications
                    run = partial(lanczos_eigenpairs, op, k=1, which=which, tol=0.0, max_basis=80, seed=0)
                    times[which].append(best_of(run, 1))
                    steps[which] = op.applications - before
    valley = min(times["valley"])
    print("| method | CPU seconds | products | seconds / product | vs PyHessian |")
    print("|---|---:|---:|---:|---:|")
    if hessian is not None:
        py = min(times["pyhessian"])
        print(
            f"| valley slq_density (graph {mode}) | {valley:.2f} | 800 | {valley / 800 * 1e3:.2f} ms |"
            f" {py / valley:.2f}x faster |"
        )
        print(f"| PyHessian density | {py:.2f} | 800 | {py / 800 * 1e3:.2f} ms | 1 |")
    else:
        print(
            f"| valley slq_density (graph {mode}) | {valley:.2f} | 800 | {valley / 800 * 1e3:.2f} ms |"
            " PyHessian not installed |"
        )
    for which, label in (("SA", "same 80 steps (which=SA)"), ("LA", "largest eigenvalue (which=LA)")):
        per_product = min(times[which]) / steps[which]
        note = " (target <= 1.2)" if which == "SA" else ""
        if which == "SA" and steps[which] != 80:
            note = f" (NOT at equal steps: Lanczos stopped after {steps[which]})"
        print(
            f"SLQ per-product cost / lanczos_eigenpairs' ({label}, {steps[which]} products, "
            f"{per_product * 1e3:.2f} ms each): {(valley / 800) / per_product:.2f}{note}"
        )
    print("target: SLQ no slower than PyHessian's density")


def bench_hutchpp(seeds: int) -> None:
    """Row 3: Hutch++ with its default stopping rule against Hutchinson's default, products and mean error."""
    print(f"\n(a3) default stopping rules: Hutch++ vs Hutchinson, {seeds} seeds each")
    rng = np.random.default_rng(0)
    n = 1000
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    problems = {
        "flat (eigenvalues uniform in [1, 2])": rng.uniform(1.0, 2.0, n),
        "decaying (1/i^2)": 1.0 / np.arange(1, n + 1) ** 2,
    }
    print("| spectrum | method | mean products | mean relative error | errors within 2 / 3 reported se |")
    print("|---|---|---:|---:|---:|")
    verdicts = []
    for name, eigenvalues in problems.items():
        matrix, exact = q @ np.diag(eigenvalues) @ q.T, float(eigenvalues.sum())
        verdicts.append((name, *_hutch_rows(name, lambda e, s, m=matrix: e(m, seed=s), exact, seeds)))
    model, x, y = make_problem(784, 128, 10, 1000, 100, torch.float32)
    exact = exact_trace(model, x, y)
    with HessianOperator(model, F.cross_entropy, (x, y)) as op:
        name = "MLP Hessian (outliers + bulk)"
        verdicts.append((name, *_hutch_rows(name, lambda e, s: e(op, seed=s), exact, max(3, seeds // 10))))
    for name, products, error in verdicts:
        print(
            f"{name}: Hutch++ / Hutchinson products {products:.2f} (target <= 2), mean error {error:.2f} (target <= 1)"
        )


def _hutch_rows(name, run, exact, seeds):
    out = {}
    for estimator in (hutchinson_trace, hutchpp_trace):
        results = [run(estimator, s) for s in range(seeds)]
        products = np.mean([r.applications for r in results])
        errors = np.array([abs(r.estimate - exact) for r in results])
        z = errors / np.array([max(r.standard_error, 1e-300) for r in results])
        out[estimator.__name__] = (products, errors.mean())
        print(
            f"| {name} | {results[0].method} default | {products:.1f} | {errors.mean() / abs(exact):.2e} |"
            f" {(z <= 2).mean():.2f} / {(z <= 3).mean():.2f} |"
        )
    return (out["hutchpp_trace"][0] / out["hutchinson_trace"][0], out["hutchpp_trace"][1] / out["hutchinson_trace"][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    whole = arguments.count  # a count >= 1; a bad one is one line
    parser.add_argument("--threads", type=whole, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seeds", type=whole, default=3, help="seeds per trace estimator and budget in (c)")
    parser.add_argument("--eigen-seeds", type=whole, default=5, help="start-vector seeds per eigen method in (b)")
    parser.add_argument("--repeats", type=whole, default=5, help="(a2) times each method repeats - 1 times")
    parser.add_argument(
        "--product-repeats", type=whole, default=15, help="timed products per column in (a1), interleaved, best shown"
    )
    parser.add_argument("--hutch-seeds", type=whole, default=50, help="seeds per estimator in (a3)")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("a", "a1", "a2", "a3", "b", "c"),
        default=["a"],
        help="parts to run (a = a1 a2 a3)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()}")
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 80)

    if "a" in args.parts:
        args.parts += ["a1", "a2", "a3"]
    if "a1" in args.parts:
        bench_products(args.product_repeats)
    if "a2" in args.parts:
        bench_slq(max(1, args.repeats - 1))
    if "a3" in args.parts:
        bench_hutchpp(args.hutch_seeds)
    if "b" in args.parts:
        print("(b) top-5 Hessian eigenvalues")
        print_eigen(bench_eigen(args.eigen_seeds))
    if "c" in args.parts:
        bench_trace_part(args.seeds)


if __name__ == "__main__":
    main()
