"""The public plot functions on results computed here: labelled axes and the expected artists, any result type."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import PolyCollection
from matplotlib.contour import ContourSet
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from torch import nn
from torch.nn import functional as F

import landscape
from paper_figures import plots


@pytest.fixture(scope="module")
def results():
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker = landscape.Tracker(model, opt, [landscape.WeightNorms(), landscape.EffectiveStepSize()])
    snapshots = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        tracker.step(loss)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters()})
    grid = landscape.make_grid(-1, 1, 5)
    dirs = [landscape.random_direction(model, seed=s) for s in (0, 1)]
    plane = landscape.surface_2d(model, (x, y), dirs, grid, grid, progress=False)
    start = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    alphas = landscape.make_grid(-0.5, 1.5, 9, include=(0.0, 1.0))
    line = landscape.interpolate_1d(model, start, model, (x, y), alphas, progress=False)
    hessian = landscape.HessianOperator(model, F.cross_entropy, (x, y), dtype=torch.float64)
    eigen = landscape.lanczos_eigenpairs(hessian, k=3, seed=0)
    density = landscape.slq_density(hessian, 2, 8, num_grid=50, seed=0)
    pca = landscape.pca_directions(snapshots)
    span = float(np.abs(pca.coords).max()) * 1.2
    pgrid = landscape.make_grid(-span, span, 5)
    pca_plane = landscape.surface_2d(model, (x, y), pca.directions, pgrid, pgrid, progress=False)
    ensemble = landscape.random_surfaces(model, (x, y), grid, [0.0], n_draws=3, progress=False)
    yield {
        "plane": plane,
        "line": line,
        "eigen": eigen,
        "density": density,
        "pca": pca,
        "pca_plane": pca_plane,
        "ensemble": ensemble,
        "metrics": tracker.frame(),
    }
    plt.close("all")


def _labels(ax):
    return ax.get_xlabel(), ax.get_ylabel()


def test_contour_from_a_surface_and_from_its_frame(results):
    for source in (results["plane"], results["plane"].frame()):
        fig = plots.contour(source)
        ax = fig.axes[0]
        assert all(_labels(ax)) and ax.get_title().startswith("loss at the centre")
        assert sum(isinstance(c, ContourSet) for c in ax.collections) == 2  # filled + lines
        assert len(ax.lines) == 1 and len(fig.axes) == 2  # the centre marker; the colour bar
        plt.close(fig)
    fig, ax = plt.subplots()
    assert plots.contour(results["plane"], ax=ax, colorbar=False) is fig and len(fig.axes) == 1
    with pytest.raises(ValueError, match="needs columns"):
        plots.contour(results["line"])


def test_surface_3d(results):
    fig = plots.surface_3d(results["plane"], log=True)
    ax = fig.axes[0]
    assert ax.get_zlabel() == "log10 loss" and all(_labels(ax))
    assert sum(isinstance(c, Poly3DCollection) for c in ax.collections) == 1
    with pytest.raises(ValueError, match="3D axes"):
        plots.surface_3d(results["plane"], ax=plt.subplots()[1])
    plt.close("all")


def test_curves_with_and_without_bands(results):
    fig = plots.curve(results["line"])
    ax = fig.axes[0]
    assert _labels(ax) == ("α", "loss") and len(ax.lines) == 1 and not ax.collections
    fig = plots.curve(results["ensemble"].frame())  # mean with its confidence band
    ax = fig.axes[0]
    assert ax.get_ylabel() == "loss" and len(ax.lines) == 1
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 1
    band = results["ensemble"].frame()
    np.testing.assert_allclose(ax.lines[0].get_ydata(), band.sort_values("alpha")["loss_mean"])
    plt.close("all")


def test_interpolation_marks_the_ends_and_states_the_barrier(results):
    fig = plots.interpolation(results["line"], names=("init", "trained"))
    ax, twin = fig.axes
    assert "init" in ax.get_xlabel() and ax.get_ylabel() == "loss" and twin.get_ylabel() == "accuracy"
    assert len(ax.lines) == 3 and len(twin.lines) == 1  # loss + two end markers; accuracy
    barrier = results["line"].barrier()["loss_barrier"]
    assert f"loss barrier {barrier:.3g}" in ax.get_title()
    plt.close(fig)


def test_spectrum_and_density(results):
    fig = plots.spectrum(results["eigen"])
    ax = fig.axes[0]
    assert _labels(ax) == ("rank k", "Hessian eigenvalue λ_k")
    np.testing.assert_allclose(np.asarray(ax.lines[0].get_ydata(), float), results["eigen"].eigenvalues)
    fig = plots.density(results["density"])
    ax = fig.axes[0]
    assert _labels(ax) == ("Hessian eigenvalue λ", "spectral density φ(λ)") and ax.get_yscale() == "log"
    assert len(ax.lines) == 1 and len(ax.lines[0].get_xdata()) == 50
    plt.close("all")


def test_trajectory_over_its_surface(results):
    fig = plots.trajectory(results["pca"], results["pca_plane"])
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("PC1 (") and ax.get_ylabel().startswith("PC2 (")
    assert len(ax.lines) == 3  # centre marker of the contour, the path, its end
    np.testing.assert_allclose(ax.lines[1].get_xdata(), results["pca"].coords[:, 0])
    plt.close("all")


def test_weight_norm_and_effective_step_curves(results):
    metrics = results["metrics"]
    fig = plots.weight_norms(metrics)
    ax = fig.axes[0]
    assert _labels(ax) == ("optimizer step", "weight norm ‖w‖") and len(ax.lines) == 1
    assert len(ax.lines[0].get_xdata()) == 7  # step 0 and six steps
    fig = plots.effective_steps(metrics, hue="param", param=None)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and len(ax.lines) == 5  # four tensors and "all"
    with pytest.raises(ValueError, match="no 'weight_norm' rows"):
        plots.weight_norms(metrics.query("quantity != 'weight_norm'"))
    plt.close("all")
