"""Every invalid hyperparameter raises a ValueError (TypeError for a wrong kind) whose message names it."""

import pytest
import torch

import optim

# (registry entry, keyword, invalid value, text the message must contain)
INVALID = [
    ("radam", "lr", -1.0, "lr"),
    ("radam", "betas", (1.0, 0.999), "betas parameter at index 0"),
    ("radam", "betas", (0.9, -0.1), "betas parameter at index 1"),
    ("radam", "eps", 0.0, "eps"),
    ("radam", "weight_decay", -0.1, "weight_decay"),
    ("radam", "decoupled_weight_decay", "yes", "decoupled_weight_decay"),
    ("radam", "threshold", 3.9, "threshold"),
    ("radam", "degenerate", "adam", "degenerate"),
    ("adam2k", "lr", float("nan"), "lr"),
    ("adam2k", "betas", (0.9, 1.0), "betas parameter at index 1"),
    ("adam2k", "eps", -1e-8, "eps"),
    ("adam2k", "freeze_steps", -1, "freeze_steps"),
    ("adam2k", "freeze_steps", 2.5, "freeze_steps"),
    ("adamp", "lr", -1e-3, "lr"),
    ("adamp", "betas", (-0.5, 0.999), "betas parameter at index 0"),
    ("adamp", "eps", 0.0, "eps"),
    ("adamp", "weight_decay", -1.0, "weight_decay"),
    ("adamp", "delta", 0.0, "delta"),
    ("adamp", "wd_ratio", -0.1, "wd_ratio"),
    ("adamp", "nesterov", 1, "nesterov"),
    ("sgdp", "lr", -0.1, "lr"),
    ("sgdp", "momentum", 1.0, "momentum"),
    ("sgdp", "dampening", 1.5, "dampening"),
    ("sgdp", "weight_decay", -1e-4, "weight_decay"),
    ("sgdp", "eps", 0.0, "eps"),
    ("sgdp", "delta", -0.1, "delta"),
    ("sgdp", "wd_ratio", float("inf"), "wd_ratio"),
    ("expectigrad", "lr", -1.0, "lr"),
    ("expectigrad", "beta", 1.0, "beta"),
    ("expectigrad", "eps", 0.0, "eps"),
    ("expectigrad", "sparse_counter", None, "sparse_counter"),
    ("adabelief", "lr", -1.0, "lr"),
    ("adabelief", "betas", (1.2, 0.999), "betas parameter at index 0"),
    ("adabelief", "eps", 0.0, "eps"),
    ("adabelief", "weight_decay", -1.0, "weight_decay"),
    ("adabelief", "decoupled", "no", "decoupled"),
    ("adabelief", "rectify", 0, "rectify"),
    ("adam3", "lr", -1.0, "lr"),
    ("adam3", "betas", (0.9,), "betas"),
    ("adam3", "eps", -1.0, "eps"),
    ("adam3", "weight_decay", -1.0, "weight_decay"),
    ("adam3", "decoupled", None, "decoupled"),
    ("sam", "rho", -0.05, "rho"),
    ("sam", "eta", -0.01, "eta"),
    ("asam", "adaptive", "yes", "adaptive"),
    ("xgrad_adam", "steps", -1, "steps"),
    ("xgrad_sgdm", "steps", 1.5, "steps"),
    # torch's own classes keep torch's messages
    ("adam", "lr", -1.0, "learning rate"),
    ("adam", "betas", (1.0, 0.999), "beta parameter at index 0"),
    ("momentum", "momentum", -0.5, "momentum value"),
]


@pytest.mark.parametrize(("name", "keyword", "value", "text"), INVALID)
def test_invalid_hyperparameter_raises_value_error_naming_it(name, keyword, value, text):
    w = torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=text):
        optim.make(name, [w], **{keyword: value})


def test_sgdp_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGDP([torch.nn.Parameter(torch.zeros(2))], lr=0.1, nesterov=True)


def test_sam_group_override_is_validated():
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="rho"):
        optim.SAM(torch.optim.SGD([{"params": [w], "sam_rho": -1.0}], lr=0.1))


def test_wrappers_reject_non_optimizers_and_xgrad_unsupported_bases():
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError, match="base_optimizer"):
        optim.ExtraGradient([w])
    with pytest.raises(TypeError, match="Adagrad"):
        optim.XGrad(torch.optim.Adagrad([w]))
    with pytest.raises(TypeError, match="AdamP"):
        optim.XGrad(optim.AdamP([w]))


def test_repulsion_and_registry_reject_bad_input():
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="sigma"):
        optim.CheckpointRepulsion([w], sigma=0.0)
    with pytest.raises(ValueError, match="strength"):
        optim.CheckpointRepulsion([w], strength=-1.0)
    with pytest.raises(ValueError, match="'nadam'"):
        optim.make("nadam", [w])
