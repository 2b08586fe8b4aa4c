"""The README's tour runs as written (the study example is left out: it trains for a minute)."""

import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_tour_blocks() -> None:
    assert len(BLOCKS) == 3
    assert "run_study" in BLOCKS[0] and "class SmallCNN(nn.Module)" in BLOCKS[1] and "checkpoint_dir" in BLOCKS[2]


def test_readme_names_only_files_of_the_repository() -> None:
    root = README.parent
    for link in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        if not link.startswith("http"):
            assert (root / link).exists(), link
    text = README.read_text()
    for note in ("DESIGN.md", "SPEC_OPTIM", "THEORY.md", "STYLE.md", "../shared"):
        assert note not in text


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_make_targets_named_in_the_readme_exist_and_name_existing_paths() -> None:
    root = README.parent
    makefile = (root / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    named = set(re.findall(r"`(?:sudo )?make ([\w-]+)", README.read_text()))
    assert named and named <= targets, named - targets
    for path in re.findall(r"\b((?:tests|benchmarks|optim|landscape|studies|theory)/[\w/.]+\.py)", makefile):
        assert (root / path).exists(), path


def test_own_model_tour_runs() -> None:
    import matplotlib.pyplot as plt
    import torch

    namespace: dict = {}
    exec(compile(BLOCKS[1], str(README), "exec"), namespace)
    surface, model, x, y = namespace["surface"], namespace["model"], namespace["x"], namespace["y"]
    assert surface.loss.shape == (11, 11) and np.isfinite(surface.loss).all()
    with torch.no_grad():  # the centre of the surface is the trained model
        direct = float(torch.nn.functional.cross_entropy(model(x), y))
    assert surface.at_origin() == pytest.approx(direct, rel=1e-5)
    assert namespace["line"].alphas[0] == -0.5 and {0.0, 1.0} <= set(namespace["line"].alphas)
    assert namespace["barrier"]["loss_a"] == pytest.approx(namespace["line"].loss[namespace["line"].alphas == 0][0])
    assert set(namespace["steps"]["param"]) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "head.weight",
                                                "head.bias"}  # fmt: skip
    metrics = namespace["metrics"]
    assert metrics.query("quantity == 'effective_step'")["step"].max() == 3 * 4  # 256 examples / 64, 3 epochs
    assert len(repr(surface)) < 200 and len(repr(namespace["eigen"])) < 200
    plt.close("all")


def test_checkpoint_recipe_writes_the_last_epoch(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(BLOCKS[2], str(README), "exec"), namespace)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch0002.pt"]
    assert namespace["result"].diverged is False
