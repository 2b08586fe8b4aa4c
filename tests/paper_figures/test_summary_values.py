"""The numbers in every figure module's summary tables, recomputed here from a synthetic study frame.

Each frame is built with distractors a wrong summary would pick up: the test loss beside the training loss, an
epoch 0 before training, shuffled rows (so "first" and "final" differ from "first row" and "last row"), other
kinds of rows. The expected numbers are computed independently with plain loops.
"""

import itertools

import numpy as np
import pandas as pd
import pytest

from paper_figures import (
    checkpoint_distance,
    crowded_valley,
    flat_minima,
    guan_xgrad,
    heo2021adamp,
    kingma2015adam,
    liu2020radam,
    ravines,
    reddi2018,
    weight_norm_growth,
)

RNG = np.random.default_rng(0)


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The rows, shuffled."""
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1.0, random_state=1).reset_index(drop=True)


def _value(rows, **match):
    """The single value of the row matching every key (independent of pandas grouping)."""
    found = [r["value"] for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(found) == 1, match
    return found[0]


# ---------------------------------------------------------------- kingma2015adam
def test_kingma_summary():
    rows = []
    for model, dropout, opt in itertools.product(["mlp", "cnn"], [0.0, 0.5], ["Adam", "SGD"]):
        key = dict(model=model, dataset="digits", dropout=dropout, optimizer=opt)
        for epoch in range(4):
            rows.append({**key, "epoch": epoch, "quantity": "test_accuracy", "value": RNG.uniform(0.1, 0.9)})
            rows.append({**key, "epoch": epoch, "quantity": "test_loss", "value": RNG.uniform(0.01, 0.05)})
            if epoch:
                rows.append({**key, "epoch": epoch, "quantity": "epoch_train_loss", "value": RNG.uniform(0.5, 2)})
                rows.append({**key, "epoch": epoch, "quantity": "seconds", "value": RNG.uniform(1, 3)})
    table = kingma2015adam.summary_table(_frame(rows))
    assert len(table) == 8
    for _, row in table.iterrows():
        key = dict(model=row["model"], dataset="digits", dropout=row["dropout"], optimizer=row["optimizer"])
        train = [_value(rows, **key, epoch=e, quantity="epoch_train_loss") for e in (1, 2, 3)]
        seconds = [_value(rows, **key, epoch=e, quantity="seconds") for e in (1, 2, 3)]
        assert row["lowest_train_loss"] == min(train)
        assert row["seconds_per_epoch"] == pytest.approx(sum(seconds) / 3, rel=1e-12)
        assert row["final_test_accuracy"] == _value(rows, **key, epoch=3, quantity="test_accuracy")
        assert not row["diverged"]


# ---------------------------------------------------------------- liu2020radam
def test_liu_summary():
    rows = [{"kind": "theory", "lr": np.nan, "optimizer": "", "epoch": 0, "quantity": "rho_t", "value": 5.0}]
    for lr, opt in itertools.product([0.1, 0.01], ["Adam", "RAdam"]):
        key = dict(kind="train", lr=lr, optimizer=opt)
        for epoch in range(1, 5):
            rows.append({**key, "epoch": epoch, "quantity": "epoch_train_loss", "value": RNG.uniform(0.5, 2)})
            rows.append({**key, "epoch": epoch, "quantity": "test_accuracy", "value": RNG.uniform(0.1, 0.9)})
            rows.append({**key, "epoch": epoch, "quantity": "test_loss", "value": RNG.uniform(0.5, 2)})
    rows.append({"kind": "train", "lr": 0.1, "optimizer": "Adam", "epoch": 4, "quantity": "diverged", "value": 1.0})
    table = liu2020radam.summary_table(_frame(rows))
    assert len(table) == 4
    for _, row in table.iterrows():
        key = dict(kind="train", lr=row["lr"], optimizer=row["optimizer"], epoch=4)
        assert row["final train loss"] == _value(rows, **key, quantity="epoch_train_loss")
        assert row["final test accuracy"] == _value(rows, **key, quantity="test_accuracy")
        assert row["diverged"] == (row["lr"] == 0.1 and row["optimizer"] == "Adam")


# ---------------------------------------------------------------- crowded_valley
def test_crowded_valley_accuracy_table():
    rows = []
    for opt, seed in itertools.product(["Adam", "AdamP"], [0, 1, 2]):
        for epoch in range(0, 11):
            key = dict(optimizer=opt, seed=seed, epoch=epoch, epochs=10)
            rows.append({**key, "quantity": "test_accuracy", "value": RNG.uniform(0.1, 0.9)})
            rows.append({**key, "quantity": "train_accuracy", "value": RNG.uniform(0.1, 0.9)})
    frame = _frame(rows)
    table = crowded_valley.accuracy_table(frame)
    for _, row in table.iterrows():
        for k in range(1, 11):
            values = [
                _value(rows, optimizer=row["optimizer"], seed=s, epoch=k, quantity="test_accuracy") for s in range(3)
            ]
            assert row[f"{10 * k}%"] == pytest.approx(np.mean(values), rel=1e-12)
        assert row["final sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)  # values: epoch 10
        assert row["seeds"] == 3
    projected = [{"quantity": "adamp_projected_fraction", "value": v} for v in (0.2, 0.4, 0.9)]
    assert crowded_valley.projection_table(pd.DataFrame(projected)).iloc[0, 1] == pytest.approx(0.5)


# ---------------------------------------------------------------- guan_xgrad
def test_guan_per_run_overhead_and_accuracy():
    rows = []
    for base, steps, seed in itertools.product(["SGDM", "Adam"], [0, 1], [0, 1]):
        key = dict(base=base, steps=steps, seed=seed)
        rows.append({**key, "epoch": 0, "quantity": "test_accuracy", "value": 0.99})  # before training: no max
        rows.append({**key, "epoch": 0, "quantity": "seconds", "value": 0.001})  # epoch 0 is not timed
        for epoch in range(1, 4):
            for quantity in ("test_accuracy", "train_accuracy"):
                rows.append({**key, "epoch": epoch, "quantity": quantity, "value": RNG.uniform(0.1, 0.9)})
            for quantity in ("seconds", "cpu_seconds_per_step", "peak_memory_bytes"):
                rows.append({**key, "epoch": epoch, "quantity": quantity, "value": RNG.uniform(1, 2)})
    runs = guan_xgrad.per_run(_frame(rows))
    for _, run in runs.iterrows():
        key = dict(base=run["base"], steps=run["steps"], seed=run["seed"])
        trained = range(1, 4)
        best = max([_value(rows, **key, epoch=e, quantity="test_accuracy") for e in range(0, 4)])
        assert run["best_accuracy"] == best
        assert run["seconds_per_epoch"] == min(_value(rows, **key, epoch=e, quantity="seconds") for e in trained)
        cpu = min(_value(rows, **key, epoch=e, quantity="cpu_seconds_per_step") for e in trained)
        assert run["cpu_seconds_per_step"] == cpu
        assert run["peak_memory_bytes"] == max(
            _value(rows, **key, epoch=e, quantity="peak_memory_bytes") for e in trained
        )
    overhead = guan_xgrad.overhead_table(runs)
    for _, row in overhead.iterrows():

        def mean(s, col, base=row["base"]):
            return runs[(runs["base"] == base) & (runs["steps"] == s)][col].mean()

        assert row["wall time/epoch %"] == pytest.approx(
            100 * (mean(1, "seconds_per_epoch") / mean(0, "seconds_per_epoch") - 1), rel=1e-12
        )
        assert row["accuracy change (points)"] == pytest.approx(
            100 * (mean(1, "best_accuracy") - mean(0, "best_accuracy")), rel=1e-12
        )
        assert row["paper time %"] == guan_xgrad.REPORTED[row["base"]][0]
    accuracy = guan_xgrad.accuracy_table(runs).set_index("base")
    for base in ("SGDM", "Adam"):
        assert accuracy.loc[base, "s=1"] == pytest.approx(
            runs.query("base == @base and steps == 1").best_accuracy.mean()
        )


# ---------------------------------------------------------------- heo2021adamp
def test_heo_comparison_and_sweep():
    rows = [{"role": "theory", "method": "", "lr": 0.0, "weight_decay": 0.0, "step": 0, "quantity": "r", "value": 9.0}]
    for role, method, lr in itertools.product(["main", "sweep"], list(heo2021adamp._REPORTED), [0.1, 0.2]):
        if role == "main" and lr == 0.2:
            continue
        for step in range(5):
            key = dict(role=role, method=method, lr=lr, weight_decay=1e-4, step=step)
            rows.append({**key, "quantity": "r", "value": RNG.uniform(1, 3)})
            rows.append({**key, "quantity": "h", "value": RNG.uniform(0, 1)})
    table = heo2021adamp.comparison_table(_frame(rows))
    assert len(table) == 3
    for _, row in table.iterrows():
        key = dict(role="main", method=row["method"], lr=0.1, weight_decay=1e-4)
        rs = [_value(rows, **key, step=s, quantity="r") for s in range(5)]
        assert row["r final (ours)"] == rs[-1] and row["r peak (ours)"] == max(rs)
        assert row["h final (ours)"] == _value(rows, **key, step=4, quantity="h")
        what, paper = heo2021adamp._REPORTED[row["method"]]
        assert row["ours/paper"] == pytest.approx((max(rs) if what == "peak r" else rs[-1]) / paper)
    sweep = heo2021adamp.sweep_table(_frame(rows))
    swept = sweep[sweep["lr"] == 0.2]  # lr 0.2 only in the sweep (0.1 is shared with the main runs)
    assert len(swept) == 3
    for _, row in swept.iterrows():
        rs = [_value(rows, role="sweep", method=row["method"], lr=0.2, step=s, quantity="r") for s in range(5)]
        assert row["r_final"] == rs[-1] and row["r_peak"] == max(rs)
        assert row["h_final"] == _value(rows, role="sweep", method=row["method"], lr=0.2, step=4, quantity="h")


# ---------------------------------------------------------------- ravines
def test_ravines_sweep_and_best():
    rows = [
        {"role": "optimum", "problem": "p", "optimizer": "", "lr": 0.0, "step": 0, "quantity": "loss", "value": 0.0}
    ]
    losses = {}
    for problem, opt, lr in itertools.product(["rosenbrock", "valley"], ["Adam", "SGD"], [0.1, 0.01]):
        curve = np.sort(RNG.uniform(1e-3, 1.0, 21))[::-1]  # decreasing, crossing 1e-2 somewhere or not
        losses[problem, opt, lr] = curve
        for step, loss in enumerate(curve):
            key = dict(role="run", problem=problem, optimizer=opt, lr=lr, step=step)
            rows.append({**key, "quantity": "loss", "value": loss})
            rows.append({**key, "quantity": "theta1", "value": 1.0 + loss})
            rows.append({**key, "quantity": "theta2", "value": 1.0 - 2 * loss})
    table = ravines.sweep_table(_frame(rows))
    assert len(table) == 8
    for _, row in table.iterrows():
        curve = losses[row["problem"], row["optimizer"], row["lr"]]
        assert row["final loss"] == curve[-1]
        assert row["late loss"] == pytest.approx(curve[18:].mean(), rel=1e-12)  # steps >= 0.9 * 20 = 18: 18..20
        assert row["final ‖θ − θ*‖"] == pytest.approx(np.hypot(curve[-1], 2 * curve[-1]), rel=1e-12)
        below = [s for s, loss in enumerate(curve) if loss <= 1e-2]
        first = row["first step with loss ≤ 0.01"]
        assert (first is None or pd.isna(first)) if not below else first == below[0]
    best = ravines.best_table(_frame(rows))
    for _, row in best.iterrows():
        late = {lr: losses[row["problem"], row["optimizer"], lr][18:].mean() for lr in (0.1, 0.01)}
        assert row["lr"] == min(late, key=late.get)


# ---------------------------------------------------------------- reddi2018
def test_reddi_summary_is_the_late_mean():
    rows, expected = [], {}
    for family, opt, stream in itertools.product(["theory", "paper"], ["Adam", "AMSGrad"], [0, 1]):
        xs = RNG.uniform(-1, 1, 50)
        for step, x in enumerate(xs, start=1):
            rows.append(
                dict(family=family, problem="online", optimizer=opt, steps=50, step=step, stream=stream, value=x)
            )
        expected.setdefault((family, opt), []).extend(xs[44:])  # steps 45..50 >= 0.9 * 50
    table = reddi2018.summary_table(_frame(rows))
    for _, row in table.iterrows():
        family = "theory" if row["problem"].endswith(reddi2018._FAMILY_NAMES["theory"] + "") else "paper"
        ours = row["x_final (ours, mean of last 10%)"]
        assert ours == pytest.approx(np.mean(expected[family, row["optimizer"]]), rel=1e-12)
        reported = reddi2018._REPORTED.get((family, row["optimizer"]), (np.nan, ""))[0]
        if not np.isnan(reported):
            assert row["same side"] == ("yes" if ours * reported > 0 else "NO")


# ---------------------------------------------------------------- weight_norm_growth
def test_weight_norm_growth_summary():
    rows, growth, steps, acc = [], {}, {}, {}
    for opt, seed in itertools.product(["SGD", "SGDP"], [0, 1]):
        for step in range(1, 6):
            for invariant in (True, False):
                for layer in range(2):
                    g, s = RNG.uniform(1, 2), RNG.uniform(0.01, 0.1)
                    key = dict(
                        optimizer=opt, seed=seed, step=step, epoch=np.nan, scale_invariant=invariant, layer=layer
                    )
                    rows.append({**key, "quantity": "weight_norm_growth", "value": g})
                    rows.append({**key, "quantity": "effective_step", "value": s})
                    if invariant:
                        growth.setdefault((opt, seed, step), []).append(g)
                        steps.setdefault((opt, seed, step), []).append(s)
        for epoch in range(0, 3):
            a = RNG.uniform(0.1, 0.9)
            rows.append(dict(optimizer=opt, seed=seed, epoch=epoch, quantity="test_accuracy", value=a, step=np.nan))
            acc[opt, seed, epoch] = a
    table = weight_norm_growth.summary_table(_frame(rows).sort_values(["step"], kind="stable"))
    for _, row in table.iterrows():
        opt = row["optimizer"]
        last_growth = [np.mean(growth[opt, seed, 5]) for seed in (0, 1)]
        first = [np.mean(steps[opt, seed, 1]) for seed in (0, 1)]
        last = [np.mean(steps[opt, seed, 5]) for seed in (0, 1)]
        assert row["final ‖w‖/‖w₀‖ (conv, mean)"] == pytest.approx(np.mean(last_growth), rel=1e-12)
        assert row["first effective step"] == pytest.approx(np.mean(first), rel=1e-12)
        assert row["final effective step"] == pytest.approx(np.mean(last), rel=1e-12)
        assert row["effective step final/first"] == pytest.approx(np.mean(np.divide(last, first)), rel=1e-12)
        assert row["final test accuracy"] == pytest.approx(np.mean([acc[opt, s, 2] for s in (0, 1)]), rel=1e-12)


# ---------------------------------------------------------------- checkpoint_distance
def test_checkpoint_distance_ensemble_table():
    rows, k = [], 4
    for label, seed in itertools.product(["SGDR", "constant"], [0, 1]):
        base = dict(label=label, seed=seed, cycles=k, warmup=2)
        for quantity in ("snapshot_accuracy", "ensemble_accuracy", "v", "c", "c_over_v", "ensemble_error"):
            rows.append({**base, "quantity": quantity, "value": RNG.uniform(0.1, 0.9), "step": np.nan})
        for step in range(5):
            for checkpoint in ("epoch2", "epoch4"):
                rows.append(
                    {**base, "quantity": "distance", "checkpoint": checkpoint, "step": step, "value": RNG.uniform(1, 5)}
                )
    table = checkpoint_distance.ensemble_table(_frame(rows)).set_index("method")
    for label in ("SGDR", "constant"):

        def mean(q, label=label):
            return np.mean([_value(rows, label=label, seed=s, quantity=q) for s in (0, 1)])

        row = table.loc[label]
        assert row["single-model accuracy"] == pytest.approx(mean("snapshot_accuracy"), rel=1e-12)
        assert row["ensemble accuracy"] == pytest.approx(mean("ensemble_accuracy"), rel=1e-12)
        assert row["v/k + (k−1)c/k"] == pytest.approx(mean("v") / k + (k - 1) * mean("c") / k, rel=1e-12)
        last = [_value(rows, label=label, seed=s, quantity="distance", checkpoint="epoch2", step=4) for s in (0, 1)]
        assert row["distance from epoch2"] == pytest.approx(np.mean(last), rel=1e-12)


# ---------------------------------------------------------------- flat_minima
def test_flat_minima_dinh_table():
    rows = [dict(analysis="summary", solution="small", seed=0, scale=np.nan, quantity="lambda_max", value=99.0)]
    keep = ["lambda_max", "epsilon_sharpness_0.001", "sam_sharpness", "asam_sharpness", "train_loss", "test_loss"]
    for scale, seed, quantity in itertools.product([0.5, 1.0, 2.0], [0, 1], [*keep, "test_accuracy"]):
        rows.append(dict(analysis="dinh", solution="", seed=seed, scale=scale, quantity=quantity, value=RNG.uniform()))
    table = flat_minima.dinh_table(_frame(rows))
    for _, row in table.iterrows():
        scale = row.iloc[0]
        for quantity in [*keep, "test_accuracy"]:
            values = [_value(rows, analysis="dinh", seed=s, scale=scale, quantity=quantity) for s in (0, 1)]
            assert row[flat_minima.MEASURES[quantity]] == pytest.approx(np.mean(values), rel=1e-12)
