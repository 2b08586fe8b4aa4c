import numpy as np

from paper_figures import kingma2015adam as figure
from studies.cli import main
from studies.kingma2015adam import OPTIMIZERS


def test_tiny_study_and_figure_end_to_end(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    args = ["--scale", "tiny", "--runs-dir", str(runs), "--no-progress"]
    assert main(["figures", *args, "--out", str(out), "--only", "kingma2015adam", "--skip-theory"]) == 0
    frame = figure.load_data(runs, "tiny")
    assert set(figure.COLUMNS) <= set(frame.columns)
    assert set(frame["optimizer"]) == set(OPTIMIZERS) and set(frame["dropout"]) == {0.0, 0.5}
    losses = frame[frame["quantity"] == "epoch_train_loss"]["value"]
    assert len(losses) == 2 * len(OPTIMIZERS) * 2 and np.isfinite(losses).all()
    for ext in ("png", "pdf"):
        assert (out / "kingma2015adam" / f"loss_curves.{ext}").stat().st_size > 1000
    summary = (out / "kingma2015adam" / "summary.csv").read_text()
    assert "seconds_per_epoch" in summary and "lowest_train_loss" in summary
    report = (out / "report.md").read_text()
    assert "kingma2015adam/loss_curves.png" in report
    made = "Made at the tiny scale on digits. Regenerate: `valley figures --only kingma2015adam --scale tiny`."
    assert made in report
    assert "data:image/png;base64" in (out / "report.html").read_text()


def test_one_initialisation_shared_by_all_optimizers(tmp_path):
    main(["study", "kingma2015adam", "--scale", "tiny", "--runs-dir", str(tmp_path), "--no-progress"])
    frame = figure.load_data(tmp_path, "tiny")
    initial = frame[(frame["quantity"] == "test_loss") & (frame["epoch"] == 0)]["value"]
    assert initial.nunique() == 1  # same weights before training, whatever the optimizer or dropout
    assert len(list((tmp_path / "kingma2015adam" / "artifacts").glob("init-*.pt"))) == 1
