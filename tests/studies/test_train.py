import dataclasses
import functools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape.files import OutputPathError
from studies.data import load_dataset
from studies.models import MLP
from studies.train import amp_default, load_checkpoint, mixed_precision, train


@pytest.fixture(scope="module")
def small_digits():
    return load_dataset("digits").subset(200, 100)


def _run(data, lr=0.05, dropout=0.2, **kwargs):
    return train(
        lambda: MLP(data.input_shape, data.num_classes, widths=(16,), dropout=dropout),
        lambda m: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
        data,
        epochs=kwargs.pop("epochs", 2),
        batch_size=kwargs.pop("batch_size", 32),
        progress=False,
        **kwargs,
    )


def _without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["quantity"] != "seconds"].reset_index(drop=True)


def test_metrics_are_tidy_and_complete(small_digits):
    result = _run(small_digits)
    m = result.metrics
    assert list(m.columns[:4]) == ["step", "epoch", "quantity", "value"]
    per_step = m[m["quantity"] == "train_loss"]
    assert per_step["step"].tolist() == list(range(1, 15))  # 2 epochs of ceil(200 / 32) = 7 steps
    for quantity, epochs in [("test_loss", [0, 1, 2]), ("test_accuracy", [0, 1, 2]), ("seconds", [1, 2])]:
        assert m[m["quantity"] == quantity]["epoch"].tolist() == epochs
    epoch1 = m[(m["quantity"] == "epoch_train_loss") & (m["epoch"] == 1)]["value"].item()
    assert epoch1 == pytest.approx(per_step[per_step["epoch"] == 1]["value"].mean())
    assert not result.diverged


def test_same_seed_gives_identical_metrics(small_digits):
    a, b = _run(small_digits, seed=3), _run(small_digits, seed=3)
    pd.testing.assert_frame_equal(_without_timing(a.metrics), _without_timing(b.metrics))
    c = _run(small_digits, seed=4)
    assert not _without_timing(a.metrics)["value"].equals(_without_timing(c.metrics)["value"])


def test_init_state_fixes_the_starting_point(small_digits):
    torch.manual_seed(123)
    init = MLP(small_digits.input_shape, 10, widths=(16,)).state_dict()
    a = _run(small_digits, seed=1, init_state=init, epochs=0)
    b = _run(small_digits, seed=2, init_state=init, epochs=0)
    pd.testing.assert_frame_equal(a.metrics, b.metrics)
    assert all(torch.equal(a.state_dict[k], init[k]) for k in init)


def test_nan_loss_is_recorded_as_divergence(small_digits):
    result = _run(small_digits, lr=1e12, epochs=3)
    assert result.diverged
    m = result.metrics
    diverged = m[m["quantity"] == "diverged"]
    assert len(diverged) == 1
    first_bad = m[(m["quantity"] == "train_loss") & ~m["value"].map(math.isfinite)]["step"].min()
    assert diverged["step"].item() == first_bad
    stopped = diverged["epoch"].item()
    assert m["epoch"].max() == stopped == 1  # training stopped in the epoch it diverged
    assert stopped not in m[m["quantity"] == "test_loss"]["epoch"].tolist()  # and did not evaluate that epoch


def test_weights_made_non_finite_by_an_epochs_last_step_are_divergence(small_digits):
    """Every step's loss was finite (each is taken before its step), the last step overflowed the weights: the run
    said diverged=False and logged a test accuracy from an arg-max over NaN outputs."""
    n = len(small_digits.y_train)
    result = _run(small_digits, lr=3e38, dropout=0.0, epochs=1, batch_size=n)  # one step per epoch
    m = result.metrics
    assert result.diverged and m[m["quantity"] == "diverged"]["step"].tolist() == [1]
    assert m[m["quantity"] == "train_loss"]["value"].map(math.isfinite).all()
    epoch_one = m[m["epoch"] == 1].set_index("quantity")["value"]
    assert not math.isfinite(epoch_one["test_loss"]) and math.isnan(epoch_one["test_accuracy"])


def test_callbacks_see_every_step_and_can_log(small_digits):
    class Counter:
        def __init__(self):
            self.calls = []

        def on_train_begin(self, state):
            self.calls.append("begin")

        def on_step_end(self, state):
            state.log("lr", state.optimizer.param_groups[0]["lr"], group=0)
            assert math.isfinite(state.loss)

        def on_epoch_end(self, state):
            self.calls.append(f"epoch{state.epoch}")

        def on_train_end(self, state):
            self.calls.append("end")

    counter = Counter()
    m = _run(small_digits, callbacks=[counter]).metrics
    assert counter.calls == ["begin", "epoch1", "epoch2", "end"]
    lr_rows = m[m["quantity"] == "lr"]
    assert lr_rows["step"].tolist() == list(range(1, 15)) and set(lr_rows["group"]) == {0}


def test_checkpoints_round_trip_with_weights_only(small_digits, tmp_path):
    result = _run(small_digits, checkpoint_dir=tmp_path, checkpoint_epochs=[0, 2])
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["epoch0000.pt", "epoch0002.pt"]
    ckpt = load_checkpoint(tmp_path / "epoch0002.pt")
    assert ckpt["epoch"] == 2 and ckpt["step"] == 14
    assert all(torch.equal(ckpt["model"][k], v) for k, v in result.state_dict.items())
    assert "momentum_buffer" in ckpt["optimizer"]["state"][0]


def test_checkpoints_never_replace_files_valley_did_not_write(small_digits, tmp_path, monkeypatch):
    """A user's own epoch0002.pt was replaced without a word; a checkpoint_dir that is a file failed only after
    training. Both are refused before the first step; a rerun into valley's own checkpoints is fine."""
    monkeypatch.setattr(torch.optim.SGD, "step", lambda *a, **k: pytest.fail("training started"))
    (tmp_path / "epoch0002.pt").write_bytes(b"my own weights")
    with pytest.raises(OutputPathError, match="epoch0002.pt: exists and is not a checkpoint valley wrote"):
        _run(small_digits, checkpoint_dir=tmp_path, checkpoint_epochs=[2])
    assert (tmp_path / "epoch0002.pt").read_bytes() == b"my own weights"
    with pytest.raises(OutputPathError):
        _run(small_digits, checkpoint_dir=tmp_path / "epoch0002.pt")
    monkeypatch.undo()
    for _ in range(2):
        _run(small_digits, checkpoint_dir=tmp_path / "ours", checkpoint_epochs=[2])
    assert load_checkpoint(tmp_path / "ours" / "epoch0002.pt")["epoch"] == 2


class Payload:
    """Any class: unpickling it would run code from the file."""


def test_loading_an_arbitrary_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": Payload()}, path)
    with pytest.raises(ValueError, match="Refusing to load"):
        load_checkpoint(path)


def test_invalid_arguments(small_digits):
    with pytest.raises(ValueError, match="batch_size: 0"):
        train(lambda: MLP((1, 8, 8), 10), lambda m: torch.optim.SGD(m.parameters(), 0.1), small_digits, epochs=1,
              batch_size=0)  # fmt: skip
    with pytest.raises(ValueError, match="checkpoint_dir"):
        _run(small_digits, checkpoint_epochs=[1])


def _linear_float64(data):
    def factory():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()

    double = dataclasses.replace(data, x_train=data.x_train.double(), x_test=data.x_test.double())
    return factory, double


def test_l2_regularizer_equals_weight_decay_for_plain_sgd(small_digits):
    c, lr = 0.05, 0.1
    factory, data = _linear_float64(small_digits)
    run = functools.partial(train, factory, data=data, epochs=2, batch_size=32, progress=False, seed=1)
    penalty = lambda m: c * sum(p.square().sum() for p in m.parameters())  # noqa: E731
    reg = run(lambda m: torch.optim.SGD(m.parameters(), lr=lr), regularizer=penalty)
    decay = run(lambda m: torch.optim.SGD(m.parameters(), lr=lr, weight_decay=2 * c))
    # θ ← θ − γ(∇L + ∇(c‖θ‖²)) = θ − γ(∇L + 2cθ): the weight-decay step of SGD, up to float64 rounding.
    for name, value in decay.state_dict.items():
        torch.testing.assert_close(reg.state_dict[name], value, rtol=1e-12, atol=1e-14)
    m_reg, m_decay = reg.metrics, decay.metrics
    for quantity in ("train_loss", "test_loss", "test_accuracy"):  # data loss and evaluation exclude the penalty
        a = m_reg.loc[m_reg["quantity"] == quantity, "value"].to_numpy()
        b = m_decay.loc[m_decay["quantity"] == quantity, "value"].to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-12)
    torch.manual_seed(1)
    theta0 = factory().state_dict()
    logged = m_reg[m_reg["quantity"] == "regularizer"]
    assert logged["step"].tolist() == list(range(1, 15)) and "regularizer" not in set(m_decay["quantity"])
    hand = c * sum(float(t.square().sum()) for t in theta0.values())
    assert logged["value"].iloc[0] == pytest.approx(hand, rel=1e-14)
    x, y = data.x_test, data.y_test
    first_test = m_reg[(m_reg["quantity"] == "test_loss") & (m_reg["epoch"] == 0)]["value"].item()
    w, b = theta0["1.weight"], theta0["1.bias"]
    assert first_test == pytest.approx(float(F.cross_entropy(x.flatten(1) @ w.T + b, y)), rel=1e-12)
    with pytest.raises(TypeError, match="regularizer"):
        run(lambda m: torch.optim.SGD(m.parameters(), lr=lr), regularizer=1.0)


def test_amp_trains_in_bfloat16_with_float32_weights_and_full_precision_evaluation(small_digits):
    dtypes = set()

    class Dtypes:
        def on_step_end(self, state):  # runs once per step, outside the closure: no autocast here
            params = list(state.model.parameters())
            dtypes.update(str(t.dtype) for t in params + [p.grad for p in params])
            dtypes.update(str(s["momentum_buffer"].dtype) for s in state.optimizer.state.values())

    full = _run(small_digits, epochs=1, dropout=0.0)
    mixed = _run(small_digits, epochs=1, dropout=0.0, amp=True, callbacks=[Dtypes()])
    assert dtypes == {"torch.float32"}
    assert all(t.dtype == torch.float32 for t in mixed.state_dict.values())
    a, b = (r.metrics for r in (full, mixed))
    loss_a = a.loc[a["quantity"] == "train_loss", "value"].to_numpy()
    loss_b = b.loc[b["quantity"] == "train_loss", "value"].to_numpy()
    # bfloat16 keeps 8 significant bits: inputs and weights are rounded by at most 2^-9 ≈ 2e-3 relative, and the
    # cross-entropy moves by at most the logits' error. Over 7 steps we allow 1e-2 relative (measured: <= 6e-4).
    assert np.isfinite(loss_b).all() and not np.array_equal(loss_a, loss_b)  # autocast really ran
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-2)
    test_a = a.loc[(a["quantity"] == "test_loss") & (a["epoch"] == 0), "value"].item()
    test_b = b.loc[(b["quantity"] == "test_loss") & (b["epoch"] == 0), "value"].item()
    assert test_a == test_b  # same initial weights, evaluation never under autocast
    with mixed_precision(True):
        assert amp_default()
        explicit = _run(small_digits, epochs=1, dropout=0.0, amp=False).metrics  # amp=False wins over the default
    np.testing.assert_array_equal(explicit.loc[explicit["quantity"] == "train_loss", "value"].to_numpy(), loss_a)
    with pytest.raises(TypeError, match="'yes'|str"):
        _run(small_digits, epochs=0, amp="yes")


def test_hot_loop_reads_the_device_once_per_epoch_with_amp_and_a_regularizer(small_digits, monkeypatch):
    """Host reads of tensor values (what synchronises a GPU) do not grow with the number of steps per epoch."""
    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda t, *a, _f=original, _n=name, **k: reads.append(_n) or _f(t, *a, **k)
        )

    def count(batch_size: int) -> dict[str, int]:
        reads.clear()
        penalty = lambda m: 1e-3 * sum(p.square().sum() for p in m.parameters())  # noqa: E731
        result = _run(small_digits, epochs=1, batch_size=batch_size, amp=True, regularizer=penalty)
        assert (result.metrics["quantity"] == "train_loss").sum() == -(-200 // batch_size)
        return {name: reads.count(name) for name in set(reads)}

    assert count(100) == count(10)  # 2 steps vs 20 steps


def test_channels_last_trains_the_same_cnn_up_to_rounding(small_digits):
    data = dataclasses.replace(
        small_digits, x_train=small_digits.x_train.reshape(-1, 1, 8, 8), x_test=small_digits.x_test.reshape(-1, 1, 8, 8)
    )

    def run(channels_last: bool):
        return train(
            lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 10)),
            lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
            data, epochs=2, batch_size=32, progress=False, channels_last=channels_last,
        )  # fmt: skip

    plain, last = run(False), run(True)
    assert last.state_dict["2.weight"].is_contiguous(memory_format=torch.channels_last)
    for key, value in plain.state_dict.items():
        torch.testing.assert_close(last.state_dict[key], value, rtol=1e-4, atol=1e-5)
    a, b = _without_timing(plain.metrics), _without_timing(last.metrics)
    np.testing.assert_allclose(b["value"], a["value"], rtol=1e-4, atol=1e-5)
