"""Any batch layout, one answer: tensor, tuple and keyword inputs and a forward hook give the same numbers everywhere.

A two-input model is evaluated once on a plain tensor (its inputs concatenated), once on a tuple, once on a dict of
keyword inputs and once through ``forward_fn`` on batches in a custom layout; surfaces (batched and loop), curvature
and sharpness must agree to rounding. Also: the linear-mode-connectivity barrier against a hand computation, Hessian
eigenvector directions against the curvature they should show, grids holding 0 and 1, VTK export read back.
"""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape import (
    HessianOperator,
    Surface,
    Tracker,
    WeightNorms,
    eigen_directions,
    interpolate_1d,
    lanczos_eigenpairs,
    make_grid,
    random_direction,
    read_vtk,
    sam_sharpness,
    surface_1d,
    surface_2d,
    write_vtk,
)


class TwoInputs(nn.Module):
    """``f(a, b)``; ``Joined`` computes the same function of ``cat([a, b])``, with the same parameter names."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(5, 6)
        self.bn = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 3)

    def forward(self, a, b):
        return self.out(torch.tanh(self.bn(self.first(torch.cat([a, b], dim=1)))))


class Joined(TwoInputs):
    def forward(self, x):
        return super().forward(x[:, :3], x[:, 3:])


def _hook(model, batch):
    return model(batch["left"], b=batch["right"]), batch["label"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TwoInputs()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    joined = Joined()
    joined.load_state_dict(model.state_dict())
    joined.eval()
    a, b, y = torch.randn(24, 3), torch.randn(24, 2), torch.randint(0, 3, (24,))
    layouts = {
        "tuple": ((a, b), y),
        "mapping": ({"a": a, "b": b}, y),
        "hook": [{"left": a[i : i + 8], "right": b[i : i + 8], "label": y[i : i + 8]} for i in range(0, 24, 8)],
    }
    return model, joined, (torch.cat([a, b], 1), y), layouts


@pytest.mark.parametrize("layout", ["tuple", "mapping", "hook"])
@pytest.mark.parametrize("method", ["fast", "loop"])
def test_surfaces_agree_across_layouts(setup, layout, method):
    model, joined, plain, layouts = setup
    hook = _hook if layout == "hook" else None
    grid = make_grid(-1, 1, 3)
    dirs = [random_direction(model, seed=s) for s in (0, 1)]
    reference = surface_2d(joined, plain, dirs, grid, grid, progress=False, method=method)
    got = surface_2d(model, layouts[layout], dirs, grid, grid, progress=False, method=method, forward_fn=hook)
    np.testing.assert_allclose(got.loss, reference.loss, rtol=1e-6)
    np.testing.assert_allclose(got.accuracy, reference.accuracy, rtol=0, atol=1e-7)  # float32 batch means
    assert got.config["n_examples"] == 24
    assert got.config["forward_fn"] == (None if hook is None else f"{__name__}._hook")


@pytest.mark.parametrize("layout", ["tuple", "mapping", "hook"])
def test_curvature_and_sharpness_agree_across_layouts(setup, layout):
    model, joined, plain, layouts = setup
    hook = _hook if layout == "hook" else None
    reference = HessianOperator(joined, F.cross_entropy, plain, dtype=torch.float64)
    operator = HessianOperator(model, F.cross_entropy, layouts[layout], dtype=torch.float64, forward_fn=hook)
    v = np.random.default_rng(0).standard_normal(reference.shape[0])
    np.testing.assert_allclose(operator.matvec(v), reference.matvec(v), rtol=1e-10, atol=1e-12)
    s_ref = sam_sharpness(joined, plain, rho=0.05)
    s_got = sam_sharpness(model, layouts[layout], rho=0.05, forward_fn=hook)
    assert s_got.value == pytest.approx(s_ref.value, rel=1e-5)


def test_batches_a_hook_cannot_count_are_refused(setup):
    model, _, _, _ = setup
    with pytest.raises(ValueError, match="cannot count the examples"):
        surface_1d(model, [{"label": 3}], random_direction(model), [0.0], forward_fn=_hook, progress=False)
    with pytest.raises(TypeError, match="pass forward_fn"):
        surface_1d(model, [{"a": torch.zeros(2, 3)}], random_direction(model), [0.0], progress=False)


def test_barrier_matches_a_hand_computation():
    alphas = np.array([-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    loss = np.array([9.0, 1.0, 2.0, 4.0, 2.5, 3.0, 9.0])  # line from 1 to 3: 1.5, 2, 2.5 at 0.25, 0.5, 0.75
    acc = np.array([0.0, 0.9, 0.8, 0.3, 0.6, 0.7, 0.0])  # line from 0.9 to 0.7: 0.85, 0.8, 0.75
    barrier = Surface(alphas, None, loss, acc).barrier()
    assert barrier["loss_barrier"] == pytest.approx(2.0) and barrier["loss_barrier_alpha"] == 0.5
    assert barrier["accuracy_barrier"] == pytest.approx(0.5) and barrier["accuracy_barrier_alpha"] == 0.5
    flat = Surface(alphas, None, np.array([9.0, 1.0, 1.5, 2.0, 2.5, 3.0, 9.0]), acc).barrier()
    assert flat["loss_barrier"] == 0.0  # only the ends touch the line; extrapolation is outside [0, 1]
    with pytest.raises(ValueError, match="alpha = 0 or alpha = 1"):
        Surface(np.array([0.0, 0.5]), None, np.zeros(2), np.zeros(2)).barrier()


def test_interpolation_grids_hold_both_checkpoints(setup):
    model, _, _, layouts = setup
    other = TwoInputs()
    for n in (11, 21, 31, 51):
        grid = make_grid(-0.5, 1.5, n, include=(0.0, 1.0))
        assert 0.0 in grid and 1.0 in grid and grid[0] == -0.5 and grid[-1] == 1.5
    grid = make_grid(-0.5, 1.5, 11, include=(0.0, 1.0))
    curve = interpolate_1d(model, model, other, layouts["tuple"], grid, progress=False)
    assert np.isfinite(curve.barrier()["loss_barrier"])


def test_eigenvector_directions_show_their_eigenvalue(setup):
    model, _, _, layouts = setup
    hessian = HessianOperator(model, F.cross_entropy, layouts["tuple"], dtype=torch.float64)
    eigen = lanczos_eigenpairs(hessian, k=2, seed=0)
    directions = eigen_directions(eigen, model)
    assert set(directions[0]) == {n for n, _ in model.named_parameters()}
    flat = torch.cat([directions[0][n].reshape(-1).double() for n, _ in model.named_parameters()])
    np.testing.assert_allclose(flat.numpy(), eigen.eigenvectors[:, 0], rtol=1e-6, atol=1e-7)
    h = 1e-2  # second difference along v1 equals lambda_1 up to O(h^2)
    model64 = TwoInputs().double()
    model64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    model64.eval()
    (a, b), y = layouts["tuple"]
    d64 = {n: t.double() for n, t in directions[0].items()}
    line = surface_1d(model64, ((a.double(), b.double()), y), d64, [-h, 0.0, h], progress=False, method="loop")
    second = (line.loss[0] - 2 * line.loss[1] + line.loss[2]) / h**2
    assert second == pytest.approx(eigen.eigenvalues[0], rel=1e-3)


def test_vtk_export_reads_back_the_surface(setup, tmp_path):
    model, _, _, layouts = setup
    alphas, betas = make_grid(-1, 1, 3), make_grid(-0.5, 0.5, 5)
    dirs = [random_direction(model, seed=s) for s in (0, 1)]
    surface = surface_2d(model, layouts["mapping"], dirs, alphas, betas, progress=False)
    grid = read_vtk(write_vtk(surface, tmp_path / "s.vtk"))
    assert grid["dimensions"] == (3, 5, 1)
    points = grid["points"].reshape(5, 3, 3)  # (beta, alpha, xyz): alpha runs fastest
    np.testing.assert_array_equal(points[:, :, 0], np.broadcast_to(alphas, (5, 3)))
    np.testing.assert_array_equal(points[:, :, 1], np.broadcast_to(betas[:, None], (5, 3)))
    np.testing.assert_array_equal(points[:, :, 2].T, surface.loss)
    np.testing.assert_array_equal(grid["point_data"]["loss"].reshape(5, 3).T, surface.loss)
    np.testing.assert_array_equal(grid["point_data"]["accuracy"].reshape(5, 3).T, surface.accuracy)
    logged = read_vtk(write_vtk(surface, tmp_path / "log.vtk", log=True, z_scale=2.0))
    np.testing.assert_allclose(logged["points"][:, 2].reshape(5, 3).T, 2.0 * np.log10(surface.loss), rtol=1e-15)
    with pytest.raises(ValueError, match="2D surface"):
        write_vtk(Surface(alphas, None, np.zeros(3), np.zeros(3)), tmp_path / "x.vtk")
    for title in ("a\rb", "a\x0cb", "a\u2028b"):  # line breaks other than \n shifted the header: unreadable
        titled = read_vtk(write_vtk(surface, tmp_path / "t.vtk", title=title))
        np.testing.assert_array_equal(titled["point_data"]["loss"].reshape(5, 3).T, surface.loss)


def test_tracker_in_an_own_loop_matches_hand_norms():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = Tracker(model, opt, [WeightNorms(every=2, per_param=False)])
    norms = [float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())]
    for _ in range(4):
        opt.zero_grad()
        loss = model(torch.ones(2, 3)).pow(2).mean()
        loss.backward()
        opt.step()
        tracker.step(loss)
        norms.append(float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm()))
    rows = tracker.frame().query("quantity == 'weight_norm'")
    assert rows["step"].tolist() == [0, 2, 4]
    np.testing.assert_allclose(rows["value"], [norms[0], norms[2], norms[4]], rtol=1e-6)
    assert len(tracker.frame().query("quantity == 'train_loss'")) == 4


def test_tracker_numbers_epochs_as_the_runner():
    """The runner (studies.train) labels the starting point epoch 0 and the first epoch's steps epoch 1; the
    Tracker labelled those steps 0 too, so one's own loop and the runner disagreed by one epoch."""
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = Tracker(model, opt, [WeightNorms(per_param=False)])
    for _ in range(2):  # two epochs of two steps
        for _ in range(2):
            opt.zero_grad()
            model(torch.ones(2, 3)).pow(2).mean().backward()
            opt.step()
            tracker.step()
        tracker.epoch_end()
    rows = tracker.frame().query("quantity == 'weight_norm'")
    assert rows[["step", "epoch"]].values.tolist() == [[0, 0], [1, 1], [2, 1], [3, 2], [4, 2]]
