"""Shared cases for the optim tests: per-entry overrides that make every registry entry fit the test problems."""

import pytest

import optim

# Entries whose registry defaults do not suit a few hundred steps on the small test problems.
# Adam2k's registry default freezes 2000 steps; Adadelta keeps its lr = 1.
OVERRIDES = {"adam2k": {"freeze_steps": 3}}

# Step sizes that make each family decrease the test problems within the step budget.
LR_QUADRATIC = {"adadelta": 1.0, "adagrad": 0.2, "sgdp": 0.05}
LR_ROSENBROCK = {"adadelta": 1.0, "sgd": 1e-3, "momentum": 1e-4, "nesterov": 1e-4, "sgdp": 1e-4, "sam": 1e-4}
LR_ROSENBROCK |= {"radam": 2e-3, "radam_paper": 2e-3, "asam": 1e-4, "xgrad_sgdm": 1e-4, "extragradient": 1e-3}
DEFAULT_LR = 0.02


def _kwargs_for(name: str, problem: str = "quadratic") -> dict:
    table = LR_QUADRATIC if problem == "quadratic" else LR_ROSENBROCK
    return {**OVERRIDES.get(name, {}), "lr": table.get(name, DEFAULT_LR)}


@pytest.fixture
def kwargs_for():
    """Registry overrides (lr and the like) for an entry on the quadratic or the Rosenbrock problem."""
    return _kwargs_for


@pytest.fixture(params=optim.names())
def name(request):
    return request.param
