"""Registry of every optimizer valley studies: name → class, defaults and source.

torch's own optimizers are reused, not rewritten. Wrapper entries (SAM, ASAM, XGrad, extragradient) name a
base entry; ``make`` sends each override to the wrapper if its signature has it, else to the base optimizer;
``foreach`` (the multi-tensor path) goes to both. Every optimizer ``make`` builds refuses invalid hyperparameters
with a ``ValueError`` naming the value, in its defaults and in every param group, also groups added later (see
:mod:`optim._checks`); numpy scalars and one-element tensors are taken as the numbers they hold.
"""

from __future__ import annotations

import inspect as _inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn
from torch import optim as torch_optim
from torch.optim import Optimizer

from optim._checks import TORCH_HYPERPARAMETERS, as_params, check_group, guard, plain
from optim.adabelief import AdaBelief
from optim.adam2k import Adam2k
from optim.adam3 import AdaM3
from optim.adamp import AdamP
from optim.expectigrad import Expectigrad
from optim.extragradient import ExtraGradient
from optim.radam import RAdam
from optim.sam import SAM
from optim.sgdp import SGDP
from optim.xgrad import XGrad

__all__ = ["ENTRIES", "Entry", "entry", "make", "names"]


@dataclass(frozen=True)
class Entry:
    """One registered optimizer.

    Attributes:
        name: Registry name.
        cls: The optimizer (or wrapper) class.
        defaults: Keyword arguments the entry passes unless overridden.
        source: Where the algorithm and these defaults come from.
        base: For wrappers, the registry name of the base optimizer; ``None`` otherwise.
    """

    name: str
    cls: type
    defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    source: str = ""
    base: str | None = None


def _entry(name: str, cls: type, source: str, base: str | None = None, **defaults: Any) -> Entry:
    return Entry(name=name, cls=cls, defaults=MappingProxyType(defaults), source=source, base=base)


ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        _entry("sgd", torch_optim.SGD, "torch.optim.SGD; Robbins & Monro 1951", lr=0.01),
        _entry("momentum", torch_optim.SGD, "torch.optim.SGD; Polyak 1964 (first step b = g)", lr=0.01, momentum=0.9),
        _entry(
            "nesterov",
            torch_optim.SGD,
            "torch.optim.SGD; Sutskever et al. 2013 form of Nesterov 1983",
            lr=0.01,
            momentum=0.9,
            nesterov=True,
        ),
        _entry("adagrad", torch_optim.Adagrad, "torch.optim.Adagrad; Duchi et al. 2011", lr=0.01),
        _entry("rmsprop", torch_optim.RMSprop, "torch.optim.RMSprop; Tieleman & Hinton 2012", lr=0.01, alpha=0.99),
        _entry("adadelta", torch_optim.Adadelta, "torch.optim.Adadelta; Zeiler 2012", lr=1.0, rho=0.9),
        _entry("adam", torch_optim.Adam, "torch.optim.Adam; Kingma & Ba 2015, Algorithm 1", lr=1e-3),
        _entry("amsgrad", torch_optim.Adam, "torch.optim.Adam(amsgrad=True); Reddi et al. 2018", lr=1e-3, amsgrad=True),
        _entry("adamw", torch_optim.AdamW, "torch.optim.AdamW; Loshchilov & Hutter 2019", lr=1e-3, weight_decay=0.01),
        _entry("adam_eps", torch_optim.Adam, "Adam with eps=1e-4, control of Liu et al. 2020", lr=1e-3, eps=1e-4),
        _entry("adam2k", Adam2k, "optim.Adam2k; control of Liu et al. 2020, Sec. 3", lr=1e-3, freeze_steps=2000),
        _entry("radam", RAdam, "optim.RAdam (= torch.optim.RAdam); Liu et al. 2020", lr=1e-3),
        _entry("radam_paper", RAdam, "optim.RAdam(threshold=4); Liu et al. 2020, Algorithm 2", lr=1e-3, threshold=4.0),
        _entry("adamp", AdamP, "optim.AdamP; Heo et al. 2021, official defaults", lr=1e-3),
        _entry("sgdp", SGDP, "optim.SGDP; Heo et al. 2021, official defaults", lr=0.1, momentum=0.9),
        _entry("expectigrad", Expectigrad, "optim.Expectigrad; Daley & Amato 2020", lr=1e-3),
        _entry("adabelief", AdaBelief, "optim.AdaBelief; Zhuang et al. 2020, Algorithm 2", lr=1e-3),
        _entry("adam3", AdaM3, "optim.AdaM3; Wang et al., authors' code wyzjack/AdaM3", lr=1e-3),
        _entry("sam", SAM, "optim.SAM around momentum SGD; Foret et al. 2021", base="momentum", rho=0.05),
        _entry(
            "asam",
            SAM,
            "optim.SAM(adaptive=True) around momentum SGD; Kwon et al. 2021",
            base="momentum",
            rho=0.5,
            adaptive=True,
        ),
        _entry("xgrad_sgdm", XGrad, "optim.XGrad around momentum SGD; Guan et al.", base="momentum", steps=1),
        _entry("xgrad_adam", XGrad, "optim.XGrad around Adam; Guan et al.", base="adam", steps=1),
        _entry("extragradient", ExtraGradient, "optim.ExtraGradient around SGD; Korpelevich 1976", base="sgd"),
        _entry("extra_adam", ExtraGradient, "optim.ExtraGradient around Adam; Gidel et al. 2019", base="adam"),
    )
}


def names() -> list[str]:
    """Return the registered names in registration order.

    Example:
        >>> {"adam", "sam", "xgrad_adam"} <= set(names())
        True
    """
    return list(ENTRIES)


def entry(name: str) -> Entry:
    """Return the :class:`Entry` called ``name`` (``ValueError`` for an unknown name)."""
    if name not in ENTRIES:
        raise ValueError(f"Unknown optimizer name: {name!r}; known: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def make(name: str, params_or_model: Any, **overrides: Any) -> Optimizer:
    """Build the optimizer ``name`` for a model or parameters with the entry's defaults updated by ``overrides``.

    Example:
        >>> import torch
        >>> opt = make("sam", torch.nn.Linear(2, 1), lr=0.1, rho=0.1)
        >>> type(opt).__name__, opt.param_groups[0]["lr"], opt.param_groups[0]["sam_rho"]
        ('SAM', 0.1, 0.1)
    """
    found = entry(name)
    kwargs = {**found.defaults, **{k: plain(v) for k, v in overrides.items()}}
    if found.base is None and found.cls in TORCH_HYPERPARAMETERS:
        try:
            optimizer = found.cls(as_params(params_or_model), **kwargs)
        except (TypeError, IndexError):  # torch fails on the kind of a value (a string, one beta): name it
            check_group(dict(kwargs), TORCH_HYPERPARAMETERS[found.cls])
            raise
        return guard(optimizer)
    if found.base is None:
        return found.cls(as_params(params_or_model), **kwargs)
    own = set(_inspect.signature(found.cls).parameters) - {"base_optimizer"}
    wrapper_kwargs = {k: v for k, v in kwargs.items() if k in own}
    if "model" in own and isinstance(params_or_model, nn.Module):
        wrapper_kwargs.setdefault("model", params_or_model)  # SAM: BatchNorm statistics kept at the perturbed point
    base_kwargs = {k: v for k, v in kwargs.items() if k not in own or k == "foreach"}
    return found.cls(make(found.base, params_or_model, **base_kwargs), **wrapper_kwargs)
