import os

import numpy as np
import pytest
import torch

from studies import guan_xgrad as study
from studies.models import make_model
from studies.runner import run_study


def test_tiny_run_records_accuracy_time_and_memory(tmp_path):
    torch.manual_seed(0)
    frame = run_study(study.STUDY, "tiny", root=tmp_path, progress=False)
    assert {"step", "epoch", "quantity", "value", "base", "steps", "seed", "dataset", "epochs"} <= set(frame.columns)
    assert set(frame["base"]) == {"SGDM", "Adam"} and set(frame["steps"]) == {0, 1}
    for quantity in ("test_accuracy", "seconds", "cpu_seconds_per_step", "peak_memory_bytes"):
        values = frame.loc[frame["quantity"] == quantity, "value"]
        assert len(values) and np.isfinite(values).all() and (values >= 0).all(), quantity
    peak = frame[frame["quantity"] == "peak_memory_bytes"].set_index(["base", "steps"])["value"]
    param_bytes = 4 * sum(p.numel() for p in make_model("lenet5", (1, 8, 8), 10).parameters())
    for base in ("SGDM", "Adam"):
        # XGrad keeps one copy of θ_t while the closure runs at θ̂: about one model's worth of extra memory.
        assert param_bytes <= peak[(base, 1)] - peak[(base, 0)] <= 1.1 * param_bytes
    # Adam keeps two moments, SGDM one momentum buffer: one model's worth more state.
    assert peak[("Adam", 0)] - peak[("SGDM", 0)] >= param_bytes


def test_peak_memory_counts_optimizer_state_exactly(capfd):
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def model():
        return make_model("mlp", (1, 8, 8), 10, widths=(32,))

    n = sum(p.numel() for p in model().parameters())
    sgd = study.peak_training_memory(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), x, y)
    sgdm = study.peak_training_memory(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), x, y)
    assert sgdm - sgd == 4 * n  # the momentum buffers, float32
    assert "USDT" not in capfd.readouterr().err  # torch's profiler kept quiet
    assert "KINETO_LOG_LEVEL" not in os.environ


def test_make_optimizer_wraps_only_for_positive_steps():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert type(study.make_optimizer("Adam", 0, params)) is torch.optim.Adam
    assert type(study.make_optimizer("AdaM3", 2, params)).__name__ == "XGrad"
    with pytest.raises(KeyError):
        study.make_optimizer("Lion", 1, params)


def test_paper_scale_is_the_papers_lenet_experiment_and_needs_fashion_mnist(tmp_path, monkeypatch):
    from studies import data
    from studies.runner import Context
    from studies.store import RunStore

    ctx = Context(RunStore(tmp_path, "guan_xgrad", "1"))
    monkeypatch.setenv("VALLEY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="fashion_mnist not found"):
        study.grid("paper", ctx)
    system = tmp_path / "system" / "fashion-mnist"
    system.mkdir(parents=True)
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (system / f"{stem}.gz").write_bytes(b"")
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", (system.parent,))
    configs = study.grid("paper", ctx)
    assert len(configs) == 5 * 2 * 2
    assert {c["dataset"] for c in configs} == {"fashion_mnist"}
    assert {(c["epochs"], c["batch_size"]) for c in configs} == {(50, 128)}
    assert {c["base"] for c in configs} == {"SGDM", "Adam", "AdamW", "AdaBelief", "AdaM3"}
    assert {c["steps"] for c in configs} == {0, 1} and {c["seed"] for c in configs} == {0, 1}
    assert "paper" in study.STUDY.scales
