import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from landscape._grid import SurfaceJob
from landscape.cache import CacheWarning
from landscape.directions import random_direction
from landscape.surfaces import Surface, interpolate_1d, make_grid, surface_1d, surface_2d


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def cnn(seed: int = 0, bn_eps: float = 1e-5) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, eps=bn_eps), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, 1, 6, 6))
    return model


def classification(n: int, shape: tuple, classes: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def pair(model: nn.Module, seed: int = 10) -> list[dict]:
    return [random_direction(model, seed=seed), random_direction(model, seed=seed + 1)]


# ---------------------------------------------------------------- fast path vs reference loop


@pytest.mark.parametrize(
    ("make", "shape", "evaluator"),
    [
        (mlp, (3, 4), "chain+first_layer"),
        (cnn, (1, 6, 6), "calibrated"),  # a conv model: vmap or channels-last loop, whichever is faster
        (lambda: nn.Sequential(nn.LayerNorm(12), nn.Linear(12, 4)), (12,), "vmap"),
    ],
)
def test_fast_surface_equals_loop_surface(make, shape, evaluator):
    model = make()
    model.eval()
    data = classification(40, shape, 3)
    dirs = pair(model)
    alphas, betas = make_grid(-1, 1, 7), make_grid(-0.5, 1.5, 4)
    kw = dict(batch_size=16, chunk_size=5, progress=False)
    fast = surface_2d(model, data, dirs, alphas, betas, method="fast", **kw)
    loop = surface_2d(model, data, dirs, alphas, betas, method="loop", **kw)
    calibrated = ("vmap+first_layer", "loop+channels_last+first_layer")
    assert fast.config["evaluator"] in (calibrated if evaluator == "calibrated" else (evaluator,))
    assert loop.config["evaluator"] == "loop"
    assert fast.loss.shape == (7, 5)
    np.testing.assert_allclose(fast.loss, loop.loss, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast.accuracy, loop.accuracy, atol=1e-12, rtol=0)
    no_trick = surface_2d(model, data, dirs, alphas, betas, first_layer_trick=False, **kw)
    assert no_trick.config["evaluator"] in (("vmap", "loop+channels_last") if evaluator == "calibrated" else ("vmap",))
    np.testing.assert_allclose(no_trick.loss, loop.loss, atol=1e-6, rtol=0)
    fast_1d = surface_1d(model, data, dirs[0], alphas, **kw)
    loop_1d = surface_1d(model, data, dirs[0], alphas, method="loop", **kw)
    np.testing.assert_allclose(fast_1d.loss, loop_1d.loss, atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast_1d.loss, loop.loss[:, list(betas).index(0.0)], atol=1e-6, rtol=0)


def test_trick_refused_where_first_layer_is_reused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return self.fc(torch.tanh(self.fc(x)))

    torch.manual_seed(0)
    model, data = Twice(), classification(20, (5,), 5)
    fast = surface_2d(model, data, pair(model), [-1, 0, 1], [0, 1], progress=False)
    loop = surface_2d(model, data, pair(model), [-1, 0, 1], [0, 1], method="loop", progress=False)
    assert fast.config["evaluator"] == "vmap"
    np.testing.assert_allclose(fast.loss, loop.loss, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- geometry on a quadratic


class Quadratic(nn.Module):
    """L(w) = 1/2 (w - c)^T H (w - c) for every example; the model output is the per-example loss."""

    def __init__(self, h: torch.Tensor, c: torch.Tensor, w: torch.Tensor):
        super().__init__()
        self.register_buffer("h", h)
        self.register_buffer("c", c)
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        r = self.w - self.c
        return (0.5 * r @ self.h @ r).expand(len(x))


def mean_output(outputs, targets):
    return outputs.mean()


@pytest.mark.parametrize("method", ["fast", "loop"])
def test_quadratic_slice_is_the_exact_paraboloid_on_a_non_square_grid(method):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    h = a @ a.T + torch.eye(4, dtype=torch.float64)
    c = torch.randn(4, generator=g, dtype=torch.float64)
    w0 = torch.randn(4, generator=g, dtype=torch.float64)
    model = Quadratic(h, c, w0)
    d1, d2 = torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)
    alphas = np.array([-1.0, -0.25, 0.0, 0.5, 2.0])  # asymmetric, 5 x 3
    betas = np.array([-2.0, 0.0, 0.75])
    data = (torch.zeros(3, 1), torch.zeros(3))
    s = surface_2d(
        model,
        data,
        [{"w": d1}, {"w": d2}],
        alphas,
        betas,
        loss_fn=mean_output,
        method=method,
        chunk_size=4,
        progress=False,
    )
    grad = h @ (w0 - c)
    l0 = float(0.5 * (w0 - c) @ h @ (w0 - c))
    expected = np.empty((5, 3))
    for i, al in enumerate(alphas):
        for j, be in enumerate(betas):
            expected[i, j] = (
                l0
                + al * float(grad @ d1)
                + be * float(grad @ d2)
                + 0.5 * (al**2 * float(d1 @ h @ d1) + 2 * al * be * float(d1 @ h @ d2) + be**2 * float(d2 @ h @ d2))
            )
    np.testing.assert_allclose(s.loss, expected, rtol=1e-12, atol=1e-12)
    assert s.at_origin() == pytest.approx(l0, rel=1e-14)
    frame = s.frame()
    row = frame[(frame.alpha == 2.0) & (frame.beta == -2.0)]
    assert row.loss.item() == pytest.approx(expected[4, 0], rel=1e-12)
    assert np.isnan(s.accuracy).all()
    with pytest.raises(ValueError, match="origin"):
        surface_1d(model, data, {"w": d1}, [0.5, 1.0], loss_fn=mean_output, progress=False).at_origin()


def test_make_grid():
    assert make_grid(-1, 1, 51)[25] == 0.0
    assert 0.0 in make_grid(-1, 2, 4)
    assert len(make_grid(-1, 2, 4, include_zero=False)) == 4
    with pytest.raises(ValueError, match="n: 0"):
        make_grid(-1, 1, 0)
    with pytest.raises(ValueError, match="range"):
        make_grid(1, -1, 3)


# ---------------------------------------------------------------- caller's model left as it was


def snapshot(model):
    return (
        [(p, p.detach().clone(), p.requires_grad, p.grad) for p in model.parameters()],
        [b.detach().clone() for b in model.buffers()],
        [m.training for m in model.modules()],
    )


def assert_unchanged(model, snap):
    params, buffers, modes = snap
    for (p, value, requires_grad, grad), q in zip(params, model.parameters(), strict=True):
        assert p is q and torch.equal(q, value) and q.requires_grad == requires_grad and q.grad is grad
    for b, value in zip(model.buffers(), buffers, strict=True):
        assert torch.equal(b, value)
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize(("method", "bn"), [("fast", "saved"), ("loop", "saved"), ("loop", "recompute")])
def test_model_state_restored_exactly(method, bn):
    model = cnn()
    model.train()
    model[4].eval()  # mixed modes must come back as they were
    model[0].bias.requires_grad_(False)
    model[4].weight.grad = torch.ones_like(model[4].weight)
    snap = snapshot(model)
    data = classification(24, (1, 6, 6), 3)
    s = surface_2d(
        model,
        data,
        pair(model),
        [-1, 0, 1],
        [-1, 1],
        method=method,
        bn=bn,
        bn_batches=2,
        batch_size=8,
        chunk_size=4,
        progress=False,
    )
    assert_unchanged(model, snap)
    assert s.config["bn"] == bn
    if method == "fast":  # a frozen first-layer bias stays at its value, as in the loop
        kw = dict(batch_size=8, chunk_size=4, progress=False)
        reference = surface_2d(model, data, pair(model), [-1, 0, 1], [-1, 1], method="loop", **kw)
        np.testing.assert_allclose(s.loss, reference.loss, atol=1e-6, rtol=0)
    assert s.config["method"] == ("loop" if bn == "recompute" else method)


def test_batchnorm_recompute_matches_manual_reestimate():
    model = cnn()
    data = classification(24, (1, 6, 6), 3)
    dirs = pair(model)
    s = surface_1d(model, data, dirs[0], [0.7], bn="recompute", bn_batches=2, batch_size=8, progress=False)
    manual = cnn()
    with torch.no_grad():
        for n, p in manual.named_parameters():
            p.add_(0.7 * dirs[0][n])
    bn = manual[1]
    bn.reset_running_stats()
    bn.momentum = None
    manual.eval()
    bn.train()
    with torch.no_grad():
        manual(data[0][:8])
        manual(data[0][8:16])
        manual.eval()
        expected = nn.functional.cross_entropy(manual(data[0]), data[1]).item()
    assert s.loss[0] == pytest.approx(expected, abs=1e-6)
    saved = surface_1d(model, data, dirs[0], [0.7], batch_size=8, progress=False)
    assert saved.config["bn"] == "saved" and abs(saved.loss[0] - s.loss[0]) > 1e-4


# ---------------------------------------------------------------- filter normalisation + BatchNorm invariance


@pytest.mark.parametrize("bn", ["saved", "recompute"])
def test_filter_normalized_surfaces_invariant_to_filter_rescaling_before_batchnorm(bn):
    # a tiny BatchNorm eps makes the invariance exact up to ~1e-10 rather than up to eps
    model = cnn(bn_eps=1e-12).double()
    model.eval()
    rescaled = cnn(bn_eps=1e-12).double()
    rescaled.eval()
    with torch.no_grad():
        for k, s in [(0, 7.0), (2, 0.05)]:
            rescaled[0].weight[k] *= s
            rescaled[0].bias[k] *= s
            rescaled[1].running_mean[k] *= s
            rescaled[1].running_var[k] *= s**2
    data = (classification(24, (1, 6, 6), 3)[0].double(), classification(24, (1, 6, 6), 3)[1])
    alphas, betas = make_grid(-1, 1, 5), make_grid(-1, 1, 3)
    kw = dict(bn=bn, batch_size=12, progress=False)
    surfaces = []
    for m in (model, rescaled):
        dirs = [random_direction(m, "filter", seed=5), random_direction(m, "filter", seed=6)]
        surfaces.append((surface_1d(m, data, dirs[0], alphas, **kw), surface_2d(m, data, dirs, alphas, betas, **kw)))
    for a, b in zip(surfaces[0], surfaces[1], strict=True):
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-8)
        np.testing.assert_allclose(a.accuracy, b.accuracy, atol=1e-12, rtol=0)
    # without normalisation the two surfaces differ: the check can fail
    raw = [surface_1d(m, data, random_direction(m, None, seed=5), alphas, **kw) for m in (model, rescaled)]
    assert np.abs(raw[0].loss - raw[1].loss).max() > 1e-3


# ---------------------------------------------------------------- interpolation, non-finite values


def test_interpolate_1d_end_points():
    a, b = mlp(0), mlp(1)
    data = classification(30, (3, 4), 4)
    model = mlp(2)
    snap = snapshot(model)
    curve = interpolate_1d(model, a, b, data, [0.0, 0.5, 1.0], progress=False)
    assert_unchanged(model, snap)
    with torch.no_grad():
        ends = [nn.functional.cross_entropy(m(data[0]), data[1]).item() for m in (a, b)]
    np.testing.assert_allclose(curve.loss[[0, 2]], ends, atol=1e-6)
    assert curve.config["kind"] == "interpolate_1d" and list(curve.frame().columns) == ["alpha", "loss", "accuracy"]


def test_non_finite_losses_are_recorded():
    class Reciprocal(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0]))

        def forward(self, x):
            return torch.log(self.w).expand(len(x)) / self.w  # NaN for w < 0, -inf at w = 0

    model, data = Reciprocal(), (torch.zeros(2, 1), torch.zeros(2))
    for method in ("fast", "loop"):
        with pytest.warns(RuntimeWarning, match="surface_1d: the loss is not finite at 2 of 3 points"):
            s = surface_1d(
                model,
                data,
                {"w": torch.tensor([1.0])},
                [-2.0, -1.0, 0.0],
                loss_fn=mean_output,
                method=method,
                progress=False,
            )
        assert np.isnan(s.loss[0]) and s.loss[1] == -np.inf and s.loss[2] == 0.0
        assert s.config["n_nonfinite"] == 2


# ---------------------------------------------------------------- chunks: cache, sharding, resume


def test_cache_reuses_chunks_and_a_changed_config_does_not(tmp_path):
    model = mlp()
    data = classification(20, (3, 4), 4)
    dirs = pair(model)
    kw = dict(chunk_size=4, cache_dir=tmp_path, progress=False)
    first = surface_2d(model, data, dirs, [-1, 0, 1], [-1, 0, 1, 2], **kw)
    again = surface_2d(model, data, dirs, [-1, 0, 1], [-1, 0, 1, 2], **kw)
    assert (first.config["chunks_computed"], again.config["chunks_computed"], again.config["chunks_reused"]) == (
        3,
        0,
        3,
    )
    np.testing.assert_array_equal(first.loss, again.loss)
    other_dirs = surface_2d(model, data, pair(model, seed=20), [-1, 0, 1], [-1, 0, 1, 2], **kw)
    other_grid = surface_2d(model, data, dirs, [-1, 0, 1], [-1, 0, 1, 3], **kw)
    with torch.no_grad():
        model[1].weight[0, 0] += 1e-3
    other_state = surface_2d(model, data, dirs, [-1, 0, 1], [-1, 0, 1, 2], **kw)
    for s in (other_dirs, other_grid, other_state):
        assert s.config["chunks_reused"] == 0 and s.config["key"] != first.config["key"]
    assert len({p.name for p in tmp_path.iterdir()}) == 4


class Activated(nn.Module):
    """A model whose activation is chosen by a string attribute that its ``forward`` reads."""

    def __init__(self, act: str) -> None:
        super().__init__()
        self.act = act
        self.first, self.second = nn.Linear(3, 5), nn.Linear(5, 4)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)) if self.act == "tanh" else torch.relu(self.first(x)))


def test_the_cache_key_holds_the_models_code_and_attributes_and_the_forward_functions_source(tmp_path, monkeypatch):
    """Only the class name and tensors were keyed: the same weights under another activation (a constructor
    argument) or an edited forward_fn reused the other model's chunks."""
    torch.manual_seed(0)
    tanh, relu = Activated("tanh"), Activated("relu")
    relu.load_state_dict(tanh.state_dict())
    data = (torch.randn(20, 3), torch.randint(0, 4, (20,)))
    dirs = [random_direction(tanh, seed=1)]
    kw = dict(chunk_size=4, cache_dir=tmp_path / "cache", progress=False)
    first = surface_1d(tanh, data, dirs[0], [-1.0, 0.0, 1.0, 2.0], **kw)
    other = surface_1d(relu, data, dirs[0], [-1.0, 0.0, 1.0, 2.0], **kw)
    assert other.config["chunks_reused"] == 0 and other.config["key"] != first.config["key"]
    assert not np.array_equal(other.loss, first.loss)

    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "forwards.py"
    module.write_text("def run(model, batch):\n    return model(batch[0]), batch[1]\n")
    forwards = importlib.import_module("forwards")
    before = surface_1d(tanh, data, dirs[0], [0.0, 1.0], forward_fn=forwards.run, **kw)
    module.write_text("def run(model, batch):\n    return 2 * model(batch[0]), batch[1]\n")
    importlib.reload(forwards)
    after = surface_1d(tanh, data, dirs[0], [0.0, 1.0], forward_fn=forwards.run, **kw)
    assert after.config["chunks_reused"] == 0 and not np.array_equal(after.loss, before.loss)


def test_a_chunk_copied_from_another_place_is_not_reused(tmp_path):
    """Records did not name their chunk or surface: chunk 1's files swapped with chunk 2's, or a chunk copied in
    from another surface's folder, were reused without a word."""
    model = mlp()
    data = classification(20, (3, 4), 4)
    kw = dict(chunk_size=4, cache_dir=tmp_path, progress=False)
    grid = ([-1, 0, 1], [-1, 0, 1, 2])
    first = surface_2d(model, data, pair(model), *grid, **kw)
    other = surface_2d(model, data, pair(model, seed=20), *grid, **kw)
    here, there = tmp_path / first.config["key"], tmp_path / other.config["key"]
    for suffix in (".npz", ".json"):  # chunks 1 and 2 swapped; chunk 0 from the other surface
        one, two = here / f"chunk_000001{suffix}", here / f"chunk_000002{suffix}"
        one.rename(here / "swap"), two.rename(one), (here / "swap").rename(two)
        (here / f"chunk_000000{suffix}").write_bytes((there / f"chunk_000000{suffix}").read_bytes())
    with pytest.warns(CacheWarning) as caught:
        again = surface_2d(model, data, pair(model), *grid, **kw)
    assert len(caught) == 3 and all("not of chunk" in str(w.message) for w in caught)
    assert again.config["chunks_computed"] == 3
    np.testing.assert_array_equal(again.loss, first.loss)


def test_sharded_chunks_assemble_to_the_full_surface():
    model = mlp()
    data = classification(20, (3, 4), 4)
    coords = np.stack(np.meshgrid([-1.0, 0.0, 1.0], [0.0, 0.5], indexing="ij"), -1).reshape(-1, 2)
    job = SurfaceJob(model, data, pair(model), coords, chunk_size=2, progress=False)
    ids = list(range(job.n_chunks))
    results = {}
    for rank in range(2):  # static round-robin over two "ranks"
        results.update(job.evaluate(ids[rank::2]))
    loss, _ = job.assemble(results)
    full = surface_2d(model, data, pair(model), [-1.0, 0.0, 1.0], [0.0, 0.5], progress=False)
    np.testing.assert_allclose(loss.reshape(3, 2), full.loss, atol=1e-6)
    with pytest.raises(ValueError, match="lack chunks"):
        job.assemble({0: results[0]})
    with pytest.raises(ValueError, match="chunk id: 9"):
        job.evaluate([9])


def test_invalid_arguments_raise():
    model, data = mlp(), classification(8, (3, 4), 4)
    dirs = pair(model)
    with pytest.raises(ValueError, match="method: 'vectorised'"):
        surface_2d(model, data, dirs, [0], [0], method="vectorised")
    with pytest.raises(ValueError, match="bn: 'train'"):
        surface_2d(model, data, dirs, [0], [0], bn="train")
    with pytest.raises(ValueError, match="chunk_size: 0"):
        surface_2d(model, data, dirs, [0], [0], chunk_size=0)
    with pytest.raises(ValueError, match="'fc.weight'"):
        surface_2d(model, data, [{"fc.weight": torch.zeros(1)}, dirs[1]], [0], [0])
    with pytest.raises(ValueError, match="shape"):
        surface_2d(model, data, [{"1.weight": torch.zeros(1)}, dirs[1]], [0], [0])
    with pytest.raises(ValueError, match="two directions"):
        surface_2d(model, data, dirs[:1], [0], [0])
    with pytest.raises(ValueError, match="alphas"):
        surface_2d(model, data, dirs, [], [0])


def test_save_and_load_round_trip(tmp_path):
    model, data = mlp(), classification(8, (3, 4), 4)
    s = surface_2d(model, data, pair(model), [-1, 0, 1], [0, 1], progress=False)
    s.save(tmp_path / "s.npz")
    back = Surface.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.loss, s.loss)
    np.testing.assert_array_equal(back.betas, s.betas)
    assert back.config == s.config


RESUME_SETUP = textwrap.dedent(
    """
    import time
    import torch
    from torch import nn
    from landscape.directions import random_direction

    class Counted(nn.Module):
        def __init__(self, delay):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
            self._delay, self._calls = delay, 0  # private: public plain attributes enter the surface's cache key

        def forward(self, x):
            self._calls += 1
            time.sleep(self._delay)
            return self.net(x)

    def setup(delay):
        torch.manual_seed(0)
        model = Counted(delay)
        data = (torch.randn(16, 4), torch.randint(0, 3, (16,)))
        dirs = [random_direction(model, seed=1), random_direction(model, seed=2)]
        return model, data, dirs, [-1.0, -0.5, 0.0, 0.5, 1.0], [-1.0, 0.0, 1.0, 2.0, 3.0]

    OPTIONS = dict(method="loop", chunk_size=2, progress=False)
    """
)


def _checkout_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout first on the child's module search path, so it runs the code under test."""
    root = str(Path(__file__).resolve().parents[2])
    return {**env, "PYTHONPATH": os.pathsep.join([root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])}


def test_killed_surface_resumes_without_recomputing_finished_chunks(tmp_path, monkeypatch):
    # the model's class in a module of its own, imported by both runs: its code is part of the surface's key
    (tmp_path / "resume_setup.py").write_text(RESUME_SETUP)
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\nfrom resume_setup import OPTIONS, setup\nfrom landscape.surfaces import surface_2d\n"
        + "model, data, dirs, alphas, betas = setup(0.15)\n"
        + "surface_2d(model, data, dirs, alphas, betas, cache_dir=sys.argv[1], **OPTIONS)\n"
    )
    cache = tmp_path / "cache"
    env = _checkout_env({**os.environ, "OMP_NUM_THREADS": "1"})
    proc = subprocess.Popen([sys.executable, str(script), str(cache)], env=env)
    try:
        deadline = time.time() + 120
        while len(list(cache.glob("*/chunk_*.json"))) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    chunks = [p.with_suffix(".npz") for p in cache.glob("*/chunk_*.json")]  # a chunk is finished once recorded
    finished = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in chunks}
    n_chunks = 13  # 25 points in chunks of 2
    assert 3 <= len(finished) < n_chunks

    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = vars(importlib.import_module("resume_setup"))
    model, data, dirs, alphas, betas = namespace["setup"](0.0)
    resumed = surface_2d(model, data, dirs, alphas, betas, cache_dir=cache, **namespace["OPTIONS"])
    finished_ids = {int(p.stem.split("_")[1]) for p in finished}
    expected_calls = sum(min(2, 25 - 2 * i) for i in range(n_chunks) if i not in finished_ids)
    assert model._calls == expected_calls  # one forward per point of unfinished chunks only
    assert resumed.config["chunks_reused"] == len(finished)
    assert resumed.config["chunks_computed"] == n_chunks - len(finished)
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in finished} == finished
    fresh = surface_2d(model, data, dirs, alphas, betas, **namespace["OPTIONS"])
    np.testing.assert_array_equal(resumed.loss, fresh.loss)
    np.testing.assert_array_equal(resumed.accuracy, fresh.accuracy)
    assert Path(cache, resumed.config["key"], "config.json").exists()


def test_a_lambda_forward_fn_with_a_cache_keys_this_run_only(tmp_path):
    """Keyed by source, a lambda forward_fn was refused with a cache (it had been keyed by name, so an edited one
    reused stale chunks): it now runs, says so, and its chunks are not reused by a later run."""
    model = mlp()
    data = classification(20, (3, 4), 4)
    forward = lambda net, batch: (net(batch[0]), batch[1])  # noqa: E731
    kw = dict(chunk_size=4, cache_dir=tmp_path, progress=False, forward_fn=forward)
    with pytest.warns(RuntimeWarning, match="cached under a key of this run only"):
        first = surface_1d(model, data, pair(model)[0], [-1.0, 0.0, 1.0], **kw)
    with pytest.warns(RuntimeWarning, match="cached under a key of this run only"):
        again = surface_1d(model, data, pair(model)[0], [-1.0, 0.0, 1.0], **kw)
    assert again.config["chunks_reused"] == 0 and again.config["key"] != first.config["key"]
    plain = surface_1d(model, data, pair(model)[0], [-1.0, 0.0, 1.0], progress=False)
    np.testing.assert_array_equal(first.loss, plain.loss)
