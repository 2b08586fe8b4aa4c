import math

import pytest
import torch

import optim


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
def test_penalty_gradient_and_distances_match_the_formula(foreach):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    rep = optim.CheckpointRepulsion(model, sigma=0.7, strength=2.0, foreach=foreach)
    assert rep.penalty().item() == 0.0
    rep.add_checkpoint()
    checkpoint_a = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rep.add_checkpoint()
    checkpoint_b = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))

    params = list(model.parameters())
    d = [
        sum(((p - c) ** 2).sum().item() for p, c in zip(params, ck, strict=True)) for ck in (checkpoint_a, checkpoint_b)
    ]
    k = [math.exp(-di / (2 * 0.7**2)) for di in d]
    penalty = rep.penalty()
    assert penalty.item() == pytest.approx(2.0 * sum(k), rel=1e-14)
    assert rep.distances() == pytest.approx([math.sqrt(di) for di in d], rel=1e-14)
    penalty.backward()
    for i, p in enumerate(params):
        expected = sum(
            -(2.0 / 0.7**2) * (p.detach() - ck[i]) * ki for ck, ki in zip((checkpoint_a, checkpoint_b), k, strict=True)
        )
        assert torch.allclose(p.grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("foreach", [False, True], ids=["per_tensor", "foreach"])
def test_float16_distances_are_summed_without_overflow(foreach):
    """1000 float16 coordinates 10 from the checkpoint: d = 1000 · 10² = 1e5 overflows float16 (65504), which gave
    distance inf, penalty 0 and gradient 0. By hand (σ = 100, s = 1): √d = 316.23, P = e^{-d/(2σ²)} = e^{-5},
    ∂P/∂θ_i = -(10/σ²) e^{-5}."""
    w = torch.nn.Parameter(torch.zeros(1000, dtype=torch.float16))
    rep = optim.CheckpointRepulsion([w], sigma=100.0, foreach=foreach)
    rep.add_checkpoint()
    with torch.no_grad():
        w.add_(10.0)
    assert rep.distances() == pytest.approx([math.sqrt(1e5)], rel=1e-6)
    penalty = rep.penalty()
    assert penalty.item() == pytest.approx(math.exp(-5), rel=1e-6)
    penalty.backward()
    assert w.grad.dtype == torch.float16
    torch.testing.assert_close(w.grad.float(), torch.full((1000,), -1e-3 * math.exp(-5)), rtol=1e-3, atol=0)


def test_checkpoints_are_detached_and_in_the_state_dict():
    w = torch.nn.Parameter(torch.ones(3))
    rep = optim.CheckpointRepulsion([w], sigma=2.0, strength=0.5)
    rep.add_checkpoint()
    assert not rep.checkpoints[0][0].requires_grad
    with torch.no_grad():
        w.mul_(3.0)
    state = rep.state_dict()
    other = optim.CheckpointRepulsion([w])
    other.load_state_dict(state)
    assert other.sigma == 2.0 and other.strength == 0.5
    assert torch.equal(other.checkpoints[0][0], torch.ones(3))
    assert other.penalty().item() == rep.penalty().item()
    rep.clear()
    assert rep.distances() == [] and rep.penalty().item() == 0.0


def test_repulsion_pushes_training_away_from_a_checkpointed_minimum():
    w = torch.nn.Parameter(torch.tensor([0.05, 0.0]))
    rep = optim.CheckpointRepulsion([w], sigma=0.5, strength=1.0)
    with torch.no_grad():
        w.zero_()
    rep.add_checkpoint()  # the minimum of the task loss itself
    with torch.no_grad():
        w.copy_(torch.tensor([0.05, 0.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    for _ in range(50):
        opt.zero_grad()
        (0.5 * (w**2).sum() * 0.1 + rep.penalty()).backward()
        opt.step()
    assert rep.distances()[0] > 0.5
