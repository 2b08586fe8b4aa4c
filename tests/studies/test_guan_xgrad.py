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


def test_peak_memory_counts_optimizer_state_exactly():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))

    def model():
        return make_model("mlp", (1, 8, 8), 10, widths=(32,))

    n = sum(p.numel() for p in model().parameters())
    sgd = study.peak_training_memory(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1), x, y)
    sgdm = study.peak_training_memory(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), x, y)
    assert sgdm - sgd == 4 * n  # the momentum buffers, float32


def test_make_optimizer_wraps_only_for_positive_steps():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert type(study.make_optimizer("Adam", 0, params)) is torch.optim.Adam
    assert type(study.make_optimizer("AdaM3", 2, params)).__name__ == "XGrad"
    with pytest.raises(KeyError):
        study.make_optimizer("Lion", 1, params)
