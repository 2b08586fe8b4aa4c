r"""The rescaling of Dinh et al. (2017): same function, different sharpness.

For a layer followed by a ReLU, :math:`\mathrm{relu}(\alpha z) = \alpha\, \mathrm{relu}(z)` for :math:`\alpha > 0`,
so multiplying the first layer's weight and bias by :math:`\alpha` and the next layer's weight by :math:`1/\alpha`
leaves the network's function unchanged:

.. math::
    T_\alpha : (\theta_1, \theta_2) \mapsto (\alpha\theta_1, \alpha^{-1}\theta_2), \qquad
    L(T_\alpha\theta) = L(\theta) \text{ as a function of the inputs.}

Curvature is not invariant: with :math:`J = \partial T_\alpha \theta / \partial \theta` (diagonal), the Hessian at
the new point is :math:`H' = J^{-1} H J^{-1}`, so the block of the second layer is multiplied by :math:`\alpha^2` and
:math:`\lambda_{\max}(H') \ge \alpha^2 \lambda_{\max}(H_{22})` grows without bound (Dinh et al. 2017, Theorem 4).

Reference:
    Dinh, Pascanu, Bengio, Bengio. "Sharp Minima Can Generalize For Deep Nets." ICML 2017, Section 4.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from landscape._data import named_parameters


def _check(model: nn.Module, first: str, second: str, alpha: float) -> tuple[nn.Module, nn.Module]:
    if not alpha > 0:
        raise ValueError(f"Invalid alpha: {alpha} (ReLU is positively homogeneous only for alpha > 0)")
    if first == second:
        raise ValueError(f"first and second must be different layers, got {first!r} twice")
    layers = []
    for name in (first, second):
        try:
            layer = model.get_submodule(name)
        except AttributeError as error:
            raise ValueError(f"model has no submodule {name!r}") from error
        if not isinstance(getattr(layer, "weight", None), Tensor):
            raise TypeError(f"layer {name!r} ({type(layer).__name__}) has no weight tensor")
        own = dict(layer.named_parameters(recurse=False))
        for role in ("weight", "bias"):
            if getattr(layer, role, None) is not None and own.get(role) is not getattr(layer, role):
                raise ValueError(
                    f"layer {name!r}: its {role} is computed (a parametrisation such as weight_norm), not a parameter "
                    "of its own; scaling the computed tensor would leave the real parameters as they are"
                )
        layers.append(layer)
    return layers[0], layers[1]


def rescale_relu_layers(model: nn.Module, first: str, second: str, alpha: float, inplace: bool = False) -> nn.Module:
    r"""Apply :math:`T_\alpha`: layer ``first`` (weight, bias) times :math:`\alpha`, ``second``'s weight over it.

    The function is unchanged when the only things between the two layers are positively homogeneous maps (ReLU,
    max-pooling, reshapes); the caller picks such a pair. BatchNorm between them would undo the scaling of ``first``.

    Args:
        model: the network.
        first: name of the layer before the ReLU (e.g. ``"0"`` in an ``nn.Sequential``).
        second: name of the layer after it.
        alpha: the factor :math:`\alpha > 0`.
        inplace: modify ``model`` itself instead of a deep copy (default False).

    Returns:
        The rescaled model (a copy unless ``inplace``).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> x = torch.randn(4, 2)
        >>> torch.allclose(rescale_relu_layers(net, "0", "2", 10.0)(x), net(x), atol=1e-5)
        True
    """
    _check(model, first, second, alpha)
    target = model if inplace else copy.deepcopy(model)
    layer_1, layer_2 = target.get_submodule(first), target.get_submodule(second)
    with torch.no_grad():
        layer_1.weight.mul_(alpha)
        if getattr(layer_1, "bias", None) is not None:
            layer_1.bias.mul_(alpha)
        layer_2.weight.div_(alpha)
    return target


def rescale_jacobian(model: nn.Module, first: str, second: str, alpha: float) -> dict[str, Tensor]:
    r"""Diagonal of :math:`J = \partial T_\alpha\theta / \partial\theta` over the trainable parameters, by name.

    Entries are :math:`\alpha` on ``first``'s weight and bias, :math:`1/\alpha` on ``second``'s weight and 1 elsewhere;
    the Hessian after the transform is predicted as :math:`H' = J^{-1} H J^{-1}` (flatten in ``named_parameters``
    order).

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1))
        >>> {n: t.item() for n, t in rescale_jacobian(net, "0", "2", 2.0).items()}
        {'0.weight': 2.0, '0.bias': 2.0, '2.weight': 0.5, '2.bias': 1.0}
    """
    layer_1, layer_2 = _check(model, first, second, alpha)
    scaled = {id(layer_1.weight): alpha, id(layer_2.weight): 1.0 / alpha}
    if getattr(layer_1, "bias", None) is not None:
        scaled[id(layer_1.bias)] = alpha
    return {n: torch.full_like(p, scaled.get(id(p), 1.0)) for n, p in named_parameters(model).items()}
