import numpy as np
import pandas as pd
import pytest

from paper_figures import checkpoint_distance as figure
from studies import checkpoint_distance as study
from studies.runner import run_study


def test_figure_draws_tiny_results_and_checks_the_ensemble_formula(tmp_path):
    run_study(study.STUDY, "tiny", root=tmp_path / "runs", progress=False)
    frame = figure.load_data(tmp_path / "runs", "tiny")
    output = figure.make_figure(frame, tmp_path / "out")
    for ext in ("png", "pdf"):
        assert (tmp_path / "out" / f"checkpoint_distance.{ext}").stat().st_size > 1000
    table = output.tables["ensembles"]
    assert list(table["method"]) == ["plain", "restarts", "repulsion σ=1 s=1"]
    numbers = table.drop(columns="method").to_numpy(dtype=float)
    assert np.isfinite(numbers).all()
    np.testing.assert_allclose(table["E|mean error|²"], table["v/k + (k−1)c/k"], rtol=1e-9)
    assert (tmp_path / "out" / "ensembles.csv").exists() and "L2 1e-3" in output.caption


def test_load_data_names_missing_columns(tmp_path):
    (tmp_path / figure.STUDY).mkdir()
    pd.DataFrame({"epoch": [0], "value": [1.0]}).to_csv(tmp_path / figure.STUDY / "tiny.csv", index=False)
    with pytest.raises(ValueError, match="label"):
        figure.load_data(tmp_path, "tiny")
