"""``optim.inspect``: a per-tensor table of what an optimizer did in its last step, read from its state."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from optim._directions import direction
from optim._wrapper import GLOBAL, Wrapper

__all__ = ["inspect"]

QUANTILES = (0.05, 0.5, 0.95)


def _scalar(value: Any) -> Any:
    """Return a plain number/str/bool for scalar state entries, ``None`` for anything else."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    return None


def _events(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{key}": v for key, value in state.items() if (v := _scalar(value)) is not None}


@torch.no_grad()
def _names(
    optimizer: Optimizer, names: nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] | None
) -> dict[int, str]:
    """Parameter names by ``id``: from ``names`` (a model or named parameters), else the groups' ``param_names``."""
    if isinstance(names, nn.Module):
        pairs = names.named_parameters()
    elif isinstance(names, Mapping):
        pairs = names.items()
    elif names is not None:
        pairs = names
    else:
        pairs = [
            (n, p) for g in optimizer.param_groups for n, p in zip(g.get("param_names", ()), g["params"], strict=False)
        ]
    return {id(p): str(n) for n, p in pairs}


def inspect(
    optimizer: Optimizer, names: nn.Module | Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] | None = None
) -> pd.DataFrame:
    r"""Return one row per parameter tensor describing the optimizer's last step.

    Rows are named by parameter when the names are known: pass the model (or its ``named_parameters()``) as
    ``names``, or build the optimizer from ``model.named_parameters()`` (torch keeps them as ``param_names``).

    Columns: ``optimizer``, ``group``, ``param`` (the parameter's name when known, else its index over all groups),
    ``index`` (the index), ``shape``, ``numel``, ``lr``,
    ``param_norm`` ‖θ‖, ``update_norm`` ‖θ_t − θ_{t−1}‖ of the step rule without weight decay (for AdamP/SGDP
    the projected step, :math:`\sqrt{‖u‖^2 − ‖\text{radial}‖^2}`, exact up to a relative ε/‖θ‖ from the
    normalisation), ``update_ratio`` = update_norm / param_norm, and ``step_size_q05``, ``step_size_q50``,
    ``step_size_q95``: quantiles of the effective per-coordinate step size η (the factor in front of the
    bias-corrected momentum or gradient, e.g. Adam :math:`γ/(\sqrt{\hat v}+ε)`, SGD γ). These are NaN where the
    state does not determine them (before the first step, Adadelta, classes valley does not know). Every scalar
    entry of the state (``step``, ``rho_t``, ``r_t``, ``rectified``, ``projection``, ``max_cosine``, ...) is a
    further column; a wrapper's per-tensor entries appear prefixed with its class name (``sam_e_norm``) and its
    whole-model entries with ``<name>_global_`` (``sam_global_loss_rise``). Works for ``torch.optim`` classes.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(3))
        >>> opt = torch.optim.Adam([w], lr=0.1)
        >>> w.sum().backward(); opt.step()
        >>> row = inspect(opt).iloc[0]
        >>> round(float(row["update_norm"]), 4), float(row["step"])
        (0.1732, 1.0)
        >>> model = torch.nn.Linear(2, 1)
        >>> inspect(torch.optim.SGD(model.parameters(), lr=0.1), names=model)["param"].tolist()
        ['weight', 'bias']
    """
    by_id = _names(optimizer, names)
    wrappers = []
    base = optimizer
    while isinstance(base, Wrapper):
        wrappers.append(base)
        base = base.base_optimizer
    rows = []
    index = 0
    for group_index, group in enumerate(base.param_groups):
        lr = float(group["lr"])
        for p in group["params"]:
            state = base.state.get(p, {})
            row: dict[str, Any] = {
                "optimizer": type(optimizer).__name__,
                "group": group_index,
                "param": by_id.get(id(p), index),
                "index": index,
                "shape": tuple(p.shape),
                "numel": p.numel(),
                "lr": lr,
                "param_norm": torch.linalg.vector_norm(p).item(),
                "update_norm": math.nan,
                "update_ratio": math.nan,
                **{f"step_size_q{round(q * 100):02d}": math.nan for q in QUANTILES},
            }
            found = direction(base, group, p, p.grad, read_after_step=True)
            if found is not None:
                delta, rate = found
                update_norm = lr * torch.linalg.vector_norm(delta).item()
                if isinstance(state.get("radial_norm"), float):
                    update_norm = math.sqrt(max(update_norm**2 - state["radial_norm"] ** 2, 0.0))
                row["update_norm"] = update_norm
                row["update_ratio"] = update_norm / row["param_norm"] if row["param_norm"] > 0 else math.nan
                values = np.quantile(rate.detach().double().cpu().numpy().ravel(), QUANTILES)
                row.update(
                    {f"step_size_q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, values, strict=True)}
                )
            row.update(_events(state, ""))
            for wrapper in wrappers:
                prefix = type(wrapper).__name__.lower() + "_"
                row.update(_events(wrapper.state.get(p, {}), prefix))
                row.update(_events(wrapper.state.get(GLOBAL, {}), prefix + "global_"))
            rows.append(row)
            index += 1
    return pd.DataFrame(rows)
