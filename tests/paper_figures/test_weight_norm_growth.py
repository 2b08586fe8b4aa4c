import numpy as np
import pandas as pd
import pytest

from paper_figures import weight_norm_growth as figure
from studies import weight_norm_growth as study
from studies.runner import run_study


def test_figure_draws_tiny_results(tmp_path):
    run_study(study.STUDY, "tiny", root=tmp_path / "runs", progress=False)
    frame = figure.load_data(tmp_path / "runs", "tiny")
    output = figure.make_figure(frame, tmp_path / "out")
    for ext in ("png", "pdf"):
        assert (tmp_path / "out" / f"weight_norm_growth.{ext}").stat().st_size > 1000
    summary = output.tables["summary"]
    assert list(summary["optimizer"]) == list(study.OPTIMIZERS)
    numbers = summary.drop(columns=["optimizer", "diverged"]).to_numpy(dtype=float)
    assert np.isfinite(numbers).all() and not summary["diverged"].any()
    assert (tmp_path / "out" / "summary.csv").exists() and "BatchNorm" in output.caption


def test_load_data_names_missing_columns(tmp_path):
    (tmp_path / figure.STUDY).mkdir()
    pd.DataFrame({"epoch": [0], "value": [1.0]}).to_csv(tmp_path / figure.STUDY / "tiny.csv", index=False)
    with pytest.raises(ValueError, match="scale_invariant"):
        figure.load_data(tmp_path, "tiny")
