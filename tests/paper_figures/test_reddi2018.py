import numpy as np

from paper_figures import reddi2018 as figure
from studies.cli import main


def test_tiny_study_and_figure(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = ["--scale", "tiny", "--runs-dir", str(runs), "--no-progress", "--out", str(out)]
    assert main(["figures", *args, "--only", "reddi2018", "--skip-theory"]) == 0
    frame = figure.load_data(runs, "tiny")
    assert set(figure.COLUMNS) <= set(frame.columns)
    for ext in ("png", "pdf"):
        assert (out / "reddi2018" / f"x_over_time.{ext}").stat().st_size > 1000
    summary = figure.summary_table(frame)
    assert np.isfinite(summary["x_final (ours, mean of last 10%)"]).all()
    claims = summary[summary["source"] != "no claim"]
    assert (claims["same side"] == "yes").all()
    report = (out / "report.md").read_text()
    assert "reddi2018/x_over_time.png" in report
    assert "Made at the tiny scale on synthetic problems (no data set)." in report
