import numpy as np
import pandas as pd
import pytest

from paper_figures import crowded_valley as figure
from studies import crowded_valley as study
from studies.runner import run_study


def test_figure_draws_tiny_results_with_the_report_numbers_beside_ours(tmp_path):
    run_study(study.STUDY, "tiny", root=tmp_path / "runs", progress=False)
    frame = figure.load_data(tmp_path / "runs", "tiny")
    output = figure.make_figure(frame, tmp_path / "out")
    for ext in ("png", "pdf"):
        assert (tmp_path / "out" / f"accuracy_curves.{ext}").stat().st_size > 1000
    table = output.tables["accuracy_by_progress"]
    assert list(table["optimizer"]) == list(study.OPTIMIZERS)
    marks = [f"{10 * k}%" for k in range(1, 11)]
    assert set(marks) <= set(table.columns) and np.isfinite(table[marks].to_numpy()).all()
    reported = table.set_index("optimizer")["report (MNIST, 100 epochs)"]
    assert reported["SAM"] == 0.81 and reported["AdamP"] == 0.69 and reported["Expectigrad"] == 0.90
    assert np.isnan(reported["Adam"])
    assert figure.REPORTED == study.REPORTED
    assert "digits" in output.caption and (tmp_path / "out" / "accuracy_by_progress.csv").exists()


def test_load_data_names_missing_columns(tmp_path):
    (tmp_path / figure.STUDY).mkdir()
    pd.DataFrame({"epoch": [0], "value": [1.0]}).to_csv(tmp_path / figure.STUDY / "tiny.csv", index=False)
    with pytest.raises(ValueError, match="optimizer"):
        figure.load_data(tmp_path, "tiny")
