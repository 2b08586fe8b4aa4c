import pytest
import torch

from studies.models import MLP, make_model


@pytest.mark.parametrize(
    ("name", "shape", "kwargs"),
    [
        ("mlp", (1, 8, 8), {"widths": (1000, 1000), "dropout": 0.5}),
        ("mlp", (40,), {"widths": (784,)}),
        ("mlp", (1, 28, 28), {"widths": (784,)}),
        ("lenet5", (1, 8, 8), {}),
        ("lenet5", (1, 28, 28), {}),
        ("adam_cnn", (3, 32, 32), {"dropout": 0.5}),
        ("adam_cnn", (1, 8, 8), {}),
        ("resnet", (3, 32, 32), {"blocks": 1}),
        ("resnet", (1, 8, 8), {"blocks": 2, "widths": (8, 16, 32)}),
    ],
)
def test_forward_shapes(name, shape, kwargs):
    model = make_model(name, shape, 10, **kwargs)
    assert model(torch.randn(3, *shape)).shape == (3, 10)


def test_dense_net_sizes():
    net = MLP((1, 28, 28), 10, widths=(784,))
    assert [(m.in_features, m.out_features) for m in net.layers] == [(784, 784), (784, 10)]
    adam_mlp = MLP((1, 28, 28), 10, widths=(1000, 1000))
    assert sum(p.numel() for p in adam_mlp.parameters()) == 784 * 1000 + 1000 + 1000 * 1000 + 1000 + 1000 * 10 + 10


def test_dropout_does_not_change_parameter_names():
    assert MLP((4,), 2, (3,), 0.0).state_dict().keys() == MLP((4,), 2, (3,), 0.5).state_dict().keys()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="dropout probability: 1.5"):
        MLP((4,), 2, dropout=1.5)
    with pytest.raises(ValueError, match="input shape \\(40,\\)"):
        make_model("lenet5", (40,), 10)
    with pytest.raises(ValueError, match="'vgg'"):
        make_model("vgg", (1, 8, 8), 10)
