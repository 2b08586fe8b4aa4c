"""Hyperparameter checks shared by every optimizer valley builds; each refusal is a ``ValueError`` naming the value.

One mechanism serves all of them: a table ``{name: check}`` per optimizer class. A check takes the name and the value
and returns the value as a plain Python number (numpy scalars and one-element tensors are accepted and converted), or
raises ``ValueError("Invalid NAME: VALUE (must ...)")``. :func:`check_group` applies a table to one param group in
place. valley's optimizers derive from :class:`Checked`, which applies its table ``HYPERPARAMETERS`` to the defaults
and to every param group, in the constructor and in ``add_param_group``. torch's own classes, as
:func:`optim.make` builds them, first run torch's checks (whose messages they keep), then :func:`guard` applies the
table of :data:`TORCH_HYPERPARAMETERS` to their defaults and groups and to every group added later.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.optim import SGD, Adadelta, Adagrad, Adam, AdamW, Optimizer, RMSprop

from optim._state import keep_as_saved, restore_kept

Check = Callable[[str, Any], Any]
"""``check(name, value)`` returns the value as a plain Python object or raises ``ValueError`` naming it."""


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and one-element tensors made Python numbers (tuples element-wise)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return value


def _real(name: str, value: Any, must: str) -> float:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number {must})")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    """Return ``value`` if it is a finite number ``>= 0``, else raise ``ValueError``."""
    value = _real(name, value, ">= 0")
    if not value >= 0:
        raise ValueError(f"Invalid {name}: {value} (must be a finite number >= 0)")
    return value


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` if it is a finite number ``> 0``, else raise ``ValueError``."""
    value = _real(name, value, "> 0")
    if not value > 0:
        raise ValueError(f"Invalid {name}: {value} (must be a finite number > 0)")
    return value


def check_unit_interval(name: str, value: Any) -> float:
    """Return ``value`` if ``0 <= value < 1``, else raise ``ValueError``."""
    value = _real(name, value, "in [0, 1)")
    if not 0 <= value < 1:
        raise ValueError(f"Invalid {name}: {value} (must lie in [0, 1))")
    return value


def check_closed_unit_interval(name: str, value: Any) -> float:
    """Return ``value`` if ``0 <= value <= 1``, else raise ``ValueError``."""
    value = _real(name, value, "in [0, 1]")
    if not 0 <= value <= 1:
        raise ValueError(f"Invalid {name}: {value} (must lie in [0, 1])")
    return value


def check_betas(name: str, value: Any) -> tuple[float, float]:
    """Return ``value`` as a pair if both entries lie in ``[0, 1)``, else raise ``ValueError``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r} (need two values)")
    return tuple(check_unit_interval(f"{name} parameter at index {i}", beta) for i, beta in enumerate(value))


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (numpy's included), else raise ``ValueError``."""
    value = plain(value)
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (must be True or False)")
    return value


def check_optional_bool(name: str, value: Any) -> bool | None:
    """Return ``value`` if it is ``None`` or a bool (numpy's included), else raise ``ValueError``.

    For three-way switches such as ``foreach``, where ``None`` picks the default rule.
    """
    if value is None:
        return None
    value = plain(value)
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (must be None, True or False)")
    return value


def check_count(name: str, value: Any) -> int:
    """Return ``value`` if it is an integer ``>= 0`` (not a bool), else raise ``ValueError``."""
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be an int >= 0)")
    return int(value)


def check_at_least(bound: float, why: str) -> Check:
    """A check for finite numbers ``>= bound``; ``why`` completes the message."""

    def check(name: str, value: Any) -> float:
        value = _real(name, value, f">= {bound}")
        if not value >= bound:
            raise ValueError(f"Invalid {name}: {value} (must be >= {bound}, {why})")
        return value

    return check


def check_choice(choices: Iterable[Any]) -> Check:
    """A check that the value is one of ``choices``."""
    choices = tuple(choices)

    def check(name: str, value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"Invalid {name}: {value!r} (must be one of {choices})")
        return value

    return check


def check_group(group: dict[str, Any], checks: Mapping[str, Check]) -> None:
    """Check (and convert in place) every entry of ``group`` that ``checks`` names."""
    for name, check in checks.items():
        if name in group:
            group[name] = check(name, group[name])


class Checked(Optimizer):
    """An optimizer whose hyperparameters, in the defaults and in every param group, pass ``HYPERPARAMETERS``.

    Subclasses list their checks in ``HYPERPARAMETERS`` and relations between values (which see the group with its
    defaults filled in) in :meth:`check_relations`. The constructor checks the defaults, then every group through
    :meth:`add_param_group`, which also checks groups added later. ``load_state_dict`` passes the state values
    :meth:`keeps` names through as saved.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {}

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        check_group(defaults, self.HYPERPARAMETERS)
        self.check_relations(defaults)
        super().__init__(params, defaults)

    def check_relations(self, group: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` when values of one group contradict each other (none by default)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Torch's ``load_state_dict``, with the state values :meth:`keeps` names passed through as saved.

        torch's loader casts state tensors to each parameter's dtype and device and rebuilds every iterable value
        element by element, which turns a string into the text of a generator object (torch 2.13). The kept values
        are wrapped by a pre-hook added for this load, so it runs after every hook a user registered (one that maps
        a saved layout onto a new model moves them with the rest), and given back by :meth:`restored` in a
        post-hook that runs before the user's.
        """
        pre = self.register_load_state_dict_pre_hook(keep_as_saved)
        post = self.register_load_state_dict_post_hook(restore_kept, prepend=True)
        try:
            super().load_state_dict(state_dict)
        finally:
            pre.remove()
            post.remove()

    def keeps(self, name: str, value: Any) -> bool:
        """Whether a saved state value passes through ``load_state_dict`` as it is: strings (``projection``)."""
        return isinstance(value, str)

    def restored(self, param: Any, name: str, value: Any) -> Any:
        """A kept state value of ``param`` as the optimizer holds it after ``load_state_dict``: as saved."""
        return value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Check the group's own hyperparameters and their relations with the defaults, then add it.

        Complex parameters are refused: the update rules are written for real tensors (a complex g·g would make
        the second moment complex, not |g|²). So is a parameter listed twice in a group (torch only warns): it
        would be stepped twice per step, differently on each path.
        """
        if isinstance(param_group, dict):
            check_group(param_group, self.HYPERPARAMETERS)
            self.check_relations({**self.defaults, **param_group})
        with warnings.catch_warnings():  # torch's warning about duplicates: refused below instead
            warnings.filterwarnings("ignore", "optimizer contains a parameter group with duplicate parameters")
            super().add_param_group(param_group)
        params = self.param_groups[-1]["params"]
        if len({id(p) for p in params}) < len(params):
            self.param_groups.pop()
            raise ValueError(f"{type(self).__name__}: a parameter group lists the same parameter twice")
        complex_ = next((p for p in params if p.is_complex()), None)
        if complex_ is not None:
            self.param_groups.pop()
            raise ValueError(
                f"{type(self).__name__} takes real parameters only, got a {complex_.dtype} one of shape "
                f"{tuple(complex_.shape)} (optimize its real and imaginary parts as real parameters)"
            )


_ADAM = {
    "lr": check_nonnegative,
    "betas": check_betas,
    "eps": check_positive,
    "weight_decay": check_nonnegative,
    "amsgrad": check_bool,
    "maximize": check_bool,
    "foreach": check_optional_bool,
    "decoupled_weight_decay": check_bool,
}
TORCH_HYPERPARAMETERS: dict[type, dict[str, Check]] = {
    SGD: {
        "lr": check_nonnegative,
        "momentum": check_unit_interval,
        "dampening": check_closed_unit_interval,
        "weight_decay": check_nonnegative,
        "nesterov": check_bool,
        "maximize": check_bool,
        "foreach": check_optional_bool,
    },
    Adagrad: {
        "lr": check_nonnegative,
        "lr_decay": check_nonnegative,
        "weight_decay": check_nonnegative,
        "initial_accumulator_value": check_nonnegative,
        "eps": check_positive,
        "maximize": check_bool,
        "foreach": check_optional_bool,
    },
    RMSprop: {
        "lr": check_nonnegative,
        "alpha": check_unit_interval,
        "eps": check_positive,
        "weight_decay": check_nonnegative,
        "momentum": check_unit_interval,
        "centered": check_bool,
        "maximize": check_bool,
        "foreach": check_optional_bool,
    },
    Adadelta: {
        "lr": check_nonnegative,
        "rho": check_closed_unit_interval,
        "eps": check_positive,
        "weight_decay": check_nonnegative,
        "maximize": check_bool,
        "foreach": check_optional_bool,
    },
    Adam: _ADAM,
    AdamW: _ADAM,
}
"""Checks for the torch classes in the registry: what torch checks, plus what it lets through (NaN, inf, eps = 0
where ε divides, momentum >= 1)."""


def guard(optimizer: Optimizer) -> Optimizer:
    """Check a torch optimizer's defaults and groups, and make its ``add_param_group`` check new groups.

    The check of later groups is an attribute of this instance (like torch's hooks, it is not pickled).
    """
    checks = TORCH_HYPERPARAMETERS[type(optimizer)]
    check_group(optimizer.defaults, checks)
    for group in optimizer.param_groups:
        check_group(group, checks)
    add = optimizer.add_param_group

    def add_param_group(param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):
            check_group(param_group, checks)
        add(param_group)

    add_param_group.__doc__ = add.__doc__
    optimizer.add_param_group = add_param_group  # type: ignore[method-assign]
    return optimizer


def as_params(params_or_model: Any) -> Any:
    """Return ``model.parameters()`` for a module, else the iterable of tensors or param groups unchanged."""
    if isinstance(params_or_model, nn.Module):
        return params_or_model.parameters()
    return params_or_model


def evaluate(closure: Callable[[], Any] | None) -> Any:
    """Call ``closure`` with gradients enabled (optimizer steps run under ``no_grad``); ``None`` gives ``None``."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
