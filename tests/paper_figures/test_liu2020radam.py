import numpy as np

from paper_figures import liu2020radam as figure
from studies.cli import main


def test_tiny_study_and_figure(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = ["--scale", "tiny", "--runs-dir", str(runs), "--no-progress", "--out", str(out)]
    assert main(["figures", *args, "--only", "liu2020radam", "--skip-theory"]) == 0
    frame = figure.load_data(runs, "tiny")
    for name in ("variance", "training"):
        for ext in ("png", "pdf"):
            assert (out / "liu2020radam" / f"{name}.{ext}").stat().st_size > 1000
    summary = figure.summary_table(frame)
    assert len(summary) == 5 and np.isfinite(summary["final test accuracy"]).all()
    assert "liu2020radam/variance.png" in (out / "report.md").read_text()
