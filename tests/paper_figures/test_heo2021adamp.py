import numpy as np

from paper_figures import heo2021adamp as figure
from studies.cli import main


def test_tiny_study_and_figure(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = ["--scale", "tiny", "--runs-dir", str(runs), "--no-progress", "--out", str(out)]
    assert main(["figures", *args, "--only", "heo2021adamp", "--skip-theory"]) == 0
    frame = figure.load_data(runs, "tiny")
    for ext in ("png", "pdf"):
        assert (out / "heo2021adamp" / f"rosenbrock_sphere.{ext}").stat().st_size > 1000
    table = figure.comparison_table(frame)
    assert list(table["method"]) == ["Momentum", "Momentum + WD", "SGDP"]
    assert np.isfinite(table[["r final (ours)", "r peak (ours)", "paper"]].to_numpy()).all()
    assert (abs(table["ours/paper"] - 1) < 0.1).all()
    assert "heo2021adamp/rosenbrock_sphere.png" in (out / "report.md").read_text()
