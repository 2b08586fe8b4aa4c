import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from torch import nn

from landscape.directions import (
    cosine_similarity,
    model_direction,
    normalize_direction,
    pca_directions,
    random_direction,
)


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    ).double()


def test_filter_normalization_matches_filter_norms_and_zeroes_biases():
    model = small_cnn()
    d = random_direction(model, seed=0)
    params = dict(model.named_parameters())
    assert d.keys() == params.keys()
    for name, p in params.items():
        if p.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0, name
            continue
        dims = tuple(range(1, p.dim()))
        norm = torch.linalg.vector_norm
        torch.testing.assert_close(norm(d[name], dim=dims), norm(p.detach(), dim=dims), rtol=1e-9, atol=0)


def test_bias_bn_options_and_layer_normalization():
    model = small_cnn()
    raw = {
        n: torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype)
        for n, p in model.named_parameters()
    }
    kept = normalize_direction(raw, model, "filter", bias_bn="keep")
    copied = normalize_direction(raw, model, "filter", bias_bn="weights")
    layer = normalize_direction(raw, model, "layer")
    for name, p in model.named_parameters():
        if p.dim() <= 1:
            assert torch.equal(kept[name], raw[name])
            assert torch.equal(copied[name], p.detach())
            assert torch.count_nonzero(layer[name]) == 0
        else:
            torch.testing.assert_close(layer[name].norm(), p.detach().norm(), rtol=1e-9, atol=0)
            # layer normalisation is a single rescaling of the whole tensor
            ratio = layer[name] / raw[name]
            torch.testing.assert_close(ratio, torch.full_like(ratio, ratio.flatten()[0].item()))
    unnormalized = normalize_direction(raw, model, None)
    assert all(torch.equal(unnormalized[n], raw[n]) for n in raw)


def test_random_direction_is_reproducible():
    model = small_cnn()
    a, b, c = (random_direction(model, seed=s) for s in (3, 3, 4))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])


def test_invalid_options_raise():
    model = small_cnn()
    with pytest.raises(ValueError, match="normalization: 'batch'"):
        random_direction(model, normalization="batch")
    with pytest.raises(ValueError, match="bias_bn: 'drop'"):
        random_direction(model, bias_bn="drop")
    with pytest.raises(ValueError, match="lacks"):
        normalize_direction({"nope": torch.zeros(1)}, model)
    with pytest.raises(ValueError, match="shape"):
        normalize_direction({"0.weight": torch.zeros(1)}, model)
    with pytest.raises(TypeError):
        random_direction(3)


def test_model_direction_and_cosine():
    a, b = small_cnn(), small_cnn()
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.5)
    d = model_direction(a, b)
    assert all(torch.allclose(t, torch.full_like(t, 1.5)) for t in d.values())
    with pytest.raises(ValueError, match="parameter names"):
        model_direction({"w": torch.zeros(1)}, {"v": torch.zeros(1)})
    assert cosine_similarity({"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 2.0])}) == 0.0
    u, v = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 1.0, -2.0])
    assert cosine_similarity({"w": u}, {"w": -u}) == pytest.approx(-1.0)
    assert cosine_similarity({"w": u}, {"w": v}) == pytest.approx(float(u @ v) / 9.0)


@pytest.mark.parametrize("center", [True, False])
def test_pca_directions_against_sklearn_and_plane_reconstruction(center):
    torch.manual_seed(0)
    final = {"a": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(5, dtype=torch.float64)}
    basis, _ = torch.linalg.qr(torch.randn(17, 2, dtype=torch.float64))
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    coefficients = torch.stack([3 * (1 - t) ** 2, torch.sin(4 * t)], dim=1)  # a curved path in a plane
    trajectory = []
    for c in coefficients:
        flat = torch.cat([final["a"].reshape(-1), final["b"]]) + basis @ c
        trajectory.append({"a": flat[:12].view(4, 3), "b": flat[12:]})
    pca = pca_directions(trajectory, center=center)
    u = torch.stack([torch.cat([d["a"].reshape(-1), d["b"]]) for d in pca.directions])
    diffs = (coefficients - coefficients[-1]) @ basis.T
    if center:
        reference = PCA(n_components=2).fit(diffs.numpy())
        np.testing.assert_allclose(pca.explained_variance_ratio, reference.explained_variance_ratio_, rtol=1e-10)
        np.testing.assert_allclose(np.abs(u.numpy() @ reference.components_.T), np.eye(2), atol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_ratio.sum(), 1.0, rtol=1e-12)
    # the trajectory lies in the plane: coordinates times the directions give back theta_i - theta_final
    np.testing.assert_allclose(pca.coords @ u.numpy(), diffs.numpy(), atol=1e-12)
    np.testing.assert_allclose(pca.coords[-1], [0.0, 0.0], atol=1e-12)
    frame = pca.frame()
    assert list(frame.columns) == ["index", "x", "y"] and len(frame) == 9


def test_pca_rejects_short_or_incomplete_trajectories():
    with pytest.raises(ValueError, match="at least 2"):
        pca_directions([{"w": torch.zeros(2)}])
    with pytest.raises(ValueError, match="lacks"):
        pca_directions([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}], final={"w": torch.zeros(2)})


def test_without_seed_or_generator_directions_come_from_the_global_generator():
    """A fresh default generator starts from one fixed seed: every unseeded call drew the same direction, so two
    of them made a degenerate plane (cosine 1) whatever torch.manual_seed said."""
    model = nn.Linear(50, 40)
    torch.manual_seed(7)
    a, b = random_direction(model, normalization=None), random_direction(model, normalization=None)
    cosine = torch.nn.functional.cosine_similarity(a["weight"].flatten(), b["weight"].flatten(), dim=0)
    assert abs(float(cosine)) < 0.1  # 2000 independent coordinates: |cos| about 0.02
    torch.manual_seed(7)
    assert torch.equal(random_direction(model, normalization=None)["weight"], a["weight"])


def test_a_state_dict_with_integer_buffers_is_refused_by_name():
    """torch's "normal_kernel_cpu not implemented for 'Long'" came from BatchNorm's num_batches_tracked."""
    with pytest.raises(ValueError, match="'0.num_batches_tracked' is a torch.int64 tensor, not a parameter"):
        random_direction(nn.Sequential(nn.BatchNorm1d(3)).state_dict())


def test_complex_parameters_get_complex_directions():
    model = nn.Linear(3, 2, dtype=torch.complex64)
    d = random_direction(model, normalization=None, seed=0)
    assert d["weight"].dtype == torch.complex64 and d["weight"].abs().sum() > 0
