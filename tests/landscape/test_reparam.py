import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from landscape.reparam import rescale_jacobian, rescale_relu_layers


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double()


def dense_hessian(model, x, y):
    params = {n: p.detach() for n, p in model.named_parameters()}
    shapes = {n: p.shape for n, p in params.items()}
    flat = torch.cat([p.reshape(-1) for p in params.values()])

    def loss(vector):
        split, start = {}, 0
        for n, shape in shapes.items():
            size = int(np.prod(shape))
            split[n] = vector[start : start + size].view(shape)
            start += size
        return nn.functional.cross_entropy(functional_call(model, split, (x,)), y)

    return hessian(loss)(flat)


def test_rescaling_keeps_the_function_and_transforms_the_hessian_as_predicted():
    model, alpha = net(), 10.0
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (20,), generator=g)
    rescaled = rescale_relu_layers(model, "2", "4", alpha)
    torch.testing.assert_close(rescaled(x), model(x), rtol=1e-12, atol=1e-12)
    assert not torch.equal(rescaled[2].weight, model[2].weight)  # a copy, the original untouched

    h, h_new = dense_hessian(model, x, y), dense_hessian(rescaled, x, y)
    j = torch.cat([t.reshape(-1) for t in rescale_jacobian(model, "2", "4", alpha).values()])
    predicted = h / j[:, None] / j[None, :]  # H' = J^-1 H J^-1
    torch.testing.assert_close(h_new, predicted, rtol=1e-8, atol=1e-10)
    top, top_new = np.linalg.eigvalsh(h.numpy())[-1], np.linalg.eigvalsh(h_new.numpy())[-1]
    assert top_new == pytest.approx(np.linalg.eigvalsh(predicted.numpy())[-1], rel=1e-8)
    # the second layer's block is multiplied by alpha^2, which bounds the top eigenvalue from below
    second = slice(15 + 5 + 20 + 4, 15 + 5 + 20 + 4 + 8)  # parameters of layer "4": weight (2x4)
    block_top = np.linalg.eigvalsh(h[second, second].numpy())[-1]
    assert top_new >= alpha**2 * block_top * (1 - 1e-10)
    assert top_new > 5 * top  # same function, much sharper


def test_inplace_rescaling_and_jacobian_entries():
    model = net()
    x = torch.randn(4, 3, dtype=torch.float64)
    out = model(x)
    assert rescale_relu_layers(model, "0", "2", 0.25, inplace=True) is model
    torch.testing.assert_close(model(x), out)
    j = rescale_jacobian(model, "0", "2", 0.25)
    assert {n: float(t.flatten()[0]) for n, t in j.items()} == {
        "0.weight": 0.25,
        "0.bias": 0.25,
        "2.weight": 4.0,
        "2.bias": 1.0,
        "4.weight": 1.0,
        "4.bias": 1.0,
    }


def test_invalid_arguments_raise():
    model = net()
    with pytest.raises(ValueError, match="alpha: 0.0"):
        rescale_relu_layers(model, "0", "2", 0.0)
    with pytest.raises(ValueError, match="'0' twice"):
        rescale_relu_layers(model, "0", "0", 2.0)
    with pytest.raises(ValueError, match="no submodule 'fc'"):
        rescale_relu_layers(model, "fc", "2", 2.0)
    with pytest.raises(TypeError, match="no weight"):
        rescale_relu_layers(model, "1", "2", 2.0)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.parametrize("where", ["first", "second"])
@pytest.mark.parametrize("api", ["parametrizations", "hook"])
def test_a_layer_whose_weight_is_computed_is_refused(where, api):
    """Under weight_norm ``layer.weight`` is computed from other parameters: scaling it in place scaled a temporary,
    so only the other layer was rescaled (the function moved by 0.5 to 3.5); the old hook API ended in deepcopy."""
    wrap = torch.nn.utils.parametrizations.weight_norm if api == "parametrizations" else torch.nn.utils.weight_norm
    layers = [nn.Linear(4, 5), nn.Linear(5, 2)]
    layers[0 if where == "first" else 1] = wrap(layers[0 if where == "first" else 1])
    net = nn.Sequential(layers[0], nn.ReLU(), layers[1])
    for call in (rescale_relu_layers, rescale_jacobian):
        with pytest.raises(ValueError, match="its weight is computed"):
            call(net, "0", "2", 10.0)
