"""Small models of the source papers, sized from the data set's input shape and number of classes.

* :class:`MLP` — fully connected ReLU network of configurable widths with optional dropout: ``(1000, 1000)`` is the
  Adam paper's MNIST network (Kingma & Ba 2015, §6.2), ``(784,)`` the crowded-valley report's 784-784-10 net.
* :class:`LeNet5` — LeCun et al. 1998 (conv 6 → pool → conv 16 → pool → 120 → 84), both convolutions 5×5 with
  padding 2 so that 8×8 digits fit too (the original's second convolution is unpadded).
* :class:`AdamCNN` — the Adam paper's CIFAR-10 network c64-c64-c128-1000 (Kingma & Ba 2015, §6.3): 5×5
  convolutions, each followed by 3×3 max-pooling with stride 2, then a 1000-unit layer.
* :class:`ResNet` — a CIFAR-style ResNet (He et al. 2016, §4.2) with BatchNorm: three stages of ``blocks`` basic
  blocks of widths ``widths``.

Parameter names do not depend on dropout, so one saved initialisation serves a model with and without dropout.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MODELS = ("mlp", "lenet5", "adam_cnn", "resnet")


class MLP(nn.Module):
    """ReLU network ``in → widths[0] → … → widths[-1] → classes`` with dropout ``p`` after each hidden layer.

    Example:
        >>> MLP((1, 8, 8), 10, widths=(32,))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (1000, 1000), dropout: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Invalid dropout probability: {dropout}")
        if any(w < 1 for w in widths):
            raise ValueError(f"Invalid widths: {tuple(widths)}")
        sizes = [math.prod(input_shape), *widths, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = self.dropout(F.relu(layer(x)))
        return self.layers[-1](x)


class LeNet5(nn.Module):
    """LeNet-5 for ``(C, H, W)`` images.

    Example:
        >>> LeNet5((1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        channels = _image_channels(input_shape)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        flat = _flat_size(self.features, input_shape)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class AdamCNN(nn.Module):
    """The Adam paper's c64-c64-c128-1000 network with optional dropout before the last two layers.

    Example:
        >>> AdamCNN((3, 32, 32), 10)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        channels = _image_channels(input_shape)
        layers: list[nn.Module] = []
        for c_in, c_out in ((channels, 64), (64, 64), (64, 128)):
            layers += [nn.Conv2d(c_in, c_out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(_flat_size(self.features, input_shape), 1000)
        self.out = nn.Linear(1000, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.features(x).flatten(1))
        return self.out(self.dropout(F.relu(self.fc(x))))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet with BatchNorm; ``blocks=3`` and widths (16, 32, 64) is ResNet-20.

    Example:
        >>> ResNet((1, 8, 8), 10, blocks=1, widths=(8, 16, 32))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, blocks: int = 1, widths: Sequence[int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        if blocks < 1:
            raise ValueError(f"Invalid number of blocks per stage: {blocks}")
        channels = _image_channels(input_shape)
        self.stem = nn.Sequential(nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]))
        stages: list[nn.Module] = []
        c_in = widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks):
                stages.append(_BasicBlock(c_in, width, 2 if (i > 0 and b == 0) else 1))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(F.relu(self.stem(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_model(name: str, input_shape: Sequence[int], num_classes: int, **kwargs: object) -> nn.Module:
    """Build a model by name (one of :data:`MODELS`), sized from the data.

    Example:
        >>> make_model("mlp", (40,), 10, widths=(16,)).layers[0].in_features
        40
    """
    check_options(name, kwargs)
    return _CLASSES[name](tuple(input_shape), num_classes, **kwargs)


def check_options(name: str, options: dict[str, object]) -> None:
    """Refuse a model option that the model does not have, or whose value is not of the kind of its default.

    A number option takes a number (an integer for an integer default), a sequence option (``widths``) a list of
    such numbers; booleans are not numbers here.

    Raises:
        ValueError: for an unknown model, an unknown option or a value of the wrong kind, naming the options.

    Example:
        >>> check_options("mlp", {"widths": "32"})
        Traceback (most recent call last):
        ...
        ValueError: mlp option widths='32': expected a list of integers (default (1000, 1000))
    """
    if name not in _CLASSES:
        raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODELS)}")
    defaults = {
        key: p.default
        for key, p in inspect.signature(_CLASSES[name]).parameters.items()
        if key not in ("input_shape", "num_classes")
    }
    for key, value in options.items():
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise ValueError(f"{name} has no option {key!r}; its options: {known}")
        expected = defaults[key]
        if isinstance(expected, (list, tuple)):
            ok = isinstance(value, (list, tuple)) and all(_same_kind(v, expected[0]) for v in value)
            kind = f"a list of {_kind(expected[0])}s"
        else:
            ok, kind = _same_kind(value, expected), f"{'an' if _kind(expected) == 'integer' else 'a'} {_kind(expected)}"
        if not ok:
            raise ValueError(f"{name} option {key}={value!r}: expected {kind} (default {expected!r})")


def _same_kind(value: object, default: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return isinstance(value, numbers.Integral) or not isinstance(default, numbers.Integral)


def _kind(default: object) -> str:
    return "integer" if isinstance(default, numbers.Integral) else "number"


_CLASSES: dict[str, type[nn.Module]] = {"mlp": MLP, "lenet5": LeNet5, "adam_cnn": AdamCNN, "resnet": ResNet}


def _image_channels(input_shape: Sequence[int]) -> int:
    if len(input_shape) != 3:
        raise ValueError(f"This model needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
    return int(input_shape[0])


def _flat_size(features: nn.Module, input_shape: Sequence[int]) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, *input_shape)).numel()
