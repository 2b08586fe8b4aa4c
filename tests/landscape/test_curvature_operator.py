import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator
from torch.func import functional_call

from landscape.curvature.operator import GGNOperator, HessianOperator

loss_fn = torch.nn.functional.cross_entropy


def small_problem(dtype=torch.float64):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(dtype)
    x, y = torch.randn(40, 4, dtype=dtype), torch.randint(0, 3, (40,))
    return model, x, y


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()


def dense_reference(model, x, y, op):
    names = [n for n, _ in model.named_parameters()]

    def outputs(theta):
        return functional_call(model, dict(zip(names, op.unflatten(theta), strict=True)), (x.double(),))

    theta = flat_params(model)
    hessian = torch.func.hessian(lambda t: loss_fn(outputs(t), y))(theta)
    out = outputs(theta).detach()
    jacobian = torch.func.jacrev(outputs)(theta).reshape(out.numel(), -1)
    out_hessian = torch.func.hessian(lambda o: loss_fn(o.reshape(out.shape), y))(out.reshape(-1))
    return hessian, jacobian.T @ out_hessian @ jacobian


def test_hvp_equals_dense_hessian_with_uneven_batches():
    model, x, y = small_problem()
    op = HessianOperator(model, loss_fn, [(x[:13], y[:13]), (x[13:], y[13:])], dtype=torch.float64)
    hessian, _ = dense_reference(model, x, y, op)
    n = op.shape[0]
    assert n == 51
    np.testing.assert_allclose(op.matmat(np.eye(n)), hessian.numpy(), rtol=0, atol=1e-13)
    v = torch.randn(n, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), hessian @ v, rtol=0, atol=1e-13)
    np.testing.assert_allclose(op @ v.numpy(), (hessian @ v).numpy(), rtol=0, atol=1e-13)
    assert op.applications == n + 2
    assert isinstance(op, LinearOperator) and op.dtype == np.float64 and op.shape == (n, n)


def test_batch_split_does_not_change_operator():
    model, x, y = small_problem()
    whole = HessianOperator(model, loss_fn, (x, y), dtype=torch.float64)
    split = HessianOperator(model, loss_fn, (x, y), dtype=torch.float64, batch_size=7)
    v = np.random.default_rng(0).standard_normal(whole.shape[0])
    np.testing.assert_allclose(whole.matvec(v), split.matvec(v), rtol=0, atol=1e-14)
    total, count = split.shard_sum(torch.as_tensor(v)[:, None])
    assert count == 40
    np.testing.assert_allclose(total[:, 0].numpy() / count, whole.matvec(v), atol=1e-14)


def test_float64_option_on_float32_model_leaves_model_untouched():
    model, x, y = small_problem(torch.float32)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    op64 = HessianOperator(model, loss_fn, (x, y), dtype=torch.float64)
    op32 = HessianOperator(model, loss_fn, (x, y))
    assert op64.dtype == np.float64 and op32.dtype == np.float32
    v = torch.randn(op64.shape[0])
    hv32 = op32.matvec(v)
    assert hv32.dtype == torch.float32
    torch.testing.assert_close(hv32.double(), op64.matvec(v.double()), rtol=1e-4, atol=1e-5)
    assert model.training and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_ggn_equals_dense_jacobian_product():
    model, x, y = small_problem()
    op = GGNOperator(model, loss_fn, [(x[:25], y[:25]), (x[25:], y[25:])], dtype=torch.float64)
    _, ggn = dense_reference(model, x, y, op)
    np.testing.assert_allclose(op.matmat(np.eye(op.shape[0])), ggn.numpy(), rtol=0, atol=1e-13)
    assert np.linalg.eigvalsh(ggn.numpy()).min() > -1e-12  # PSD for a convex loss


def test_ggn_equals_hessian_for_linear_model_and_squared_loss():
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 2).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 2, dtype=torch.float64)
    mse = torch.nn.functional.mse_loss
    eye = np.eye(8)
    h = HessianOperator(model, mse, (x, y)).matmat(eye)
    g = GGNOperator(model, mse, (x, y)).matmat(eye)
    np.testing.assert_allclose(g, h, atol=1e-14)
    xb = torch.cat([x, torch.ones(10, 1, dtype=torch.float64)], 1)  # H = 2/(N m) kron(I_2, X^T X) in (W, b) order
    block = 2 / 20 * (xb.T @ xb).numpy()
    expected = np.zeros((8, 8))
    for i in range(2):
        rows = [3 * i + j for j in range(3)] + [6 + i]
        expected[np.ix_(rows, rows)] = block
    np.testing.assert_allclose(h, expected, atol=1e-14)


def test_invalid_arguments():
    model, x, y = small_problem()
    with pytest.raises(ValueError, match="dtype"):
        HessianOperator(model, loss_fn, (x, y), dtype=torch.int64)
    with pytest.raises(TypeError, match="nn.Module"):
        HessianOperator(lambda t: t, loss_fn, (x, y))
    with pytest.raises(ValueError, match="shape"):
        HessianOperator(model, loss_fn, (x, y)).matmat(torch.zeros(3, 1, dtype=torch.float64))


def forward_counter(model):
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_graph_reuse_equals_recompute_and_dense(dtype, cls):
    model, x, y = small_problem(dtype)
    data = [(x[:13], y[:13]), (x[13:], y[13:])]
    reuse = cls(model, loss_fn, data, graph="reuse")
    recompute = cls(model, loss_fn, data, graph="recompute")
    calls = forward_counter(model)
    v = torch.randn(reuse.shape[0], 3, dtype=dtype)
    first = reuse.matmat(v)
    assert len(calls) == 2  # one forward per batch builds the kept graphs
    for _ in range(2):
        torch.testing.assert_close(reuse.matmat(v), first, rtol=0, atol=0)
        torch.testing.assert_close(reuse.matvec(v[:, 1]), first[:, 1], rtol=0, atol=0)
    assert len(calls) == 2  # later products only back-propagate through the kept graphs
    torch.testing.assert_close(recompute.matmat(v), first, rtol=0, atol=0)
    recompute.matvec(v[:, 0])
    assert len(calls) == 6
    assert reuse.graph_mode == "reuse" and reuse.graph_nbytes > 0
    assert recompute.graph_mode == "recompute" and recompute.graph_nbytes == 0
    dense = dense_reference(model, x, y, reuse)[0 if cls is HessianOperator else 1]
    tol = 1e-13 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(first.double(), dense @ v.double(), rtol=0, atol=tol)


def test_graph_auto_respects_the_memory_bound():
    model, x, y = small_problem()
    data = [(x[:20], y[:20]), (x[20:], y[20:])]
    big = HessianOperator(model, loss_fn, data)
    v = torch.randn(big.shape[0], 1, dtype=torch.float64)
    expected = big.matmat(v)
    assert big.graph_policy == "auto" and big.graph_mode == "reuse"
    one = big.graph_nbytes
    # the size measured covers the saved activations: 20 inputs of 4 and tanh outputs of 6 per batch, in float64
    assert one >= 2 * 8 * 20 * (4 + 6)
    half = HessianOperator(model, loss_fn, data, graph_bytes=one - 1)  # the second batch's graph does not fit
    calls = forward_counter(model)
    torch.testing.assert_close(half.matmat(v), expected, rtol=0, atol=0)
    torch.testing.assert_close(half.matmat(v), expected, rtol=0, atol=0)
    assert half.graph_mode == "recompute" and half.graph_nbytes == 0 and len(calls) == 4


def test_close_and_garbage_collection_free_the_graph():
    import gc
    import weakref

    model, x, y = small_problem()
    op = HessianOperator(model, loss_fn, (x, y), graph="reuse")
    v = torch.randn(op.shape[0], 1, dtype=torch.float64)
    with op:
        expected = op.matmat(v)
        ref = weakref.ref(op._graphs[0][0][1])
        assert ref() is not None
    assert ref() is None and op.graph_mode is None and op.graph_nbytes == 0
    torch.testing.assert_close(op.matmat(v), expected, rtol=0, atol=0)  # usable after close: rebuilt
    ref = weakref.ref(op._graphs[0][0][1])
    del op
    gc.collect()
    assert ref() is None


def test_invalid_graph_arguments():
    model, x, y = small_problem()
    with pytest.raises(ValueError, match="graph"):
        HessianOperator(model, loss_fn, (x, y), graph="keep")
    with pytest.raises(ValueError, match="graph_bytes"):
        HessianOperator(model, loss_fn, (x, y), graph_bytes=-1)


@pytest.mark.parametrize("graph", ["reuse", "recompute"])
@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_products_leave_the_vectors_alone_and_keep_their_layout(cls, graph):
    model, x, y = small_problem()
    op = cls(model, loss_fn, [(x[:13], y[:13]), (x[13:], y[13:])], graph=graph)
    v = torch.randn(op.shape[0], 3, dtype=torch.float64)
    copy = v.clone()
    for _ in range(2):  # the first product builds any kept graph, the second reuses it
        result = op.matmat(v)
        assert result.is_contiguous() and torch.equal(v, copy)
        column = op.matvec(v[:, 2])
        assert torch.equal(v, copy)
        torch.testing.assert_close(column, result[:, 2], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_kept_graph_products_follow_the_operators_mode_not_the_models(mode):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Dropout(0.5), torch.nn.Linear(6, 3))
    model = model.double().train(mode == "eval")  # the model's own mode is the other one
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    op = HessianOperator(model, loss_fn, (x, y), mode=mode, graph="reuse")
    v = torch.randn(op.shape[0], 1, dtype=torch.float64)
    first = op.matmat(v)
    model.train(mode == "eval")
    torch.testing.assert_close(op.matmat(v), first, rtol=0, atol=0)  # the kept graph, dropout masks included
    assert model.training == (mode == "eval")  # never changed
    if mode == "eval":  # no dropout: the same as a rebuilt graph
        rebuilt = HessianOperator(model, loss_fn, (x, y), mode="eval", graph="recompute")
        torch.testing.assert_close(rebuilt.matmat(v), first, rtol=0, atol=0)
    else:  # a rebuilt graph draws other dropout masks
        rebuilt = HessianOperator(model, loss_fn, (x, y), mode="train", graph="recompute")
        assert not torch.allclose(rebuilt.matmat(v), first)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_product_with_any_non_finite_entry_is_an_error(bad):
    from landscape.curvature._common import TorchOperator

    ones = torch.ones(3, 1, dtype=torch.float64)
    assert TorchOperator(np.diag([1.0, 2.0, -3.0])).apply(ones).flatten().tolist() == [1.0, 2.0, -3.0]
    with pytest.raises(FloatingPointError, match="non-finite"):
        TorchOperator(np.diag([1.0, 2.0, bad])).apply(ones)  # its last entry inf, -inf or NaN
