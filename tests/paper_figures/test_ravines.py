import numpy as np

from paper_figures import ravines as figure
from studies.cli import main


def test_tiny_study_and_figure(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = ["--scale", "tiny", "--runs-dir", str(runs), "--no-progress", "--out", str(out)]
    assert main(["figures", *args, "--only", "ravines", "--skip-theory"]) == 0
    frame = figure.load_data(runs, "tiny")
    for name in ("trajectories", "loss_and_step_sizes"):
        for ext in ("png", "pdf"):
            assert (out / "ravines" / f"{name}.{ext}").stat().st_size > 1000
    best = figure.best_table(frame)
    assert len(best) == 15 and np.isfinite(best["final loss"]).all()
    assert "ravines/trajectories.png" in (out / "report.md").read_text()
