"""A user's own model, data and loss through the CLI: surface, curvature and analyse on a plain state_dict.

The test writes its own module (a Tanh CNN with BatchNorm, a model taking keyword inputs, a data function and a
forward hook) and its own data files into a temporary folder, as a user would, and checks every number the CLI
writes against the Python API and the centre of the surface against a direct forward pass.
"""

import copy
import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from landscape import (
    HessianOperator,
    interpolate_1d,
    lanczos_eigenpairs,
    make_grid,
    random_direction,
    read_vtk,
    surface_1d,
    surface_2d,
)
from studies.cli import main
from studies.store import read_frame

MODULE = textwrap.dedent(
    '''
    """A user's own models, data and forward hook."""
    import torch
    from torch import nn


    class TanhCNN(nn.Module):
        def __init__(self, channels=3, classes=3):
            super().__init__()
            self.conv = nn.Conv2d(1, channels, 3, padding=1)
            self.bn = nn.BatchNorm2d(channels)
            self.head = nn.Linear(channels * 6 * 6, classes)

        def forward(self, x):
            return self.head(torch.tanh(self.bn(self.conv(x))).flatten(1))


    class ReluCNN(TanhCNN):
        """The same parameters under another activation."""

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


    class KeywordNet(nn.Module):
        def __init__(self, hidden=5):
            super().__init__()
            self.image = nn.Linear(4, hidden)
            self.extra = nn.Linear(2, hidden)
            self.out = nn.Linear(hidden, 3)

        def forward(self, image, extra):
            return self.out(torch.tanh(self.image(image) + self.extra(extra)))


    def keyword_net(hidden=5):
        return KeywordNet(hidden)


    def records():
        """Batches in the user's own layout: a dict holding features and labels."""
        g = torch.Generator().manual_seed(7)
        batches = []
        for _ in range(3):
            features = {"image": torch.randn(8, 4, generator=g), "extra": torch.randn(8, 2, generator=g)}
            batches.append({"features": features, "label": torch.randint(0, 3, (8,), generator=g)})
        return batches


    def forward(model, batch):
        return model(**batch["features"]), batch["label"]


    def broken():
        raise RuntimeError("the weights server is down")


    def failing_data():
        raise RuntimeError("the data server is down")
    '''
)


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The user's folder: module, data files and two plain state_dicts of the CNN (trained a few steps apart)."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "ownmodels.py").write_text(MODULE)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 6, 6, generator=g), torch.randint(0, 3, (48,), generator=g)
    torch.save({"x": x, "y": y}, folder / "images.pt")
    k = {"image": torch.randn(40, 4, generator=g), "extra": torch.randn(40, 2, generator=g)}
    labels = torch.randint(0, 3, (40,), generator=g)
    np.savez(folder / "keywords.npz", **{f"inputs.{n}": t.numpy() for n, t in k.items()}, targets=labels.numpy())
    return folder, (x, y), (k, labels)


@pytest.fixture(scope="module")
def checkpoints(user):
    folder, (x, y), _ = user
    import sys

    sys.path.insert(0, str(folder))
    try:
        import ownmodels
    finally:
        sys.path.remove(str(folder))
    torch.manual_seed(0)
    model = ownmodels.TanhCNN(channels=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    paths = []
    for stage in range(2):
        for _ in range(10):  # training mode: BatchNorm statistics move away from their defaults
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        paths.append(folder / f"cnn{stage}.pt")
        torch.save(model.state_dict(), paths[-1])  # a plain state_dict
    keyword = ownmodels.keyword_net(hidden=5)
    torch.save({"model_state_dict": keyword.state_dict(), "epoch": 3}, folder / "keyword.pt")
    return ownmodels, paths, folder / "keyword.pt"


def _cnn(ownmodels, path):
    model = ownmodels.TanhCNN(channels=3)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


CNN = ["--model", "ownmodels.TanhCNN", "--model-kwargs", '{"channels": 3}', "--no-progress"]


def test_surface_of_an_own_cnn_equals_the_api_and_a_forward_pass(user, checkpoints, tmp_path, monkeypatch):
    folder, (x, y), _ = user
    ownmodels, paths, _ = checkpoints
    monkeypatch.syspath_prepend(str(folder))
    out = tmp_path / "plane.csv"
    args = ["surface", "--checkpoint", str(paths[1]), *CNN, "--data", str(folder / "images.pt"), "--seed", "2"]
    assert main([*args, "--resolution", "5", "--out", str(out)]) == 0
    written = pd.read_csv(out)
    model = _cnn(ownmodels, paths[1])
    grid = make_grid(-1, 1, 5)
    directions = [random_direction(model, seed=s) for s in (2, 3)]
    expected = surface_2d(model, (x, y), directions, grid, grid, progress=False).frame()
    # a CNN's evaluation path is chosen by timing the first points (vmap or channels-last loop), so the CLI and this
    # call may take different float32 paths: equal to float32 rounding (measured differences ~5e-7)
    pd.testing.assert_frame_equal(written, expected, check_exact=False, rtol=2e-6, atol=1e-7)
    centre = written[(written["alpha"] == 0) & (written["beta"] == 0)].iloc[0]
    with torch.no_grad():
        logits = model(x)
    assert centre["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert centre["accuracy"] == pytest.approx(float((logits.argmax(1) == y).double().mean()), abs=1e-12)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["config"]["target"]["model"] == "ownmodels.TanhCNN"
    assert meta["config"]["target"]["n_examples"] == 48


def test_curvature_of_an_own_cnn_equals_the_api(user, checkpoints, tmp_path, monkeypatch):
    folder, (x, y), _ = user
    ownmodels, paths, _ = checkpoints
    monkeypatch.syspath_prepend(str(folder))
    out = tmp_path / "curv.csv"
    args = ["curvature", "--checkpoint", str(paths[1]), *CNN, "--data", str(folder / "images.pt")]
    assert main([*args, "--top-k", "2", "--trace-probes", "4", "--out", str(out)]) == 0
    written = pd.read_csv(out)
    model = _cnn(ownmodels, paths[1])
    hessian = HessianOperator(model, F.cross_entropy, (x, y), dtype=torch.float64)
    eigen = lanczos_eigenpairs(hessian, k=2, seed=0)
    got = written.query("quantity == 'eigenvalue'")["value"].to_numpy()
    np.testing.assert_allclose(got, eigen.eigenvalues, rtol=1e-8)


def test_keyword_model_from_an_npz_and_a_forward_hook(user, checkpoints, tmp_path, monkeypatch):
    folder, _, (inputs, labels) = user
    ownmodels, _, keyword = checkpoints
    monkeypatch.syspath_prepend(str(folder))
    common = ["--checkpoint", str(keyword), "--model", "ownmodels:keyword_net", "--model-kwargs", '{"hidden": 5}']
    out = tmp_path / "line.csv"
    npz = ["--data", str(folder / "keywords.npz"), "--no-progress"]
    assert main(["surface", *common, *npz, "--dims", "1", "--resolution", "5", "--out", str(out)]) == 0
    model = ownmodels.keyword_net(hidden=5)
    model.load_state_dict(torch.load(keyword, weights_only=True)["model_state_dict"])
    model.eval()
    expected = surface_1d(model, (inputs, labels), random_direction(model, seed=0), make_grid(-1, 1, 5), progress=False)
    np.testing.assert_allclose(pd.read_csv(out)["loss"], expected.loss, rtol=1e-10)
    with torch.no_grad():
        direct = float(F.cross_entropy(model(**inputs), labels))
    assert expected.at_origin() == pytest.approx(direct, rel=1e-6)
    # the same model on batches in the user's own layout, through a data function and a forward hook
    hook = ["--data", "ownmodels:records", "--forward", "ownmodels:forward", "--no-progress"]
    out = tmp_path / "curv.csv"
    assert main(["curvature", *common, *hook, "--top-k", "1", "--trace-probes", "3", "--out", str(out)]) == 0
    hessian = HessianOperator(
        model, F.cross_entropy, ownmodels.records(), dtype=torch.float64, forward_fn=ownmodels.forward
    )
    top = lanczos_eigenpairs(hessian, k=1, seed=0).eigenvalues[0]
    batches = ownmodels.records()
    joined = (
        {n: torch.cat([b["features"][n] for b in batches]) for n in ("image", "extra")},
        torch.cat([b["label"] for b in batches]),
    )
    plain = lanczos_eigenpairs(HessianOperator(model, F.cross_entropy, joined, dtype=torch.float64), k=1, seed=0)
    assert top == pytest.approx(plain.eigenvalues[0], rel=1e-8)  # hook and keyword inputs: one Hessian
    assert pd.read_csv(out).query("quantity == 'eigenvalue'")["value"].iloc[0] == pytest.approx(top, rel=1e-8)


def test_analyse_an_own_cnn_with_interpolation(user, checkpoints, tmp_path, monkeypatch, capsys):
    folder, (x, y), _ = user
    ownmodels, paths, _ = checkpoints
    monkeypatch.syspath_prepend(str(folder))
    out = tmp_path / "analysis"
    args = ["analyse", "--checkpoint", str(paths[0]), "--to", str(paths[1]), *CNN, "--data", str(folder / "images.pt")]
    small = ["--line-points", "7", "--resolution", "5", "--top-k", "2", "--trace-probes", "4", "--slq-steps", "6"]
    assert main([*args, *small, "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "wall time" in summary and "line" in summary and "figures" in summary
    start, end = _cnn(ownmodels, paths[0]), _cnn(ownmodels, paths[1])
    alphas = make_grid(-0.5, 1.5, 7, include=(0.0, 1.0))
    expected = interpolate_1d(start, start, end, (x, y), alphas, progress=False)
    line = pd.read_csv(out / "line.csv")
    np.testing.assert_allclose(line["alpha"], alphas)
    np.testing.assert_allclose(line["loss"], expected.loss, rtol=1e-10)
    barrier = pd.read_csv(out / "barrier.csv").iloc[0]
    assert barrier["loss_barrier"] == pytest.approx(expected.barrier()["loss_barrier"], rel=1e-10, abs=1e-12)
    assert set(line["bn"]) == {"recompute"}  # between BatchNorm models the statistics are re-estimated at every α
    recomputed = copy.deepcopy(start)
    for module in recomputed.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        recomputed.train()(x)
        assert barrier["loss_a"] == pytest.approx(float(F.cross_entropy(recomputed.eval()(x), y)), rel=1e-6)
    eigen = lanczos_eigenpairs(HessianOperator(start, F.cross_entropy, (x, y), dtype=torch.float64), k=2, seed=0)
    np.testing.assert_allclose(pd.read_csv(out / "eigenvalues.csv")["eigenvalue"], eigen.eigenvalues, rtol=1e-8)
    plane = read_frame((out / "plane.csv").read_bytes())  # bit for bit, as the VTK file was written
    grid = read_vtk(out / "figures" / "plane.vtk")
    assert grid["dimensions"] == (5, 5, 1)
    np.testing.assert_array_equal(np.sort(grid["point_data"]["loss"]), np.sort(plane["loss"].to_numpy()))
    meta = json.loads((out / "analysis.json").read_text())
    assert meta["settings"]["plane_points"] == 5 and meta["interpolation"] is True
    assert set(meta["seconds"]) >= {"line", "plane", "eigen", "trace", "density", "eigenplane", "sharpness", "total"}
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and 'src="http' not in page
    for name in ("line", "plane", "eigenplane", "spectrum"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert (out / "figures" / f"{name}.pdf").is_file()
    # a second run reuses every part
    assert main([*args, *small, "--out", str(out), "--no-figures"]) == 0
    assert "reused: line, plane, eigen, trace, density, eigenplane, sharpness" in capsys.readouterr().out


def test_analyse_reuses_no_part_of_another_models_analysis(user, checkpoints, tmp_path, monkeypatch, capsys):
    """The parts' key held the weights and the functions' names only: the same checkpoint under another model class
    (ReLU for Tanh) reused every part of the first analysis, whose numbers then stood for the second model."""
    folder, _, _ = user
    _, paths, _ = checkpoints
    monkeypatch.syspath_prepend(str(folder))
    common = ["analyse", "--checkpoint", str(paths[0]), "--data", str(folder / "images.pt"), "--parts", "line"]
    common += ["--line-points", "5", "--no-figures", "--no-progress"]
    relu = ["--model", "ownmodels.ReluCNN", "--model-kwargs", '{"channels": 3}']
    assert main([*common, *CNN, "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main([*common, *relu, "--out", str(tmp_path / "a")]) == 0
    assert "reused" not in capsys.readouterr().out
    assert main([*common, *relu, "--out", str(tmp_path / "fresh")]) == 0
    shared, fresh = (pd.read_csv(tmp_path / name / "line.csv") for name in ("a", "fresh"))
    pd.testing.assert_frame_equal(shared, fresh)


def test_own_model_mistakes_get_one_clear_message(user, checkpoints, tmp_path, monkeypatch, capsys):
    folder, _, _ = user
    _, paths, _ = checkpoints
    monkeypatch.syspath_prepend(str(folder))
    base = ["surface", "--checkpoint", str(paths[0]), "--data", str(folder / "images.pt"), "--no-progress"]
    out = ["--out", str(tmp_path / "s.csv")]
    cases = [
        (["--model", "ownmodels:nothing"], "has no attribute 'nothing'"),
        (["--model", "no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
        (["--model", "ownmodels:keyword_net"], "does not fit ownmodels:keyword_net"),
        (["--model", "ownmodels.TanhCNN", "--loss", "hinge"], "--loss 'hinge' is unknown"),
        (["--model", "ownmodels.TanhCNN", "--model-kwargs", '{"width": 2}'], "unexpected keyword argument 'width'"),
        (["--model", "ownmodels.TanhCNN", "--data", str(tmp_path / "none.npz")], "none.npz' does not exist"),
    ]
    # the user's own code or data failing: the user's mistake, named in one line (these were "internal errors")
    (tmp_path / "raising_module.py").write_text("raise RuntimeError('no config file')\n")
    (tmp_path / "broken_syntax.py").write_text("def f(:\n")
    torch.save({"x": torch.randn(8, 1, 7, 7), "y": torch.randint(0, 3, (8,))}, tmp_path / "wide.pt")
    torch.save({"x": torch.full((8, 1, 6, 6), float("nan")), "y": torch.randint(0, 3, (8,))}, tmp_path / "nan.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    cnn = ["--model", "ownmodels.TanhCNN"]
    cases += [
        (["--model", "raising_module:f"], "cannot import 'raising_module' (RuntimeError: no config file)"),
        (["--model", "broken_syntax:f"], "cannot import 'broken_syntax' (SyntaxError"),
        (["--model", "ownmodels:broken"], "RuntimeError: the weights server is down"),
        ([*cnn, "--data", "ownmodels:failing_data"], "RuntimeError: the data server is down"),
        ([*cnn, "--data", str(tmp_path / "wide.pt")], "a forward pass and loss on the first examples failed"),
        ([*cnn, "--loss", "mse"], "Using a target size"),
    ]
    for extra, message in cases:
        assert main([*base, *extra, *out]) == 2, extra
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, (extra, error)
    curvature = ["curvature", "--checkpoint", str(paths[0]), *cnn, "--data", str(tmp_path / "nan.pt"), *out]
    assert main(curvature) == 2
    assert "is the loss finite at these parameters?" in capsys.readouterr().err


def test_a_rerun_writes_the_same_files_with_all_nan_columns(tmp_path):
    """Stored parts were split with their all-NaN columns dropped: rerunning a regression's analysis rewrote
    line.csv without its accuracy column (NaN data: without its loss, then a KeyError)."""
    from studies.analyse_all import Settings, analyse

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    data = (torch.randn(16, 3), torch.randn(16, 1))
    settings = Settings(parts=("line", "plane"), line_points=5, plane_points=3)
    first = analyse(model, data, tmp_path, loss_fn=F.mse_loss, settings=settings, progress=False)
    written = {name: (tmp_path / f"{name}.csv").read_bytes() for name in ("line", "plane")}
    again = analyse(model, data, tmp_path, loss_fn=F.mse_loss, settings=settings, progress=False)
    assert again.reused == ["line", "plane"] and first.reused == []
    assert {name: (tmp_path / f"{name}.csv").read_bytes() for name in written} == written
    assert "accuracy" in pd.read_csv(tmp_path / "line.csv").columns


class _Force(torch.nn.Module):
    """A force field: its forward differentiates an energy with respect to the inputs."""

    def __init__(self):
        super().__init__()
        self.energy = torch.nn.Linear(3, 1)

    def forward(self, x):
        x = x.detach().requires_grad_(True)
        (force,) = torch.autograd.grad(self.energy(x).pow(2).sum(), x, create_graph=True)
        return force


def _graph_forward(model, batch):
    """Messages along edges that index the nodes: cutting the batch by rows breaks the indices."""
    source, target = batch["edges"]
    return model(batch["x"][source] + batch["x"][target]), batch["y"][target]


def test_the_preflight_runs_models_as_the_measures_do():
    """The preflight ran without gradients and on the first two rows of every tensor: a force field and a graph
    batch (valid inputs that `valley curvature` computed) were refused."""
    from studies.specs import check_runs

    g = torch.Generator().manual_seed(0)
    check_runs(_Force(), (torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)), F.mse_loss, None, "force")
    graph = {"x": torch.randn(5, 4, generator=g), "edges": torch.tensor([[0, 4, 2], [4, 1, 3]]), "y": torch.arange(5)}
    check_runs(torch.nn.Linear(4, 5), graph, F.cross_entropy, _graph_forward, "graph")
    seen = []
    probe = torch.nn.Linear(4, 5).train()
    probe.register_forward_hook(lambda module, inputs, output: seen.append(module.training))
    check_runs(probe, (graph["x"], graph["y"]), F.cross_entropy, None, "modes")
    assert seen == [False] and probe.training  # run in eval mode, its own mode put back
