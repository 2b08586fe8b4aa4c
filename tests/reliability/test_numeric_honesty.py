"""Numerical honesty: no plausible number for an impossible case, one eval/train policy, exact restores.

Each test reproduces a case that used to give a silent wrong result (or a raw traceback) and asserts the intended
outcome: a clear error, NaN with a warning, or the correct value recorded with its policy.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import optim
from landscape import surfaces
from landscape._evaluation import cross_entropy, top1_accuracy
from landscape.curvature import (
    GGNOperator,
    HessianOperator,
    hutchinson_trace,
    lanczos_eigenpairs,
    power_iteration_eigenpairs,
    slq_density,
)
from landscape.directions import random_direction
from landscape.sharpness import epsilon_sharpness, m_sharpness, sam_sharpness

torch.manual_seed(0)
X, Y = torch.randn(16, 3), torch.randint(0, 3, (16,))


def bn_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def shifted_stats(model):
    """Running statistics that differ from the batch statistics of X, so train and eval mode disagree."""
    with torch.no_grad():
        model[1].running_mean.copy_(torch.tensor([0.5, -0.5, 1.0, 0.0]))
        model[1].running_var.copy_(torch.tensor([2.0, 0.5, 1.5, 3.0]))
    return model


# --- SAM, ASAM, ExtraGradient: weights restored when the closure raises at the perturbed point ---------------------


# both paths of the wrappers (per tensor, multi-tensor) save, perturb and restore
FOREACH = pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])


@FOREACH
@pytest.mark.parametrize(("entry", "raise_at"), [("sam", 2), ("asam", 2), ("extragradient", 2), ("extra_adam", 2)])
def test_weights_bit_identical_after_closure_raises_at_perturbed_point(entry, raise_at, foreach):
    model = nn.Linear(3, 3)
    opt = optim.make(entry, model, lr=0.1, foreach=foreach)
    before = [p.detach().clone() for p in model.parameters()]
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), Y)
        loss.backward()
        if len(calls) == raise_at:
            raise FloatingPointError("non-finite loss at the perturbed point")
        return loss

    with pytest.raises(FloatingPointError):
        opt.step(closure)
    assert len(calls) == raise_at
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all("point" not in opt.state[p] for p in model.parameters())  # nothing stale left for the next step
    loss = opt.step(lambda: nn.functional.cross_entropy(model(X), Y))  # and the optimizer still works
    assert torch.isfinite(loss)


# --- SAM and BatchNorm -----------------------------------------------------------------------------------------------


def _sam_step(opt, model):
    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), Y)
        loss.backward()
        return loss

    opt.step(closure)


@FOREACH
@pytest.mark.parametrize("entry", ["sam", "asam"])
def test_sam_step_updates_batchnorm_statistics_only_at_the_unperturbed_point(entry, foreach):
    model, reference = bn_net().train(), bn_net().train()
    with torch.no_grad():
        reference(X)  # one plain forward at w
    opt = optim.make(entry, model, lr=0.1, foreach=foreach)  # make passes the model to SAM
    assert opt.model is model
    _sam_step(opt, model)
    bn, ref = model[1], reference[1]
    assert torch.equal(bn.running_mean, ref.running_mean)
    assert torch.equal(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1


@FOREACH
def test_sam_without_model_updates_batchnorm_twice_as_documented(foreach):
    model, reference = bn_net().train(), bn_net().train()
    with torch.no_grad():
        reference(X)
    opt = optim.make("sam", list(model.parameters()), lr=0.1, foreach=foreach)  # SAM cannot know the layers
    _sam_step(opt, model)
    assert int(model[1].num_batches_tracked) == 2
    assert not torch.equal(model[1].running_mean, reference[1].running_mean)


def test_frozen_bn_restores_statistics_with_cumulative_momentum_and_on_exception():
    model = bn_net().train()
    model[1].momentum = None  # cumulative average: momentum 0 alone would not freeze it
    with torch.no_grad():
        model(X)
    saved = {k: v.clone() for k, v in model[1].state_dict().items()}
    with pytest.raises(RuntimeError), optim.sam.frozen_bn(model), torch.no_grad():
        model(X * 3 + 1)
        raise RuntimeError
    assert all(torch.equal(model[1].state_dict()[k], v) for k, v in saved.items())


# --- one eval/train policy for every measure --------------------------------------------------------------------------


@pytest.mark.parametrize("operator", [HessianOperator, GGNOperator])
def test_curvature_evaluates_in_eval_mode_by_default_and_records_it(operator):
    model = shifted_stats(bn_net()).train()
    kwargs = {"dtype": torch.float64}
    default = lanczos_eigenpairs(operator(model, nn.functional.cross_entropy, (X, Y), **kwargs), k=1, seed=0)
    assert model.training and model[1].training  # the caller's mode is back
    model.eval()
    reference = lanczos_eigenpairs(operator(model, nn.functional.cross_entropy, (X, Y), **kwargs), k=1, seed=0)
    model.train()
    train = lanczos_eigenpairs(
        operator(model.eval(), nn.functional.cross_entropy, (X, Y), mode="train", **kwargs), k=1, seed=0
    )
    assert not model.training  # restored to eval
    assert default.config["mode"] == reference.config["mode"] == "eval"
    assert train.config["mode"] == "train"
    assert default.eigenvalues[0] == pytest.approx(reference.eigenvalues[0], rel=1e-10)
    assert abs(train.eigenvalues[0] - default.eigenvalues[0]) > 1e-3 * abs(default.eigenvalues[0])


def test_curvature_estimators_record_the_mode():
    model = bn_net()
    hessian = HessianOperator(model, nn.functional.cross_entropy, (X, Y), dtype=torch.float64, mode="train")
    assert hutchinson_trace(hessian, max_applications=4, seed=0).config["mode"] == "train"
    assert slq_density(hessian, probes=1, steps=3, seed=0).config["mode"] == "train"
    assert power_iteration_eigenpairs(hessian, max_iter=3, seed=0).config["mode"] == "train"
    with pytest.raises(ValueError, match="mode"):
        HessianOperator(model, nn.functional.cross_entropy, (X, Y), mode="training")


def test_surface_and_sharpness_evaluate_in_eval_mode_and_record_it():
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    d = random_direction(model, seed=0)
    first = surfaces.surface_1d(model, (X, Y), d, [0.0], progress=False)
    second = surfaces.surface_1d(model, (X, Y), d, [0.0], progress=False)
    with torch.no_grad():
        expected = float(nn.functional.cross_entropy(model.eval()(X), Y))
    model.train()
    assert first.loss[0] == second.loss[0] == pytest.approx(expected, rel=1e-6)
    assert first.config["mode"] == "eval"
    assert model.training and model[1].training
    train = surfaces.surface_1d(model, (X, Y), d, [0.0], progress=False, mode="train")
    assert train.config["mode"] == "train" and train.config["method"] == "loop"
    sharp = sam_sharpness(model, (X, Y))
    assert sharp.config["mode"] == "eval" and sharp.loss == pytest.approx(expected, rel=1e-6)
    assert sam_sharpness(model, (X, Y), mode="train").config["mode"] == "train"
    with pytest.raises(ValueError, match="mode"):
        surfaces.surface_1d(model, (X, Y), d, [0.0], progress=False, mode="test")


def test_train_mode_uses_batch_statistics_in_surfaces_and_sharpness():
    model = shifted_stats(bn_net()).eval()
    copy = shifted_stats(bn_net())
    with torch.no_grad():
        eval_loss = float(nn.functional.cross_entropy(copy.eval()(X), Y))  # running statistics
        train_loss = float(nn.functional.cross_entropy(copy.train()(X), Y))  # batch statistics
    assert abs(train_loss - eval_loss) > 1e-3
    d = random_direction(model, seed=0)
    for method in ("fast", "loop"):
        train = surfaces.surface_1d(model, (X, Y), d, [0.0], progress=False, mode="train", method=method)
        default = surfaces.surface_1d(model, (X, Y), d, [0.0], progress=False, method=method)
        assert train.loss[0] == pytest.approx(train_loss, rel=1e-6)
        assert default.loss[0] == pytest.approx(eval_loss, rel=1e-6)
    assert sam_sharpness(model, (X, Y), mode="train").loss == pytest.approx(train_loss, rel=1e-6)
    assert sam_sharpness(model, (X, Y)).loss == pytest.approx(eval_loss, rel=1e-6)
    assert not model.training and torch.equal(model[1].running_mean, shifted_stats(bn_net())[1].running_mean)


def test_interpolation_between_batchnorm_models_recomputes_statistics_by_default():
    a, b = bn_net(0), bn_net(1)
    shifted_stats(a).eval(), b.eval()
    curve = surfaces.interpolate_1d(a, a, b, (X, Y), [0.0, 0.5, 1.0], progress=False)
    assert curve.config["bn"] == "recompute"
    # at alpha = 0.5: statistics re-estimated on the data at the midpoint, not a's
    mid = bn_net(0)
    with torch.no_grad():
        for (name, p), q in zip(mid.named_parameters(), b.parameters(), strict=True):
            p.copy_(0.5 * dict(a.named_parameters())[name] + 0.5 * q)
        mid[1].momentum = None
        mid.train()
        mid(X)
        expected = float(nn.functional.cross_entropy(mid.eval()(X), Y))
    assert curve.loss[1] == pytest.approx(expected, rel=1e-5)
    saved = surfaces.interpolate_1d(a, a, b, (X, Y), [0.0, 0.5, 1.0], progress=False, bn="saved")
    assert saved.config["bn"] == "saved" and saved.loss[1] != pytest.approx(expected, rel=1e-3)


# --- the default cross-entropy refuses what it cannot mean -----------------------------------------------------------


@pytest.mark.parametrize(
    ("targets", "text"),
    [
        (torch.zeros(16, dtype=torch.long), "class scores"),  # one output column: a zero loss everywhere
        (torch.randn(16, 1), "targets"),  # float targets: regression
    ],
)
def test_regression_model_with_default_loss_is_refused(targets, text):
    model = nn.Linear(3, 1)
    d = random_direction(model, seed=0)
    with pytest.raises(ValueError, match=f"{text}.*loss_fn="):
        surfaces.surface_1d(model, (X, targets), d, [-1.0, 0.0, 1.0], progress=False)
    with pytest.raises(ValueError, match="loss_fn="):
        sam_sharpness(model, (X, targets))
    mse = surfaces.surface_1d(
        model, (X, targets.float().reshape(16, 1)), d, [0.0], progress=False, loss_fn=nn.functional.mse_loss
    )
    assert mse.loss[0] > 0


@pytest.mark.parametrize("bad", [3, 7, -1, -3])
def test_targets_out_of_range_are_refused(bad):
    targets = Y.clone()
    targets[5] = bad
    model = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=rf"out of range for 3 classes.*\[{bad}, {bad}\]"):
        surfaces.surface_1d(model, (X, targets), random_direction(model, seed=0), [0.0], progress=False)
    with pytest.raises(ValueError, match="out of range"):
        cross_entropy(torch.zeros(16, 3), targets)


def test_float_class_targets_are_refused_by_the_default_loss():
    with pytest.raises(ValueError, match="float32 targets"):
        cross_entropy(torch.zeros(16, 3), Y.float())


def test_ignored_targets_are_counted_warned_and_left_out_of_loss_and_accuracy():
    targets = Y.clone()
    targets[:4] = -100
    model = nn.Linear(3, 3)
    with pytest.warns(RuntimeWarning, match="4 of 16 targets are -100"):
        curve = surfaces.surface_1d(model, (X, targets), random_direction(model, seed=0), [0.0], progress=False)
    assert curve.config["n_ignored_targets"] == 4
    with torch.no_grad():
        out = model(X)
    assert curve.loss[0] == pytest.approx(float(nn.functional.cross_entropy(out[4:], Y[4:])), rel=1e-6)
    assert curve.accuracy[0] == pytest.approx(float((out[4:].argmax(1) == Y[4:]).float().mean()), abs=1e-12)
    assert float(top1_accuracy(out, targets)) == pytest.approx(float(top1_accuracy(out[4:], Y[4:])))
    with pytest.warns(RuntimeWarning, match="4 of 16"):
        assert sam_sharpness(model, (X, targets)).config["n_ignored_targets"] == 4
    clean = surfaces.surface_1d(model, (X, Y), random_direction(model, seed=0), [0.0], progress=False)
    assert clean.config["n_ignored_targets"] == 0


# --- no plausible number for an impossible case ----------------------------------------------------------------------


class Cliff(nn.Module):
    """Output log(1 - w) x: finite at w = 0.99, NaN once the ascent pushes w past 1 (rho = 0.05)."""

    def __init__(self, w=0.99):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))

    def forward(self, x):
        return torch.log(1 - self.w) * x


def square(out, y):
    return (out**2).mean()


CLIFF_DATA = (torch.ones(4, 1), torch.zeros(4))


@pytest.mark.parametrize("method", ["first_order", "ascent"])
def test_nonfinite_loss_at_perturbed_point_gives_nan_sharpness_with_warning(method):
    with pytest.warns(RuntimeWarning, match="not finite at a perturbed point"):
        result = sam_sharpness(Cliff(), CLIFF_DATA, rho=0.05, method=method, loss_fn=square)
    assert math.isnan(result.value) and math.isnan(result.perturbed_loss)
    assert math.isfinite(result.loss) and result.config["n_nonfinite"] >= 1


def test_nonfinite_loss_at_w_gives_nan_epsilon_and_m_sharpness():
    with pytest.warns(RuntimeWarning, match="not finite at w"):
        assert math.isnan(epsilon_sharpness(Cliff(1.5), CLIFF_DATA, loss_fn=square).value)
    with pytest.warns(RuntimeWarning, match="not finite"):
        result = m_sharpness(Cliff(), CLIFF_DATA, m=2, loss_fn=square, progress=False)
    assert math.isnan(result.value) and result.config["n_nonfinite"] >= 2


def test_finite_sharpness_is_unchanged_and_warning_free():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = sam_sharpness(Cliff(0.5), CLIFF_DATA, rho=0.05, loss_fn=square)
    # L(w) = log(1 - w)^2, w = 0.5 climbs to 0.55
    assert result.value == pytest.approx(math.log(0.45) ** 2 - math.log(0.5) ** 2, rel=1e-5)
    assert result.config["n_nonfinite"] == 0


class SqrtGate(nn.Module):
    """Class scores sqrt(1 - s) (x A): finite for s <= 1, NaN beyond."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.s = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        return self.fc(x) * torch.sqrt(1 - self.s)


@pytest.mark.parametrize("method", ["fast", "loop"])
def test_accuracy_beside_a_nan_loss_is_nan(method):
    model = SqrtGate()
    with pytest.warns(RuntimeWarning, match="not finite at 1 of 2 points"):
        curve = surfaces.surface_1d(model, (X, Y), {"s": torch.tensor(2.0)}, [0.0, 1.0], progress=False, method=method)
    assert np.isfinite(curve.loss[0]) and np.isfinite(curve.accuracy[0])
    assert np.isnan(curve.loss[1]) and np.isnan(curve.accuracy[1])
    assert curve.config["n_nonfinite"] == 1


class LinearOut(nn.Module):
    """Output x w: a loss linear in w has a zero Hessian."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3, dtype=torch.float64))

    def forward(self, x):
        return x.double() @ self.w


def mean_output(out, y):
    return out.mean()


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize(
    "solver",
    [lambda h, k: power_iteration_eigenpairs(h, k=k, seed=0), lambda h, k: lanczos_eigenpairs(h, k=k, seed=0)],
    ids=["power", "lanczos"],
)
def test_zero_hessian_gives_eigenvalue_zero_converged_with_warning(solver, k):
    hessian = HessianOperator(LinearOut(), mean_output, (X, torch.zeros(16)))
    with pytest.warns(RuntimeWarning, match="maps every vector tried to zero"):
        result = solver(hessian, k)
    assert result.eigenvalues.tolist() == [0.0] * k
    assert result.converged.all()
    assert np.isfinite(result.eigenvectors).all()
    assert np.allclose(np.linalg.norm(result.eigenvectors, axis=0), 1.0)


@pytest.mark.parametrize(
    "estimate",
    [
        lambda h: power_iteration_eigenpairs(h, seed=0),
        lambda h: lanczos_eigenpairs(h, seed=0),
        lambda h: lanczos_eigenpairs(h, seed=0, method="arpack"),
        lambda h: hutchinson_trace(h, max_applications=4, seed=0),
        lambda h: slq_density(h, probes=1, steps=2, seed=0),
    ],
    ids=["power", "lanczos", "arpack", "hutchinson", "slq"],
)
def test_nonfinite_curvature_is_a_clear_error_not_a_number(estimate):
    class Log(nn.Module):  # log(1 - w) with w = 1.5: NaN loss, NaN Hessian
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.5, 0.2], dtype=torch.float64))

        def forward(self, x):
            return torch.log(1 - self.w).sum() * x.double()

    hessian = HessianOperator(Log(), square, CLIFF_DATA)
    with pytest.raises(FloatingPointError, match="non-finite"):
        estimate(hessian)


def test_zero_direction_warns_and_gives_the_constant_loss():
    model = nn.Linear(3, 3)
    zero = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    with pytest.warns(RuntimeWarning, match="direction 0 is zero"):
        curve = surfaces.surface_1d(model, (X, Y), zero, [-1.0, 1.0], progress=False)
    assert curve.loss[0] == curve.loss[1]
    with pytest.warns(RuntimeWarning, match="direction 0 is zero"):
        surfaces.interpolate_1d(model, model, model, (X, Y), [0.0, 1.0], progress=False)


def test_zero_gradient_first_order_sam_sharpness_warns():
    with pytest.warns(RuntimeWarning, match="gradient is zero"):
        result = sam_sharpness(LinearOut(), (X, torch.zeros(16)), loss_fn=lambda out, y: (out * 0).sum())
    assert result.value == 0.0


@pytest.mark.parametrize(
    "measure",
    [
        lambda m: surfaces.surface_1d(m, (X, Y), {}, [0.0], progress=False),
        lambda m: sam_sharpness(m, (X, Y)),
        lambda m: epsilon_sharpness(m, (X, Y)),
        lambda m: HessianOperator(m, nn.functional.cross_entropy, (X, Y)),
    ],
    ids=["surface", "sam", "epsilon", "hessian"],
)
def test_model_without_trainable_parameters_gets_a_clear_error(measure):
    frozen = nn.Linear(3, 3).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        measure(frozen)
