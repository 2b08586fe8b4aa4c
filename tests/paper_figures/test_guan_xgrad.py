import numpy as np
import pandas as pd
import pytest

from paper_figures import guan_xgrad as figure
from studies import guan_xgrad as study
from studies.runner import run_study


def test_figure_draws_tiny_results_with_the_paper_overheads(tmp_path):
    run_study(study.STUDY, "tiny", root=tmp_path / "runs", progress=False)
    frame = figure.load_data(tmp_path / "runs", "tiny")
    output = figure.make_figure(frame, tmp_path / "out")
    for ext in ("png", "pdf"):
        assert (tmp_path / "out" / f"xgrad.{ext}").stat().st_size > 1000
    accuracy = output.tables["best_accuracy"]
    assert list(accuracy.columns) == ["base", "base (s=0)", "s=1"]
    assert np.isfinite(accuracy[["base (s=0)", "s=1"]].to_numpy()).all()
    overhead = output.tables["overhead"].set_index("base")
    assert overhead.loc["SGDM", "paper time %"] == 5.67 and overhead.loc["Adam", "paper memory %"] == 5.0
    assert (overhead["peak memory %"] > 0).all()
    assert figure.REPORTED == study.REPORTED_OVERHEAD
    assert (tmp_path / "out" / "overhead.csv").exists() and "LeNet-5 on digits" in output.caption


def test_load_data_names_missing_columns(tmp_path):
    (tmp_path / figure.STUDY).mkdir()
    pd.DataFrame({"epoch": [0], "value": [1.0]}).to_csv(tmp_path / figure.STUDY / "tiny.csv", index=False)
    with pytest.raises(ValueError, match="base"):
        figure.load_data(tmp_path, "tiny")
