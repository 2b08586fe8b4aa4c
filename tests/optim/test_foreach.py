"""The multi-tensor and compiled paths of every registry entry equal its per-tensor path, state included.

Compiling takes seconds per optimizer, device, dtype and branch (10-20 s for the first), more than the default
suite can spend; it checks what the compiled path (``compiled=True``) does without compiling (bfloat16 routing, a
compiler failure), and ``make test-compiled`` (``pytest -m compiled``) compares every optimizer that has one with
its per-tensor path on every branch.
"""

import copy
import importlib
import math
import sys

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import optim
from optim import _compiled
from optim._foreach import buckets, copies, pick, use_foreach

OTHER = {torch.float64: torch.float32, torch.float32: torch.float64, torch.bfloat16: torch.float32}
OWN = ["radam", "adam2k", "adamp", "sgdp", "adabelief", "adam3", "expectigrad"]


def mixed_problem(dtype, seed=0, device="cpu"):
    """Tensors that take different per-tensor decisions within one param group.

    ``w`` enters only through its row directions (scale invariant: AdamP/SGDP project it), ``v`` and ``b`` are
    plain quadratics, ``e`` has a gradient only in its first two coordinates (Expectigrad's sparse counter),
    ``y`` has a zero gradient in its first coordinate at the first call only (that coordinate's count lags one
    step behind for good), ``z`` gets a gradient only on every other call (its step count falls behind), and ``o``
    has the other floating dtype (a second device-and-dtype bucket). Drawn on the CPU, then moved to ``device``.
    """
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w": (4, 3), "v": (3, 4), "b": (3,), "e": (5,), "y": (3,), "z": (2, 2), "o": (3,)}
    targets = {k: torch.randn(s, generator=gen, dtype=torch.float64).to(device) for k, s in shapes.items()}
    params = {
        k: torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64) + 1.0) for k, s in shapes.items()
    }
    direction = torch.randn(4, 3, generator=gen, dtype=torch.float64).to(device)
    for key, p in params.items():
        p.data = p.data.to(device, OTHER[dtype] if key == "o" else dtype)
    calls = [0]

    def loss_fn():
        calls[0] += 1
        w, v, b, e, y, z, o = params.values()
        loss = (direction.to(w.dtype) * w / w.norm(dim=1, keepdim=True)).sum()
        loss = loss + 0.5 * ((v - targets["v"].to(dtype)) ** 2).sum() + 0.5 * ((b - targets["b"].to(dtype)) ** 2).sum()
        loss = loss + 0.5 * ((e[:2] - targets["e"][:2].to(dtype)) ** 2).sum()
        loss = loss + 0.5 * ((o - targets["o"].to(o.dtype)) ** 2).sum().to(dtype)
        first = 1 if calls[0] == 1 else 0
        loss = loss + 0.5 * ((y[first:] - targets["y"][first:].to(dtype)) ** 2).sum()
        if calls[0] % 2:
            loss = loss + 0.5 * ((z - targets["z"].to(dtype)) ** 2).sum()
        return loss

    loss_fn.calls = calls
    return list(params.values()), loss_fn


def run(opt, loss_fn, steps):
    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)


def assert_close(actual, expected, scalar_tol=(1e-5, 1e-12)):
    """Equal to 1e-12 relative in float64, to rounding (a few ulps, accumulated) in float32 and bfloat16."""
    if isinstance(expected, torch.Tensor):
        rtol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(expected.dtype, 4e-2)  # bfloat16: ~10 ulps
        scale = expected.detach().abs().max().item() if expected.numel() else 0.0
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True)
    elif isinstance(expected, float) and not math.isnan(expected):
        assert actual == pytest.approx(expected, rel=scalar_tol[0], abs=scalar_tol[1])
    elif isinstance(expected, float):
        assert math.isnan(actual)
    else:
        assert actual == expected


def assert_same_state(actual, expected, scalar_tol=(1e-5, 1e-12)):
    """Both optimizers (and their bases) hold the same state entries, with close values."""
    while expected is not None:
        assert len(actual.state) == len(expected.state)
        for (key_a, state_a), (key_e, state_e) in zip(actual.state.items(), expected.state.items(), strict=True):
            assert isinstance(key_a, str) == isinstance(key_e, str)
            assert set(state_a) == set(state_e)
            for name in state_e:
                assert_close(state_a[name], state_e[name], scalar_tol)
        actual, expected = getattr(actual, "base_optimizer", None), getattr(expected, "base_optimizer", None)


def make(name, params, kwargs_for, foreach):
    return optim.make(name, params, **{**kwargs_for(name), "foreach": foreach})


# Switches the registry defaults leave off: every branch of every multi-tensor kernel is compared.
VARIANTS = [
    ("radam", {"weight_decay": 0.1}),
    ("radam", {"weight_decay": 0.1, "decoupled_weight_decay": True, "degenerate": "skip"}),
    ("adamp", {"weight_decay": 0.1}),
    ("adamp", {"weight_decay": 0.1, "nesterov": True}),
    ("sgdp", {"weight_decay": 0.1, "dampening": 0.2}),
    ("sgdp", {"weight_decay": 0.1, "nesterov": True}),
    ("adabelief", {"weight_decay": 0.1}),
    ("adabelief", {"weight_decay": 0.1, "decoupled": False, "rectify": True}),
    ("adabelief", {"weight_decay": 0.1, "eps": 1e-2}),  # ε inside s and in the denominator shows at 1e-12
    ("adabelief", {"eps": 1e-2, "rectify": True, "betas": (0.6, 0.9)}),
    ("adabelief", {"eps": 1e-2, "betas": (1e-8, 0.9)}),  # below FUSED_MIN_BETA1: the plain chain
    ("adabelief", {"eps": 1e-2, "betas": (0.9, 0.0)}),  # β₂ = 0: s holds the last squared residual
    ("adam3", {"weight_decay": 0.1}),
    ("adam3", {"weight_decay": 0.1, "decoupled": False}),
    ("expectigrad", {"beta": 0.0}),
    ("expectigrad", {"sparse_counter": False}),
    ("asam", {"eta": 0.1}),
]


def compare_paths(name, dtype, kwargs, device, steps=12):
    runs = []
    for foreach in (False, True):
        torch.manual_seed(0)
        params, loss_fn = mixed_problem(dtype, device=device)
        opt = optim.make(name, params, **{**kwargs, "foreach": foreach})
        run(opt, loss_fn, steps)
        runs.append((params, opt))
    (reference, per_tensor), (params, multi_tensor) = runs
    for p, q in zip(params, reference, strict=True):
        assert p.dtype == q.dtype
        assert_close(p.detach(), q.detach())
    assert_same_state(multi_tensor, per_tensor, (4e-2, 1e-2) if dtype == torch.bfloat16 else (1e-5, 1e-12))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_foreach_equals_per_tensor(name, dtype, kwargs_for, device):
    compare_paths(name, dtype, kwargs_for(name), device)


@pytest.mark.parametrize("name", OWN)
def test_foreach_equals_per_tensor_in_bfloat16(name, kwargs_for, device):
    """bfloat16 has no fused kernels: the plain multi-tensor arithmetic runs, to bfloat16 rounding."""
    compare_paths(name, torch.bfloat16, kwargs_for(name), device, steps=6)


@pytest.mark.parametrize(("name", "overrides"), VARIANTS)
def test_foreach_equals_per_tensor_on_every_branch(name, overrides, kwargs_for, device):
    compare_paths(name, torch.float64, {**kwargs_for(name), **overrides}, device, steps=14)


@pytest.mark.parametrize("name", OWN)
def test_foreach_equals_per_tensor_where_memory_is_not_one_dense_block(name, kwargs_for, device):
    """A parameter sliced from a larger tensor, and gradients set by hand in another layout than their parameter.

    torch's fused kernels walk memory in storage order whatever the strides, so the multi-tensor path must not
    hand them these tensors: same result as the per-tensor path, and the elements between the slice's are untouched.
    """
    runs = []
    for foreach in (False, True):
        gen = torch.Generator().manual_seed(0)
        base = torch.randn(4, 10, generator=gen, dtype=torch.float64).to(device)
        params = [
            torch.nn.Parameter(base[:, ::2]),
            torch.nn.Parameter(torch.randn(3, 5, generator=gen).double().to(device)),
        ]
        opt = make(name, params, kwargs_for, foreach)
        for _ in range(8):  # RAdam's rectified (fused) steps start at step 6
            params[0].grad = torch.randn(4, 5, generator=gen, dtype=torch.float64).to(device)  # strides differ
            params[1].grad = torch.randn(5, 3, generator=gen, dtype=torch.float64).to(device).t()  # transposed
            opt.step()
        runs.append((base, params))
    (base_ref, reference), (base, params) = runs
    assert torch.equal(base[:, 1::2], base_ref[:, 1::2])
    for p, q in zip(params, reference, strict=True):
        assert_close(p.detach(), q.detach())


@pytest.mark.parametrize("name", OWN)
def test_foreach_follows_a_parameter_whose_layout_changes(name, kwargs_for, device):
    """A model turned channels-last between steps: kept work buffers must follow the new layout."""
    runs = []
    for foreach in (False, True):
        gen = torch.Generator().manual_seed(1)
        weight = torch.nn.Parameter(torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64).to(device))
        opt = make(name, [weight], kwargs_for, foreach)
        for step in range(8):
            if step == 4:
                weight.data = weight.data.contiguous(memory_format=torch.channels_last)
                for value in opt.state[weight].values():
                    if isinstance(value, torch.Tensor) and value.dim() == 4:
                        value.data = value.data.contiguous(memory_format=torch.channels_last)
            layout = torch.contiguous_format if step < 4 else torch.channels_last
            grad = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64).to(device)
            weight.grad = grad.contiguous(memory_format=layout)
            opt.step()
        runs.append(weight.detach())
    assert_close(runs[1], runs[0])


@pytest.mark.parametrize("first", [False, True], ids=["per_tensor_then_foreach", "foreach_then_per_tensor"])
def test_state_dict_moves_between_paths(name, first, kwargs_for, device):
    torch.manual_seed(0)
    params, loss_fn = mixed_problem(torch.float64, device=device)
    opt = make(name, params, kwargs_for, first)
    run(opt, loss_fn, 5)
    saved_state = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in params]
    calls_at_save = loss_fn.calls[0]
    run(opt, loss_fn, 7)

    torch.manual_seed(0)
    resumed_params, resumed_loss_fn = mixed_problem(torch.float64, device=device)
    resumed_loss_fn.calls[0] = calls_at_save
    with torch.no_grad():
        for p, saved in zip(resumed_params, saved_params, strict=True):
            p.copy_(saved)
    resumed = make(name, resumed_params, kwargs_for, not first)
    resumed.load_state_dict(saved_state)
    for group in resumed.param_groups:  # a state_dict carries each group's switches, as torch's do
        for key in [k for k in group if k == "foreach" or k.endswith("_foreach")]:
            group[key] = not first
    run(resumed, resumed_loss_fn, 7)
    for p, q in zip(resumed_params, params, strict=True):
        assert_close(p.detach(), q.detach())
    assert_same_state(resumed, opt)


def test_problem_takes_different_decisions_per_tensor(kwargs_for, device):
    params, loss_fn = mixed_problem(torch.float64, device=device)
    w, v, b, e, y, z, o = params
    opts = {name: make(name, params, kwargs_for, True) for name in ("adamp", "radam", "expectigrad")}
    for opt in opts.values():
        run(opt, loss_fn, 3)
    state = opts["adamp"].state
    assert (state[w]["projection"], state[v]["projection"]) == ("channel", "none")
    assert opts["radam"].state[z]["step"] < opts["radam"].state[v]["step"]
    assert (opts["expectigrad"].state[e]["counter"] < 1).tolist() == [False, False, True, True, True]
    params, loss_fn = mixed_problem(torch.float64, device=device)
    expectigrad = make("expectigrad", params, kwargs_for, True)
    run(expectigrad, loss_fn, 3)
    assert expectigrad.state[params[4]]["counter"].tolist() == [2.0, 3.0, 3.0]


def test_default_rule_is_torchs():
    cpu = [torch.zeros(1)]
    assert not use_foreach(None, cpu)
    assert use_foreach(True, cpu)
    assert not use_foreach(False, cpu)
    assert not use_foreach(None, [])
    opt = optim.RAdam(cpu)
    assert opt.param_groups[0]["foreach"] is None


def test_pick_takes_compiled_first_then_the_foreach_rule():
    cpu = [torch.zeros(1)]
    kernels = ("per-tensor", "multi-tensor")
    assert pick(*kernels, {"compiled": True, "foreach": False}, cpu, "compiled") == "compiled"
    assert pick(*kernels, {"compiled": True, "foreach": True}, cpu) == "multi-tensor"  # no compiled kernel
    assert pick(*kernels, {"compiled": False, "foreach": True}, cpu, "compiled") == "multi-tensor"
    assert pick(*kernels, {"foreach": None}, cpu, "compiled") == "per-tensor"  # a state_dict from before compiled


def test_buckets_keep_order_and_split_by_dtype_and_key():
    a, b, c, d = torch.zeros(1), torch.zeros(1, dtype=torch.float64), torch.zeros(2), torch.zeros(3)
    found = buckets([[a, b, c, d], ["a", "b", "c", "d"]], keys=[1, 1, 2, 1])
    assert [(key, names) for key, (_, names) in found] == [(1, ["a", "d"]), (1, ["b"]), (2, ["c"])]


COMPILED = [
    name for name in optim.names() if "compiled" in getattr(optim.registry.entry(name).cls, "HYPERPARAMETERS", {})
]
MODULES = {importlib.import_module(optim.registry.entry(name).cls.__module__) for name in COMPILED}
RULES = [
    value
    for name, module in list(sys.modules.items())
    if name.startswith("optim.")
    for value in vars(module).values()
    if isinstance(value, _compiled.Rule)
]


# State scalars: AdamP's and SGDP's cosines come from another summation order than the per-tensor path's (whose
# matrix products the multi-tensor path shares), so in float32 they agree to its rounding, ~1e-7 of |cos| <= 1.
STATE_TOL = {torch.float64: (1e-5, 1e-12), torch.float32: (1e-5, 1e-5), torch.bfloat16: (4e-2, 1e-2)}


def compare_compiled(name, dtype, kwargs, device, steps=12, one_dtype=False):
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        params, loss_fn = mixed_problem(dtype, device=device)
        if one_dtype:  # the problem's one tensor of the other dtype, too: one compiled kind
            params[-1].data = params[-1].data.to(dtype)
        opt = optim.make(name, params, **{**kwargs, "compiled": compiled})
        run(opt, loss_fn, steps)
        runs.append((params, opt))
    (reference, per_tensor), (params, compiled_) = runs
    for p, q in zip(params, reference, strict=True):
        assert_close(p.detach(), q.detach())
    assert_same_state(compiled_, per_tensor, STATE_TOL[dtype])


@pytest.mark.compiled
def test_compiled_batches_and_own_calls_equal_per_tensor(monkeypatch, device):
    """AdaBelief in float64 with coupled decay: small tensors in one batch, in batches of at most 10 elements, then
    each tensor in a call of its own (the limits of a GPU alike)."""
    kwargs = {"lr": 0.02, "weight_decay": 0.1, "decoupled": False}
    compare_compiled("adabelief", torch.float64, kwargs, device, one_dtype=True)
    monkeypatch.setattr(_compiled, "BATCH", 10)
    monkeypatch.setattr(_compiled, "DEVICE_BATCH", 10)
    compare_compiled("adabelief", torch.float64, kwargs, device, one_dtype=True)
    monkeypatch.setattr(_compiled, "OWN_CALL", 8)
    monkeypatch.setattr(_compiled, "DEVICE_OWN_CALL", 8)
    compare_compiled("adabelief", torch.float64, kwargs, device, one_dtype=True)


@pytest.mark.compiled
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", COMPILED)
def test_compiled_equals_per_tensor(name, dtype, kwargs_for, device):
    compare_compiled(name, dtype, kwargs_for(name), device)


@pytest.mark.compiled
@pytest.mark.parametrize(("name", "overrides"), [v for v in VARIANTS if v[0] in COMPILED], ids=str)
def test_compiled_equals_per_tensor_on_every_branch(name, overrides, kwargs_for, device):
    compare_compiled(name, torch.float64, {**kwargs_for(name), **overrides}, device)


@pytest.mark.compiled
@pytest.mark.parametrize("name", COMPILED)
def test_compiled_steps_a_lone_scalar_parameter(name, device):
    """A batch of one element (a learnable temperature alone in its group): its work tensor is padded to two."""
    runs = []
    for compiled in (False, True):
        p = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64, device=device))
        opt = optim.make(name, [p], lr=0.1, compiled=compiled)
        for step in range(3):
            p.grad = torch.tensor(0.5 - step, dtype=torch.float64, device=device)
            opt.step()
        runs.append(p.detach().clone())
    torch.testing.assert_close(runs[1], runs[0], rtol=1e-12, atol=0)


@pytest.mark.compiled
@pytest.mark.parametrize("name", COMPILED)
def test_compiled_numbers_are_inputs_a_new_learning_rate_compiles_nothing(name, device):
    """The step-dependent numbers (learning rate, bias corrections) reach the kernels as one tensor: a learning rate
    changed at every step, as by a schedule, runs the graphs compiled at the first step."""
    params, loss_fn = mixed_problem(torch.float64, device=device)
    opt = optim.make(name, params, lr=0.02, compiled=True)
    for step in range(4):
        opt.param_groups[0]["lr"] = 0.02 / (1 + step)
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
        if step == 0:
            torch._dynamo.utils.counters.clear()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0


@pytest.mark.compiled
@pytest.mark.parametrize("name", COMPILED)
def test_every_compiled_graph_is_made_before_any_tensor_changes(name, monkeypatch):
    """Every graph compiles on stand-ins, before any tensor changes; the real tensors compile nothing more.

    Shapes unlike the stand-ins' (a row-invariant 5 x 7 tensor, projected by AdamP and SGDP, and 11 plain values):
    a stand-in as long as a rule's count of numbers had its size fixed with them, and the first real tensor
    compiled again, after the rules before it had changed their tensors.
    """
    torch._dynamo.reset()
    for rule in RULES:
        monkeypatch.setattr(rule, "_ready", set())
        monkeypatch.setattr(rule, "_compiled", {})
    graphs = torch._dynamo.utils.counters["stats"]
    prepare, compiled_there = _compiled.Rule._prepare, []

    def counted(self, *args):
        before = graphs["unique_graphs"]
        prepare(self, *args)
        compiled_there.append(graphs["unique_graphs"] - before)

    monkeypatch.setattr(_compiled.Rule, "_prepare", counted)
    gen = torch.Generator().manual_seed(0)
    w, v = (torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((5, 7), (11,)))
    direction = torch.randn(5, 7, generator=gen)
    opt = optim.make(name, [w, v], lr=0.01, compiled=True)
    before = graphs["unique_graphs"]
    for _ in range(2):
        opt.zero_grad()
        ((direction * w / w.norm(dim=1, keepdim=True)).sum() + v.square().sum()).backward()
        opt.step()
    assert graphs["unique_graphs"] - before == sum(compiled_there) > 0


@pytest.mark.compiled
@pytest.mark.parametrize("beta1", [0.0, 0.5, 1e-8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["adabelief", "adam3", "adamp", "expectigrad"])
def test_compiled_first_moments_after_a_spike_equal_the_per_tensor_ones(name, dtype, beta1):
    """β₁ ≤ 0.5 after a gradient 1e10 times the next: torch's lerp (the other paths) keeps the new gradient where
    the compiled rules' one-line m + (1-β₁)(g - m) lost it (m was 0, and the parameter did not move)."""
    betas = {"beta": beta1} if name == "expectigrad" else {"betas": (beta1, 0.999)}
    runs = []
    for compiled in (False, True):
        p = torch.nn.Parameter(torch.ones(3, dtype=dtype))
        opt = optim.make(name, [p], lr=1e-3, compiled=compiled, **betas)
        for grad in (1e10, 1.0):
            p.grad = torch.full((3,), grad, dtype=dtype)
            opt.step()
        runs.append((p.detach().clone(), opt.state[p].get("exp_avg")))  # Expectigrad keeps none at β = 0
    (expected, expected_avg), (found, found_avg) = runs
    if expected_avg is not None:
        torch.testing.assert_close(found_avg, expected_avg, rtol=1e-6, atol=0)
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=0)


@pytest.mark.compiled
def test_compiled_cpu_kernels_run_on_one_thread(monkeypatch):
    """Stated in the options, not planned from the first tensors' sizes: even a large first tensor gets one thread."""
    rule = _compiled.Rule(lambda a, b: (a * b).flatten(1).sum(1), writes=(), pointwise=False)
    monkeypatch.setattr(rule, "_prepare", lambda *args: None)  # compiled on the first real call, a large tensor
    rows = [torch.rand(64, 4097)], [torch.rand(64, 4097)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch._inductor.config.patch(force_disable_caches=True):
            _, code = run_and_get_code(rule.run, "test", rows, [{}])
            _, control = run_and_get_code(torch.compile(rule.update, dynamic=True), rows[0][0], rows[1][0])
    finally:
        torch.set_num_threads(threads)
    assert "omp parallel" in "".join(control)  # what the check looks for: torch.compile's own choice here
    assert code and "omp parallel" not in "".join(code)


@pytest.mark.compiled
@pytest.mark.parametrize(("numel", "parallel"), [(1 << 19, False), (1 << 20, True)])
def test_compiled_cpu_kernels_of_large_tensors_run_on_every_thread(numel, parallel):
    """A pointwise rule's tensor of 2^20 elements or more gets a kernel on torch's intra-op threads, planned so even
    though the kernel was compiled on stand-ins; smaller ones stay on one thread."""
    rule = _compiled.Rule(lambda a, b: a.copy_(a * b), writes=(0,))
    rows = [torch.rand(numel)], [torch.rand(numel)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch._inductor.config.patch(force_disable_caches=True):
            _, code = run_and_get_code(rule.run, "test", rows, [{}])
    finally:
        torch.set_num_threads(threads)
    assert code and ("omp parallel num_threads(2)" in "".join(code)) == parallel


@pytest.mark.compiled
@pytest.mark.parametrize("name", COMPILED)
def test_compiled_steps_a_large_tensor_as_the_per_tensor_path(name):
    """A tensor of 2^20 elements (its kernel on every intra-op thread) beside a small one, over three steps."""
    runs = []
    for compiled in (False, True):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((1 << 10, 1 << 10), (3, 4))]
        opt = optim.make(name, params, lr=0.01, compiled=compiled)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs.append([p.detach().clone() for p in params])
    for compiled, per_tensor in zip(*runs, strict=True):
        torch.testing.assert_close(compiled, per_tensor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", COMPILED)
def test_low_precision_takes_the_multi_tensor_path(name, kwargs_for, monkeypatch, device):
    """bfloat16 tensors never reach the compiler (it would not round at every op as the per-tensor path does)."""

    def not_to_be_called(*args, **kwargs):
        raise AssertionError("a bfloat16 tensor reached torch.compile")

    for rule in RULES:
        monkeypatch.setattr(rule, "_wrapper", lambda threads: not_to_be_called)
        monkeypatch.setattr(rule, "_ready", set())
    compare_compiled(name, torch.bfloat16, kwargs_for(name), device, one_dtype=True)


def test_every_compiled_entry_is_listed():
    assert {"adabelief", "adam3", "adamp", "expectigrad", "sgdp"} <= set(COMPILED)
    assert all(any(name.endswith("_compiled") for name in vars(module)) for module in MODULES)
    # AdaBelief's, AdaM3's, Expectigrad's, the projection test, AdamP's projected measure and step, SGDP's step,
    # projected step and radial dots
    assert len(RULES) == 9


@pytest.mark.parametrize("name", COMPILED)
def test_a_compiler_failure_changes_nothing(name, monkeypatch, device):
    """If torch.compile fails (no C++ compiler, say), the step stops with one line and changes nothing."""

    def broken(*args, **kwargs):
        raise OSError("cc: not found\nmore lines")

    for rule in RULES:
        monkeypatch.setattr(rule, "_wrapper", lambda threads: broken)
        monkeypatch.setattr(rule, "_ready", set())
    torch.manual_seed(0)
    params, loss_fn = mixed_problem(torch.float64, device=device)
    opt = optim.make(name, params, lr=0.02, compiled=True)
    opt.zero_grad()
    loss_fn().backward()
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match=r"compiled=True could not compile .*\(OSError: cc: not found\); no param"):
        opt.step()
    for p, q in zip(params, before, strict=True):
        assert torch.equal(p.detach(), q)
    for state in opt.state.values():  # moment buffers untouched (a sparse counter starts at a tiny offset)
        assert all(v.abs().max() < 1e-30 for k, v in state.items() if torch.is_tensor(v) and k != "step")


def eager(rule):
    """A stand-in for ``rule._wrapper``: the rule's update run by torch as written, without compiling."""

    def call(*tensors, numbers, names, **switches):
        return rule.update(*tensors, **dict(zip(names, numbers.unbind(), strict=True)), **switches)

    return lambda threads: call


@pytest.mark.parametrize("broken_rule", range(len(RULES)))
@pytest.mark.parametrize("name", COMPILED)
def test_a_compiler_failure_of_any_one_rule_changes_nothing(name, broken_rule, monkeypatch):
    """Each rule in turn fails to compile, the others run uncompiled: an optimizer whose step uses that rule stops
    before any of its rules changed a tensor (on a problem where AdamP and SGDP take all of theirs)."""

    def broken(*args, **kwargs):
        raise OSError("cc: not found")

    for index, rule in enumerate(RULES):
        monkeypatch.setattr(rule, "_wrapper", (lambda threads: broken) if index == broken_rule else eager(rule))
        monkeypatch.setattr(rule, "_ready", set())
    torch.manual_seed(0)
    params, loss_fn = mixed_problem(torch.float64)
    opt = optim.make(name, params, lr=0.02, compiled=True)
    opt.zero_grad()
    loss_fn().backward()
    before = [p.detach().clone() for p in params]
    try:
        opt.step()
    except RuntimeError as error:
        assert "could not compile" in str(error)
        assert all(torch.equal(p.detach(), q) for p, q in zip(params, before, strict=True))
        for state in opt.state.values():
            assert all(v.abs().max() < 1e-30 for k, v in state.items() if torch.is_tensor(v) and k != "step")
    else:
        assert not any(torch.equal(p.detach(), q) for p, q in zip(params, before, strict=True))


def test_copies_are_new_tensors_with_equal_bits():
    dense = torch.tensor([-0.0, 0.0, float("inf"), -float("inf"), float("nan"), 1e-310, -3.5], dtype=torch.float64)
    strided = torch.arange(12.0).reshape(3, 4)[:, ::2]
    last = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    others = [torch.tensor([complex(-0.0, -1.0), complex(1.0, float("inf"))]), torch.tensor([3, -7]), last]
    made = copies([dense, strided, *others])
    assert torch.equal(made[0].view(torch.int64), dense.view(torch.int64))  # signed zeros, inf, NaN, a subnormal
    assert torch.equal(made[1], strided)
    assert torch.equal(made[2].view(torch.float32), others[0].view(torch.float32))  # complex: -0 and inf parts
    assert made[3].dtype == torch.int64 and made[3].tolist() == [3, -7]
    assert made[4].stride() == last.stride() and torch.equal(made[4], last)
    assert all(m.data_ptr() != t.data_ptr() for m, t in zip(made, [dense, strided, *others], strict=True))
    assert copies([]) == []


def test_a_gpu_batches_larger_tensors_and_keeps_no_work_tensors():
    """Off the CPU (here the meta device) tensors below 2^20 elements are batched, strided ones too."""
    strided = torch.empty(1 << 18, 2, device="meta")[:, 0]  # 2^18 elements, not contiguous
    assert _compiled.compilable([strided]) and not _compiled.compilable([torch.empty(1 << 18, 2)[:, 0]])
    assert _compiled.limits(torch.device("meta")) == (_compiled.DEVICE_OWN_CALL, _compiled.DEVICE_BATCH)
    rule = _compiled.Rule(lambda x: None, writes=())
    flats, views = rule._work([[torch.empty(3, device="meta"), torch.empty(2, 2, device="meta")]])
    assert flats[0].shape == (7,) and [v.shape for v in views[0]] == [(3,), (2, 2)] and not rule._work_kept


def test_work_tensors_of_a_single_element_are_padded_to_two():
    rule = _compiled.Rule(lambda x: None, writes=())
    flats, views = rule._work([[torch.empty(())], [torch.empty(())]])
    assert [f.shape for f in flats] == [(2,), (2,)] and [v[0].shape for v in views] == [(), ()]


def test_adam3_multi_tensor_path_keeps_a_subnormal_eps():
    """float32, ε = 1e-45 (subnormal) and a coordinate whose gradient stays 0: its v is ε on the per-tensor path,
    so its step is 0/√ε = 0; the fused kernel's v + ε/β₂ then β₂(...) lost ε to rounding (v = 0, a NaN step)."""
    runs = []
    for foreach in (False, True):
        p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        opt = optim.AdaM3([p], lr=1e-3, betas=(1e-8, 0.5), eps=1e-45, foreach=foreach)
        for _ in range(2):
            p.grad = torch.tensor([0.0, 1.0])
            opt.step()
        runs.append((p.detach().clone(), opt.state[p]["exp_avg_sq"].clone()))
    (expected, expected_v), (found, found_v) = runs
    assert expected.isfinite().all() and expected_v[0] > 0
    torch.testing.assert_close(found, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(found_v, expected_v, rtol=1e-6, atol=0)
