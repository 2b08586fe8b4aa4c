import numpy as np
import pandas as pd
import pytest

from paper_figures import cohen2021eos as figure
from studies import cohen2021eos as study
from studies.runner import run_study


def _runs_by_hand(frame):
    """First crossing, share within ±10% after it and loss increases, computed with plain loops over the rows."""
    result = {}
    for (optimizer, loss, lr), run in frame.groupby(["optimizer", "loss", "lr"]):
        ratios = sorted(
            (int(s), float(v))
            for s, q, v in zip(run["step"], run["quantity"], run["value"], strict=True)
            if q == "sharpness_ratio"
        )
        losses = dict(
            (int(s), float(v))
            for s, q, v in zip(run["step"], run["quantity"], run["value"], strict=True)
            if q == "train_loss"
        )
        first = next((s for s, r in ratios if r >= 1.0), None)
        if first is None:
            result[(optimizer, loss, lr)] = (None, None, None)
            continue
        after = [r for s, r in ratios if s >= first]
        within = sum(abs(r - 1) <= 0.1 for r in after) / len(after)
        steps = sorted(s for s in losses if s >= first)
        increases = sum(losses[b] > losses[a] for a, b in zip(steps[:-1], steps[1:], strict=True))
        result[(optimizer, loss, lr)] = (first, within, increases)
    return result


def test_figure_and_tables_from_tiny_results(tmp_path):
    run_study(study.STUDY, "tiny", root=tmp_path / "runs", progress=False)
    frame = figure.load_data(tmp_path / "runs", "tiny")
    output = figure.make_figure(frame, tmp_path / "out")
    for ext in ("png", "pdf"):
        assert (tmp_path / "out" / f"cohen2021eos.{ext}").stat().st_size > 1000
    runs = output.tables["eos_runs"]
    assert len(runs) == len(study._SCALES["tiny"]["runs"])
    expected = _runs_by_hand(frame)
    for _, row in runs.iterrows():
        first, within, increases = expected[(row["optimizer"], row["loss"], row["lr"])]
        if first is None:
            assert pd.isna(row["first crossing step"])
        else:
            assert row["first crossing step"] == first
            assert row["within ±10% after crossing"] == pytest.approx(within)
            assert row["loss increases after crossing"] == increases
        ratio = frame[(frame["quantity"] == "sharpness_ratio") & (frame["lr"] == row["lr"])]
        ratio = ratio[(ratio["optimizer"] == row["optimizer"]) & (ratio["loss"] == row["loss"])]
        assert row["max ratio"] == pytest.approx(ratio["value"].max())
    claims = output.tables["eos_claims"]
    assert set(claims["paper"]) == {"Cohen et al. 2021", "Cohen et al. 2022"}
    assert len(claims) == 3 * runs.groupby(["optimizer", "loss"]).ngroups
    assert claims["agrees"].map(type).eq(bool).all()
    assert (tmp_path / "out" / "eos_claims.csv").exists() and "2/η" in output.caption


def test_claims_table_on_a_hand_made_run():
    steps = np.arange(1, 9)
    ratios = [0.5, 0.8, 1.02, 0.85, 1.05, 1.2, 1.0, 0.98]
    losses = [1.0, 0.9, 0.8, 0.85, 0.7, 0.7, 0.6, 0.5]
    rows = [{"step": s, "quantity": "sharpness_ratio", "value": r} for s, r in zip(steps, ratios, strict=True)]
    rows += [{"step": s, "quantity": "train_loss", "value": v} for s, v in zip(steps, losses, strict=True)]
    rows += [{"step": 8, "quantity": "stability_threshold", "value": 20.0}]
    frame = pd.DataFrame(rows).assign(optimizer="GD", loss="mse", lr=0.1, seed=0, operator=np.nan, start=np.nan)
    runs = figure.run_table(frame)
    row = runs.iloc[0]
    # after step 3: 1.02, 0.85, 1.05, 1.2, 1.0, 0.98 -> four within ±10%; losses rise once (0.8 -> 0.85), 0.7 = 0.7
    assert row["first crossing step"] == 3 and row["within ±10% after crossing"] == pytest.approx(4 / 6)
    assert row["loss increases after crossing"] == 1 and row["first step at ≥ 90%"] == 3
    claims = figure.claims_table(runs)
    assert list(claims["agrees"]) == [False, True, True]  # 4/6 < 90% within the band
