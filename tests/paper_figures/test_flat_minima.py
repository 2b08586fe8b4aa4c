import numpy as np
import pandas as pd
import pytest
import torch

from paper_figures import flat_minima as figure
from studies import flat_minima as study
from studies.runner import run_study


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The tiny study (single-threaded: faster on a shared 2-core machine) drawn into a temporary folder."""
    root = tmp_path_factory.mktemp("flat")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(study.STUDY, "tiny", root=root / "runs", progress=False)
    finally:
        torch.set_num_threads(threads)
    frame = figure.load_data(root / "runs", "tiny")
    return figure.make_figure(frame, root / "out"), root / "out"


def test_every_image_and_table_is_written(drawn):
    output, out = drawn
    names = ("interpolation", "surfaces", "spectra", "sharpness_vs_gap", "sharpness_along_training", "dinh_rescaling")
    for name in names:
        for ext in ("png", "pdf"):
            assert (out / f"{name}.{ext}").stat().st_size > 1000, name
    assert set(output.tables) == {"sharpness_vs_gap", "claims", "dinh", "paper_vs_ours"}
    for key in output.tables:
        assert (out / f"{key}.csv").exists()
    assert "mnist1d" in output.caption and "SAM ρ = 0.05" in output.caption


def test_sharpness_table_has_every_solution_and_finite_measures(drawn):
    table = drawn[0].tables["sharpness_vs_gap"]
    assert list(table["solution"]) == list(figure.SOLUTION_ORDER)
    measures = [c for c in figure.MEASURES.values() if c in table.columns]
    assert len(measures) == len(figure.MEASURES) and np.isfinite(table[measures].to_numpy()).all()
    np.testing.assert_allclose(table["loss gap (test - train)"], table["test loss"] - table["train loss"], rtol=1e-12)


def test_claims_table_states_each_paper_and_the_dinh_invariance_holds(drawn):
    claims = drawn[0].tables["claims"]
    assert set(claims["paper"]) == {"Keskar et al. 2017", "Foret et al. 2021", "Dinh et al. 2017"}
    assert claims["agrees"].map(type).eq(bool).all()
    dinh = claims[claims["claim"].str.startswith("rescaling changes")].iloc[0]
    assert dinh["agrees"] and dinh["seeds agreeing"] == "1/1"
    table = drawn[0].tables["dinh"]
    np.testing.assert_allclose(table["test loss"], table["test loss"].iloc[0], rtol=1e-5)


def _trajectory_frame(points: dict[str, list[tuple[float, float]]]) -> pd.DataFrame:
    """A hand-made frame: per solution, (train loss, λ_max) at epochs 1, 2, ...; the last point is the solution."""
    rows = []
    for name, trajectory in points.items():
        rows.append({"analysis": "training", "solution": name, "seed": 0, "epochs": len(trajectory)})
        for epoch, (loss, lam) in enumerate(trajectory, start=1):
            analysis = "summary" if epoch == len(trajectory) else "trajectory"
            for quantity, value in (
                ("train_loss", loss),
                ("test_loss", 2 * loss),
                ("loss_gap", loss),
                ("lambda_max", lam),
            ):
                rows.append(
                    {
                        "analysis": analysis,
                        "solution": name,
                        "seed": 0,
                        "epoch": epoch,
                        "quantity": quantity,
                        "value": value,
                    }
                )
    return pd.DataFrame(rows)


def test_matched_sharpness_interpolates_in_log_log():
    # b: λ = 1/loss between losses 1 and 0.01; a's points at losses 0.1 (λ 20 > 10), 0.5 (λ 1 < 2), 0.001 (outside).
    frame = _trajectory_frame(
        {"a": [(0.5, 1.0), (0.1, 20.0), (0.001, 5.0)], "b": [(1.0, 1.0), (0.1, 10.0), (0.01, 100.0)]}
    )
    assert figure.matched_sharpness(frame, "a", "b") == (1, 2, 0, 1)
    assert figure.matched_sharpness(frame, "b", "a")[:2] == (1, 2)  # b at 0.1 (10 < 20), b at 0.01 (100 > 10)
    points = figure.trajectory_points(frame)
    assert list(points[points["solution"] == "a"]["epoch"]) == [1, 2, 3]


def test_load_data_names_missing_columns(tmp_path):
    (tmp_path / figure.STUDY).mkdir()
    pd.DataFrame({"analysis": ["summary"], "value": [1.0]}).to_csv(tmp_path / figure.STUDY / "tiny.csv", index=False)
    with pytest.raises(ValueError, match="solution"):
        figure.load_data(tmp_path, "tiny")


def test_paper_comparison_ratio_of_large_to_small_batch():
    values = {("SB SGD", 0): 2.0, ("SB SGD", 1): 4.0, ("LB SGD", 0): 30.0, ("LB SGD", 1): 60.0, ("SB SAM", 0): 1.0}
    rows = [
        {
            "analysis": "summary",
            "solution": s,
            "seed": seed,
            "quantity": q,
            "value": v * (2 if q == "lambda_max" else 1),
        }
        for (s, seed), v in values.items()
        for q in ("epsilon_sharpness_0.001", "lambda_max")
    ]
    table = figure.paper_comparison(pd.DataFrame(rows)).set_index("measure")
    eps = table.loc["ε-sharpness ε=1e-3"]
    assert (eps["SB mean"], eps["LB mean"], eps["LB/SB"]) == (3.0, 45.0, 15.0)
    assert eps["SB std"] == pytest.approx(np.std([2.0, 4.0], ddof=1)) and eps["seeds"] == 2
    assert eps["paper LB/SB"] == pytest.approx(205.14 / 1.23)
    assert eps["verdict"] == "agrees: LB larger on every seed"
    lam = table.loc["Hessian λ_max"]
    assert lam["LB/SB"] == 15.0 and np.isnan(lam["paper LB/SB"])
    assert "ε-sharpness ε=5e-4" not in table.index  # not measured in this frame: no row


def test_batch_verdict_checks_keskars_claim_per_seed():
    sb = pd.Series([2.0, 4.0])
    assert figure.batch_verdict(sb, pd.Series([30.0, 60.0])) == "agrees: LB larger on every seed"
    assert figure.batch_verdict(sb, pd.Series([3.0, 5.0])) == "agrees in the mean; seeds overlap"
    assert figure.batch_verdict(sb, pd.Series([1.0, 3.0])) == "contradicts: LB not larger"
    assert figure.batch_verdict(sb, pd.Series([np.nan, 3.0])) == "not computable (NaN)"
    assert figure.batch_verdict(pd.Series([2.0]), pd.Series([3.0])) == "agrees (one seed)"
    assert figure.batch_verdict(pd.Series([2.0]), pd.Series([1.0])) == "contradicts: LB not larger (one seed)"
