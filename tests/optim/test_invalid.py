"""Every invalid hyperparameter raises a ValueError (TypeError for a wrong kind) whose message names it."""

import inspect

import numpy as np
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


# Registry-driven: every entry, every hyperparameter of its constructor named below, every invalid value, given as a
# keyword to make, in a constructor param group and in a group added later. The values are invalid for every
# optimizer that has the keyword (e.g. rho: SAM's radius and Adadelta's decay both refuse -0.1, NaN and inf).
NAN, INF = float("nan"), float("inf")
INVALID_VALUES = {
    "lr": [-1.0, NAN, INF, -INF],
    "eps": [0.0, -1e-8, NAN, INF],
    "weight_decay": [-0.1, NAN, INF],
    "momentum": [-0.1, 1.0, NAN, INF],
    "dampening": [-0.1, 1.5, NAN],
    "betas": [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999), (NAN, 0.999), (0.9, NAN), (0.9,)],
    "alpha": [-0.1, 1.0, NAN],
    "rho": [-0.1, NAN, INF],
    "eta": [-0.01, NAN, INF],
    "lr_decay": [-1.0, NAN],
    "initial_accumulator_value": [-1.0, NAN],
    "freeze_steps": [-1, 2.5, NAN],
    "threshold": [3.9, NAN, INF],
    "delta": [0.0, -0.1, NAN],
    "wd_ratio": [-0.1, NAN, INF],
    "beta": [1.0, -0.1, NAN],
    "steps": [-1, 1.5, NAN],
    "degenerate": ["adam"],
}
for _flag in (
    "amsgrad",
    "nesterov",
    "decoupled",
    "rectify",
    "centered",
    "sparse_counter",
    "decoupled_weight_decay",
    "adaptive",
    "maximize",
):
    INVALID_VALUES[_flag] = ["yes", None]
INVALID_VALUES["foreach"] = ["yes", 1, 0.0]  # None is valid here (torch's rule picks the path)
# torch's messages where torch checks; the group key of a wrapper's own switch
TORCH_WORDS = {"lr": "learning rate", "eps": "epsilon", "betas": "beta"}
PREFIX = {optim.SAM: "sam_", optim.XGrad: "xgrad_", optim.ExtraGradient: "extragradient_"}


def _keywords(name):
    """(keyword, group key) of every hyperparameter of the entry (and of its base) that INVALID_VALUES covers."""
    found = optim.registry.entry(name)
    out = [(k, PREFIX.get(found.cls, "") + k) for k in inspect.signature(found.cls).parameters if k in INVALID_VALUES]
    if found.base is not None:
        own = {k for k, _ in out}
        out += [(k, g) for k, g in _keywords(found.base) if k not in own]
    return out


REGISTRY_CASES = [
    (name, keyword, key, value)
    for name in optim.names()
    for keyword, key in _keywords(name)
    for value in INVALID_VALUES[keyword]
]


def _match(keyword):
    words = [keyword, TORCH_WORDS.get(keyword, keyword)]
    if keyword == "nesterov":
        words.append("Nesterov")
    return "|".join(words)


@pytest.mark.parametrize(("name", "keyword", "key", "value"), REGISTRY_CASES)
def test_every_entry_refuses_every_invalid_value_in_kwargs_groups_and_added_groups(name, keyword, key, value):
    w1, w2 = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match=_match(keyword)):
        optim.make(name, [w1], **{keyword: value})
    with pytest.raises(ValueError, match=keyword):
        optim.make(name, [{"params": [w1]}, {"params": [w2], key: value}])
    opt = optim.make(name, [w1])
    with pytest.raises(ValueError, match=keyword):
        opt.add_param_group({"params": [w2], key: value})
    assert len(opt.param_groups) == 1  # the refused group was not added


def test_registry_cases_cover_every_entry_and_torch_gaps():
    covered = {name for name, *_ in REGISTRY_CASES}
    assert covered == set(optim.names())
    assert {name for name, keyword, *_ in REGISTRY_CASES if keyword == "foreach"} == set(optim.names())
    assert ("sam", "foreach", "sam_foreach", "yes") in REGISTRY_CASES  # a wrapper's own switch, in its groups
    assert ("extragradient", "foreach", "extragradient_foreach", 1) in REGISTRY_CASES
    assert ("momentum", "momentum", "momentum", 1.0) in REGISTRY_CASES  # torch's SGD lets momentum = 1 through
    assert ("adam", "eps", "eps", 0.0) in REGISTRY_CASES  # torch's Adam lets eps = 0 through
    assert len(REGISTRY_CASES) > 300


@pytest.mark.parametrize("name", optim.names())
@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_numpy_scalars_and_one_element_tensors_are_numbers(name, kind):
    def number(x):
        return np.float32(x) if kind == "numpy" else torch.tensor(x)

    w1, w2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = optim.make(name, [w1], lr=number(0.5))
    opt.add_param_group({"params": [w2], "lr": number(0.25)})
    lrs = [group["lr"] for group in opt.param_groups]
    assert lrs == [0.5, 0.25]
    assert all(type(lr) is float for lr in lrs)
    grouped = optim.make(name, [{"params": [w1], "lr": number(0.5)}], lr=0.1)
    assert type(grouped.param_groups[0]["lr"]) is float


def test_torch_checks_keep_torch_messages():
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="Invalid learning rate: -1.0"):
        optim.make("adam", [w], lr=-1.0)
    with pytest.raises(ValueError, match=r"Invalid lr: inf \(must be a finite number >= 0\)"):
        optim.make("adam", [w], lr=float("inf"))  # torch lets inf through


@pytest.mark.parametrize("name", optim.names())
@pytest.mark.parametrize(("value", "expected"), [(None, None), (True, True), (False, False), (np.bool_(True), True)])
def test_foreach_accepts_none_and_bools_in_every_group_key(name, value, expected):
    w = torch.nn.Parameter(torch.ones(2))
    opt = optim.make(name, [w], foreach=value)
    keys = [k for k in opt.param_groups[0] if k == "foreach" or k.endswith("_foreach")]
    assert "foreach" in keys
    assert optim.registry.entry(name).base is None or len(keys) == 2  # a wrapper's switch and its base's
    assert all(opt.param_groups[0][k] is expected for k in keys)


def test_repulsion_refuses_a_foreach_that_is_not_a_switch():
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"Invalid foreach: 'yes' \(must be None, True or False\)"):
        optim.CheckpointRepulsion([w], foreach="yes")
    assert optim.CheckpointRepulsion([w], foreach=np.bool_(False)).foreach is False


OWN_CLASSES = [optim.RAdam, optim.Adam2k, optim.AdamP, optim.SGDP, optim.AdaBelief, optim.AdaM3, optim.Expectigrad]


@pytest.mark.parametrize("cls", OWN_CLASSES, ids=lambda cls: cls.__name__)
def test_valleys_own_optimizers_refuse_complex_parameters(cls):
    """Their moments would be complex (g·g, not |g|²): a silently wrong step, so refused in the constructor and
    in add_param_group, which leaves the groups as they were."""
    real, cplx = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(4, 4, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"takes real parameters only, got a torch.complex64 one of shape \(4, 4\)"):
        cls([real, cplx], lr=0.1)
    opt = cls([real], lr=0.1)
    with pytest.raises(ValueError, match="takes real parameters only"):
        opt.add_param_group({"params": (p for p in [cplx])})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("cls", OWN_CLASSES[:3] + OWN_CLASSES[4:6], ids=lambda cls: cls.__name__)  # those with betas
@pytest.mark.parametrize("betas", [None, 0.9, "ab"])
def test_betas_that_are_not_a_pair_are_named_not_iterated(cls, betas):
    with pytest.raises(ValueError, match=r"Invalid betas: .* \(need two values\)"):
        cls([torch.nn.Parameter(torch.ones(2))], lr=0.1, betas=betas)


@pytest.mark.parametrize(
    ("key", "first", "later", "text"), [("beta", 0.0, 0.9, "momentum m"), ("sparse_counter", False, True, "count n")]
)
def test_expectigrad_refuses_a_state_it_did_not_keep_and_changes_nothing(key, first, later, text):
    """Raising β above 0 or switching the sparse counter on mid-run would start m or n at 0: refused, state intact."""
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = optim.Expectigrad([{"params": [q]}, {"params": [p], key: first}], lr=0.1)
    p.grad, q.grad = torch.ones(3), torch.ones(2)
    opt.step()
    opt.param_groups[1][key] = later
    before = (p.detach().clone(), q.detach().clone(), opt.state[q]["step"], opt.state[q]["sum_sq"].clone())
    with pytest.raises(ValueError, match=f"{key}.* set after step 1 of a parameter that did not keep its {text}"):
        opt.step()
    assert torch.equal(p, before[0]) and torch.equal(q, before[1])  # the first group did not step either
    assert opt.state[q]["step"] == before[2] and torch.equal(opt.state[q]["sum_sq"], before[3])


@pytest.mark.parametrize(
    ("key", "on", "off", "text"), [("beta", 0.9, 0.0, "momentum m"), ("sparse_counter", True, False, "count n")]
)
def test_expectigrad_refuses_a_state_switched_off_for_a_while(key, on, off, text):
    """On for step 1, off for steps 2-3, on again: m or n was not updated meanwhile (with g = 1 every step, n would
    count 2 of 4 nonzero gradients at step 4, s/n = 2 instead of 1): refused, nothing changed; kept off, it steps."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = optim.Expectigrad([p], lr=0.1, **{key: on})
    for t in range(3):
        opt.param_groups[0][key] = on if t == 0 else off
        p.grad = torch.ones(2)
        opt.step()
    opt.param_groups[0][key] = on
    before = p.detach().clone()
    with pytest.raises(ValueError, match=f"{key}.* set after step 3 of a parameter that did not keep its {text}"):
        opt.step()
    assert torch.equal(p, before) and opt.state[p]["step"] == 3
    opt.param_groups[0][key] = off
    opt.step()
    assert opt.state[p]["step"] == 4


@pytest.mark.parametrize("cls", OWN_CLASSES, ids=lambda cls: cls.__name__)
def test_valleys_own_optimizers_refuse_a_parameter_listed_twice(cls, recwarn):
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=f"{cls.__name__}: a parameter group lists the same parameter twice"):
        cls([p, p], lr=0.1)
    assert not [w for w in recwarn if "duplicate" in str(w.message)]  # refused, not warned about as well


@pytest.mark.parametrize(
    ("state_dict", "message"),
    [
        ({"state": [], "param_groups": []}, "expected a dict with 'state'"),
        ({"param_groups": []}, "expected a dict with 'state'"),
        ({"state": {}}, "expected a dict with 'state'"),
        ({"state": {0: 5}, "param_groups": []}, "the state of parameter 0 must be a dict, got int"),
        ([1, 2], "expected a dict with 'state'"),
    ],
    ids=["state-list", "no-state", "no-groups", "entry-int", "list"],
)
def test_a_state_dict_not_shaped_as_torchs_is_refused_in_one_line(state_dict, message):
    """Each gets a ValueError naming the problem (torch raised AttributeError or KeyError, or kept an int as a
    parameter's state)."""
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=message):
        optim.SGDP([p], lr=0.1).load_state_dict(state_dict)
