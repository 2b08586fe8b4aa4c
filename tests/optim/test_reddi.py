"""Reddi et al. (2018)'s online problem: f_t(x) = C x if t mod 3 == 1 else −x on [−1, 1] (projected by clipping)."""

import pytest
import torch

import optim

C = 3.0


def run_online(factory, steps=1500):
    x = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = factory([x])
    for t in range(1, steps + 1):
        x.grad = torch.full_like(x, C if t % 3 == 1 else -1.0)
        opt.step()
        with torch.no_grad():
            x.clamp_(-1.0, 1.0)
    return x.item()


BETA2 = 1 / (1 + C**2)


def test_adam_drifts_to_the_worst_point():
    assert run_online(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.0, BETA2))) > 0.95


@pytest.mark.parametrize(
    "factory",
    [
        lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.0, BETA2), amsgrad=True),
        lambda ps: optim.Expectigrad(ps, lr=0.01),
        lambda ps: optim.Expectigrad(ps, lr=0.01, beta=0.0),
    ],
    ids=["amsgrad", "expectigrad", "expectigrad_beta0"],
)
def test_amsgrad_and_expectigrad_reach_the_minimum(factory):
    assert run_online(factory) < -0.95
