"""The README's tour runs as written (the study example is left out: it trains for a minute)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_tour_blocks() -> None:
    assert len(BLOCKS) == 2
    assert "run_study" in BLOCKS[0] and "import landscape" in BLOCKS[1]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_own_model_tour_runs() -> None:
    namespace: dict = {}
    exec(compile(BLOCKS[1], str(README), "exec"), namespace)
    assert namespace["surface"].shape == (21 * 21, 4)
    assert namespace["surface"]["loss"].notna().all()
    assert namespace["result"].diverged is False
