"""The fast surface evaluator's ways (vmap, first-layer trick, channels-last loop) against the reference loop."""

import numpy as np
import pytest
import torch
from torch import nn

from landscape import _fast
from landscape._evaluation import LoopEvaluator, cross_entropy, top1_accuracy
from landscape._fast import FastEvaluator
from landscape.directions import random_direction
from landscape.surfaces import make_grid, surface_2d
from studies.models import ResNet, make_model

WHOLE = _fast.PIECE_BYTES  # the default: the test batches are small enough to go through whole


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(54, 3)
    ).eval()


def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = ResNet((1, 8, 8), 3, blocks=1, widths=(4, 6, 8))
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm running statistics
        model(torch.randn(32, 1, 8, 8))
    return model.eval()


def problem(make, n=24):
    model = make()
    shape = (1, 10, 10) if make is small_cnn else (1, 8, 8)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(2)]
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = [random_direction(model, "filter", seed=s) for s in (2, 3)]
    coords = torch.tensor([[a, b] for a in (-1.0, 0.0, 0.5) for b in (-0.5, 0.0, 1.0)], dtype=torch.float64)
    return model, origin, directions, batches, coords


@pytest.mark.parametrize("make", [small_cnn, resnet])
@pytest.mark.parametrize("strategy", ["vmap", "loop", "auto"])
@pytest.mark.parametrize("piece_bytes", [WHOLE, 8000])
def test_every_way_equals_the_reference_loop(make, strategy, piece_bytes, monkeypatch):
    """Each way, with batches whole or (``piece_bytes=8000``) cut into pieces of a few examples, equals the loop."""
    monkeypatch.setattr(_fast, "PIECE_BYTES", piece_bytes)
    model, origin, directions, batches, coords = problem(make)
    args = (model, origin, directions, batches, cross_entropy, top1_accuracy)
    reference = LoopEvaluator(*args)(coords)
    fast = FastEvaluator(*args, strategy=strategy)
    loss, acc = fast(coords)
    np.testing.assert_allclose(loss.numpy(), reference[0].numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(acc.numpy(), reference[1].numpy(), rtol=0, atol=1e-12)
    loop = "loop+channels_last+first_layer" + ("" if piece_bytes == WHOLE else f"+pieces_of_{fast.piece}")
    expected = {"vmap": ("vmap+first_layer",), "loop": (loop,)}
    expected["auto"] = expected["vmap"] + expected["loop"]
    assert fast.name in expected[strategy]
    if strategy != "vmap":
        assert (fast.piece is None) == (piece_bytes == WHOLE)
        if fast.piece is not None:
            assert 1 < fast.piece < 24
    if strategy == "auto":
        assert set(fast.calibration) == {"vmap", "loop"} and fast.strategy in ("vmap", "loop")
        # the way chosen is the one measured faster
        assert fast.calibration[fast.strategy] == min(fast.calibration.values())


def test_calibration_is_recorded_and_mlps_keep_vmap(monkeypatch):
    model, origin, directions, batches, _ = problem(small_cnn)
    ticks = iter([0.0, 5.0, 5.0, 6.0])
    monkeypatch.setattr(_fast, "_clock", lambda _device: next(ticks))  # vmap 5 s, loop 1 s for their point
    grid = make_grid(-1, 1, 3)
    data = batches[0]
    surface = surface_2d(model, data, directions, grid, grid, progress=False)
    assert surface.config["evaluator"] == "loop+channels_last+first_layer"
    assert surface.config["evaluator_calibration"] == pytest.approx({"vmap": 5.0, "loop": 1.0})
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    flat = surface_2d(mlp, (x, y), [random_direction(mlp, seed=s) for s in (1, 2)], grid, grid, progress=False)
    assert flat.config["evaluator"] == "chain+first_layer" and flat.config["evaluator_calibration"] == {}


def test_invalid_strategy():
    model, origin, directions, batches, _ = problem(small_cnn)
    with pytest.raises(ValueError, match="strategy"):
        FastEvaluator(model, origin, directions, batches, cross_entropy, top1_accuracy, strategy="fastest")


# ---------------------------------------------------------------- the layer chain, batched scores, pieces


class _Residual(nn.Module):
    """A skip connection after the first layer: not a chain (the vmap path must serve it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.out(h + torch.tanh(self.fc2(h)))


def _mlps() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "relu": nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)),
        "deep": nn.Sequential(
            nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 4, bias=False), nn.GELU(), nn.Dropout(0.5), nn.Linear(4, 3)
        ),
        "study": make_model("mlp", (6,), 3, widths=(8, 5), dropout=0.3),  # F.relu and a dropout module
        "activation_last": nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.Softplus()),
        "one_layer": nn.Sequential(nn.Linear(6, 3), nn.ReLU()),  # the chain after the first layer is one relu
        "residual": _Residual(),
    }


@pytest.mark.parametrize("name", ["relu", "deep", "study", "activation_last", "one_layer", "residual"])
@pytest.mark.parametrize("dims", [1, 2])
def test_layer_chain_equals_the_reference_loop(name, dims, monkeypatch):
    monkeypatch.setattr(_fast, "CHAIN_PASS_BYTES", 200)  # a few points per pass: passes are joined correctly
    model = _mlps()[name].eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (9, 4)]
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = [random_direction(model, "filter", bias_bn="keep", seed=s) for s in range(dims)]
    directions[0] = {k: v for k, v in directions[0].items() if not k.endswith("bias")}  # names a direction omits
    coords = torch.linspace(-1, 1, 7, dtype=torch.float64)[:, None].repeat(1, dims) * torch.tensor([1.0, -0.5][:dims])
    args = (model, origin, directions, batches, cross_entropy, top1_accuracy)
    fast = FastEvaluator(*args)
    assert fast.name == ("vmap+first_layer" if name == "residual" else "chain+first_layer")
    loss, acc = fast(coords)
    reference = LoopEvaluator(*args)(coords)
    np.testing.assert_allclose(loss.numpy(), reference[0].numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(acc.numpy(), reference[1].numpy(), rtol=0, atol=1e-12)


def test_layer_chain_with_another_loss_calls_it_per_point():
    model = _mlps()["relu"].eval()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = [random_direction(model, seed=1)]
    coords = torch.tensor([[-1.0], [0.0], [0.7]], dtype=torch.float64)

    def margin(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (out.max(dim=1).values - out.gather(1, t[:, None])[:, 0]).mean()

    args = (model, origin, directions, [(x, y)], margin, top1_accuracy)
    fast = FastEvaluator(*args)
    assert fast.name == "chain+first_layer"
    np.testing.assert_allclose(fast(coords)[0].numpy(), LoopEvaluator(*args)(coords)[0].numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("ignored", [0, 3, 8])
def test_stacked_scores_equal_the_single_point_functions(ignored, shared):
    """Targets as one row expanded (prepared once) or as a full (points, B) tensor give the same scores."""
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(5, 8, 4, generator=g) * 3
    outputs[2, 1] = outputs[2, 1, 0]  # a tie: arg-max takes the first
    outputs[3, 7] = torch.tensor([5.0, 1.0, 5.0, 0.0])  # a tie of two at the top, the target the second of them
    targets = torch.randint(0, 4, (8,), generator=g)
    targets[7] = 2
    targets[:ignored] = -100
    rows = targets.expand(5, -1) if shared else targets.expand(5, -1).clone()
    prepared = _fast.ScoringTargets.of(outputs, rows)
    assert prepared.targets.dim() == (1 if shared else 2)
    loss, acc = _fast.stacked_scores(outputs, prepared if shared else rows)
    for g_, out in enumerate(outputs):
        expected_loss = cross_entropy(out, targets)
        assert torch.isnan(loss[g_]) if ignored == 8 else abs(float(loss[g_] - expected_loss)) < 1e-6
        expected_acc = top1_accuracy(out, targets)
        assert torch.isnan(acc[g_]) if ignored == 8 else float(acc[g_]) == float(expected_acc)
    with pytest.raises(ValueError, match="out of range"):
        _fast.stacked_scores(outputs, torch.full((5, 8), 4))


def test_one_channel_images_get_channels_last_strides():
    x = torch.randn(3, 1, 5, 5)
    cl = _fast.channels_last(x)
    assert torch.equal(cl, x) and cl.stride(1) == 1
    out = nn.functional.conv2d(cl, torch.randn(4, 1, 3, 3).contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()


class _BatchMixing(nn.Module):
    """Subtracts the batch mean: its outputs depend on which examples share a batch, so pieces must be refused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.fc((h - h.mean(dim=0, keepdim=True)).flatten(1))


def test_pieces_refused_where_the_model_mixes_examples(monkeypatch):
    monkeypatch.setattr(_fast, "PIECE_BYTES", 300)
    torch.manual_seed(0)
    model = _BatchMixing().eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(12, 1, 6, 6, generator=g), torch.randint(0, 3, (12,), generator=g))]
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = [random_direction(model, seed=s) for s in (1, 2)]
    coords = torch.tensor([[0.0, 0.0], [1.0, -0.5]], dtype=torch.float64)
    args = (model, origin, directions, batches, cross_entropy, top1_accuracy)
    fast = FastEvaluator(*args, strategy="loop")
    assert fast.piece is None and "pieces" not in fast.name
    np.testing.assert_allclose(fast(coords)[0].numpy(), LoopEvaluator(*args)(coords)[0].numpy(), rtol=0, atol=2e-6)


def test_stacked_scores_check_every_row_and_widen_small_integer_targets():
    """Targets given row by row are range-checked in every row (a -5 in the second was scored as class 0), and
    uint8 targets give the scores of int64 ones (the offsets y_i B + i overflowed uint8)."""
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(2, 100, 40, generator=g)
    targets = torch.randint(0, 40, (100,), generator=g)
    expected = _fast.stacked_scores(outputs, targets.expand(2, -1))
    for found in (
        _fast.stacked_scores(outputs, targets.to(torch.uint8).expand(2, -1)),
        _fast.stacked_scores(outputs, targets.to(torch.uint8).expand(2, -1).clone()),
    ):
        torch.testing.assert_close(found, expected, rtol=0, atol=0)
    rows = targets.expand(2, -1).clone()
    rows[1, 3] = -5
    with pytest.raises(ValueError, match="out of range"):
        _fast.stacked_scores(outputs, rows)


def _chain_problem(out_features=3, first_batch=8):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, out_features)).eval()
    g = torch.Generator().manual_seed(1)
    targets = (lambda n: torch.randn(n, 1, generator=g)) if out_features == 1 else None
    batches = [
        (torch.randn(n, 6, generator=g), targets(n) if targets else torch.randint(0, 3, (n,), generator=g))
        for n in (first_batch, 5)
    ]
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = [random_direction(model, "filter", seed=s) for s in (2, 3)]
    coords = torch.tensor([[a, b] for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.5)], dtype=torch.float64)
    return model, origin, directions, batches, coords


def test_a_chain_whose_first_call_has_one_point_scores_later_calls_point_by_point():
    """The targets prepared on a first call of one point serve every later call (they were kept as one point's)."""
    model, origin, directions, batches, coords = _chain_problem()
    args = (model, origin, directions, batches, cross_entropy, top1_accuracy)
    fast = FastEvaluator(*args)
    assert fast.name == "chain+first_layer"
    first, rest = fast(coords[:1]), fast(coords[1:])
    reference = LoopEvaluator(*args)(coords)
    np.testing.assert_allclose(torch.cat([first[0], rest[0]]).numpy(), reference[0].numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(torch.cat([first[1], rest[1]]).numpy(), reference[1].numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("first_batch", [1, 8])
def test_a_chain_with_targets_of_two_dimensions_and_another_loss_equals_the_loop(first_batch):
    """(B, 1) regression targets with mse_loss, the first batch of one example or more: each batch's targets are
    expanded whole for the per-point loss (they were cut to their first dimension: wrong losses or an error)."""
    model, origin, directions, batches, coords = _chain_problem(out_features=1, first_batch=first_batch)
    args = (model, origin, directions, batches, nn.functional.mse_loss, lambda out, y: torch.zeros(()))
    fast = FastEvaluator(*args)
    loss = fast(coords)[0]
    np.testing.assert_allclose(loss.numpy(), LoopEvaluator(*args)(coords)[0].numpy(), rtol=0, atol=2e-6)


def test_stacked_scores_of_non_finite_outputs_equal_the_single_point_functions():
    """Scores with inf or NaN give the values (NaN where NaN) and the hits of the functions point by point."""
    g = torch.Generator().manual_seed(0)
    outputs = torch.randn(4, 6, 3, generator=g)
    outputs[1, 2, 1] = float("inf")
    outputs[2, 0, 0] = float("nan")  # arg-max takes a NaN: a hit for target 0
    outputs[3, 3] = float("-inf")  # all equal: arg-max takes class 0, a miss for target 1
    targets = torch.tensor([0, 1, 2, 1, 0, 2])
    loss, acc = _fast.stacked_scores(outputs, targets.expand(4, -1))
    for g_, out in enumerate(outputs):
        expected = torch.stack([cross_entropy(out, targets), top1_accuracy(out, targets)])
        torch.testing.assert_close(torch.stack([loss[g_], acc[g_]]), expected, equal_nan=True, rtol=0, atol=1e-6)


def test_calibration_evaluates_real_points_and_keeps_their_results(monkeypatch):
    """Each way is timed on its own points of the first call (vmap first), the faster does the rest; one point waits."""
    model, origin, directions, batches, coords = problem(small_cnn)
    args = (model, origin, directions, batches, cross_entropy, top1_accuracy)
    fast = FastEvaluator(*args)
    calls = []
    evaluate = fast._evaluate
    monkeypatch.setattr(fast, "_evaluate", lambda way, c: calls.append((way, c.tolist())) or evaluate(way, c))
    monkeypatch.setattr(_fast, "CALIBRATION_POINTS", 2)
    ticks = iter([0.0, 4.0, 4.0, 5.0])  # vmap 4 s, the loop 1 s for their two points
    monkeypatch.setattr(_fast, "_clock", lambda _device: next(ticks))
    single = fast(coords[:1])
    assert fast.strategy == "auto" and calls == [("loop", coords[:1].tolist())]
    calls.clear()
    loss, acc = fast(coords[1:])
    rest = coords[1:]
    assert calls == [("vmap", rest[:2].tolist()), ("loop", rest[2:4].tolist()), ("loop", rest[4:].tolist())]
    assert fast.strategy == "loop" and fast.calibration == pytest.approx({"vmap": 2.0, "loop": 0.5})
    assert not [key for key in fast._parts if key[0] != "loop"]  # vmap's first-layer products were let go
    reference = LoopEvaluator(*args)(coords)
    np.testing.assert_allclose(torch.cat([single[0], loss]).numpy(), reference[0].numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(torch.cat([single[1], acc]).numpy(), reference[1].numpy(), rtol=0, atol=1e-12)


def test_a_layer_chain_is_planned_without_vmap(monkeypatch):
    """An MLP's chain is checked against the loop: vmap (slow to start) is never called for it."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("vmap called")

    monkeypatch.setattr(_fast, "vmap", refuse)
    model = _mlps()["relu"].eval()
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    origin = {n: p.detach().clone() for n, p in model.named_parameters()}
    directions = [random_direction(model, seed=s) for s in (1, 2)]
    fast = FastEvaluator(model, origin, directions, [(x, y)], cross_entropy, top1_accuracy)
    assert fast.name == "chain+first_layer"
    coords = torch.tensor([[0.0, 0.0], [0.5, -1.0]], dtype=torch.float64)
    reference = LoopEvaluator(model, origin, directions, [(x, y)], cross_entropy, top1_accuracy)(coords)
    np.testing.assert_allclose(fast(coords)[0].numpy(), reference[0].numpy(), rtol=0, atol=2e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stacked_scores_in_half_precision_round_as_the_single_point_functions(dtype):
    """Half-precision scores are scored in float32 and rounded once, as torch's log-softmax does."""
    g = torch.Generator().manual_seed(0)
    outputs = (torch.randn(20, 200, 5, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 5, (200,), generator=g)
    loss, acc = _fast.stacked_scores(outputs, targets.expand(20, -1))
    assert loss.dtype == dtype
    for g_, out in enumerate(outputs):
        assert abs(float(loss[g_]) - float(cross_entropy(out, targets))) < 1e-4
        assert float(acc[g_]) == float(top1_accuracy(out, targets))


@pytest.mark.parametrize("ignored", [False, True])
def test_half_precision_accuracy_and_loss_past_256_examples_are_the_fraction_rounded(ignored):
    """bfloat16 holds integers exactly only up to 256: counted in it, 257 hits of 300 became 256 (and 257 valid
    examples 256), a rounding step or more off. Both paths divide in float32 and round the fraction; the loss too
    (torch's own counts the valid targets in bfloat16)."""
    n, hits = 300, 257
    targets = torch.zeros(n, dtype=torch.long)
    outputs = torch.zeros(n, 2)
    outputs[:hits, 0] = 1.0  # class 0 wins for the first 257 examples, class 1 for the rest
    outputs[hits:, 1] = 1.0
    if ignored:
        targets[-3:] = -100  # ignored misses: 257 hits of 297
    valid = n - 3 * ignored
    expected = torch.tensor(hits / valid).to(torch.bfloat16)
    out16 = outputs.to(torch.bfloat16)
    assert top1_accuracy(out16, targets) == expected
    loss, acc = _fast.stacked_scores(out16[None].expand(2, -1, -1), targets.expand(2, -1))
    assert acc.tolist() == [float(expected)] * 2
    terms = -torch.log_softmax(outputs, dim=1).to(torch.bfloat16).double()[torch.arange(n), targets.clamp(min=0)]
    expected_loss = float(terms[targets >= 0].mean().to(torch.bfloat16))  # bfloat16 terms, their mean rounded once
    assert float(cross_entropy(out16, targets)) == expected_loss
    assert loss.tolist() == [expected_loss] * 2


def test_default_loss_widens_small_integer_targets_and_names_a_shape_mismatch():
    """uint8/int16 targets ended in gather's "Expected dtype int32/int64 for index", (N, 1) targets in "Index tensor
    must have the same number of dimensions" (after the fast path had warned and fallen back to the loop)."""
    g = torch.Generator().manual_seed(0)
    outputs, targets = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    expected = torch.nn.functional.cross_entropy(outputs, targets)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        assert torch.allclose(cross_entropy(outputs, targets.to(dtype)), expected, rtol=1e-6)
    with pytest.raises(ValueError, match=r"targets of shape \(N, 1\) for outputs of shape \(N, 3\).*\(N,\)$"):
        cross_entropy(outputs, targets[:, None])
    with pytest.raises(ValueError, match=r"targets of shape \(5,\) for 6 examples"):
        cross_entropy(outputs, targets[:5])
