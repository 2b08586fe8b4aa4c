import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from landscape.directions import cosine_similarity, random_direction
from landscape.surface_ensemble import random_surfaces


def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    g = torch.Generator().manual_seed(1)
    return model, (torch.randn(30, 6, generator=g), torch.randint(0, 3, (30,), generator=g))


def test_mean_surface_band_and_cosines():
    model, data = setup()
    alphas, betas = [-1.0, 0.0, 1.0], [0.0, 0.5]
    ens = random_surfaces(model, data, alphas, betas, n_draws=4, seed=3, progress=False)
    frame = ens.frame()
    losses = np.stack([s.loss.ravel() for s in ens.surfaces])
    half = stats.t.ppf(0.975, 3) * losses.std(axis=0, ddof=1) / 2.0
    np.testing.assert_allclose(frame.loss_mean, losses.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(frame.loss_hi - frame.loss_lo, 2 * half, rtol=1e-10)
    # every draw passes through the same centre, so the band vanishes there
    centre = frame[(frame.alpha == 0.0) & (frame.beta == 0.0)]
    assert centre.loss_std.item() == pytest.approx(0.0, abs=1e-6)
    assert len({s.config["key"] for s in ens.surfaces}) == 4
    # cosines are those of the directions drawn in order from one generator
    g = torch.Generator().manual_seed(3)
    for s in ens.surfaces:
        d1, d2 = (random_direction(model, generator=g) for _ in range(2))
        assert s.config["cosine"] == pytest.approx(cosine_similarity(d1, d2), abs=1e-12)
    assert np.all(np.abs(ens.cosines) < 0.5)
    draws = ens.draws()
    assert len(draws) == 4 * 6 and set(draws.draw) == {0, 1, 2, 3}


def test_single_draw_has_no_band_and_bad_arguments_raise():
    model, data = setup()
    frame = random_surfaces(model, data, [0.0, 1.0], [0.0], n_draws=1, progress=False).frame()
    assert frame.loss_lo.isna().all() and frame.n_draws.eq(1).all()
    with pytest.raises(ValueError, match="n_draws: 0"):
        random_surfaces(model, data, [0.0], [0.0], n_draws=0)
    with pytest.raises(ValueError, match="confidence: 1.5"):
        random_surfaces(model, data, [0.0], [0.0], confidence=1.5)


def test_a_non_finite_draw_is_announced():
    """One draw's NaN made a point's mean and band NaN while n_draws still said 4, without a word."""
    model, data = setup()
    ens = random_surfaces(model, data, [-1.0, 0.0, 1.0], [0.0, 0.5], n_draws=4, seed=3, progress=False)
    ens.surfaces[2].loss[0, 1] = np.nan
    with pytest.warns(RuntimeWarning, match="1 of 4 draws have a non-finite loss at 1 points"):
        frame = ens.frame()
    assert np.isnan(frame.loss_mean[1]) and np.isfinite(frame.loss_mean.drop(1)).all()
