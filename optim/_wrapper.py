"""Base class of the wrappers (SAM, XGrad, ExtraGradient): an optimizer around a base optimizer instance."""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import Tensor
from torch.optim import Optimizer

from optim._checks import Check, check_group
from optim._foreach import batches, use_foreach

GLOBAL = "global"
"""Key of the wrapper's whole-model quantities in its ``state`` (next to the per-parameter entries)."""


class Wrapper(Optimizer):
    """An optimizer that composes a base optimizer and owns only its own state.

    ``param_groups`` is the base optimizer's list, so ``zero_grad``, LR schedulers and per-group overrides act
    on the base. The wrapper's switches are put into each group with ``setdefault`` under prefixed keys
    (``sam_rho``, ``xgrad_steps``, ...), so a group may override them and the base's ``state_dict`` restores
    them. ``state_dict()`` holds the wrapper's own state plus the base's under ``"base_optimizer"``. The switches
    pass the checks of ``HYPERPARAMETERS`` (see :mod:`optim._checks`) in the defaults and in every group.
    """

    HYPERPARAMETERS: ClassVar[Mapping[str, Check]] = {}

    def __init__(self, base_optimizer: Optimizer, defaults: dict[str, Any]) -> None:
        if not isinstance(base_optimizer, Optimizer):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer, got {type(base_optimizer).__name__}")
        check_group(defaults, self.HYPERPARAMETERS)
        self.base_optimizer = base_optimizer
        super().__init__(base_optimizer.param_groups, defaults)

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:
        """The base optimizer's param groups (shared, not copied)."""
        return self.base_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        # Optimizer.__init__ assigns an empty list before adding groups; the groups live in the base optimizer.
        if value and value is not self.base_optimizer.param_groups:
            raise AttributeError("a wrapper's param_groups are its base optimizer's; change those instead")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Check the group's switches, add it to the base optimizer (if not there yet), fill in the defaults."""
        check_group(param_group, self.HYPERPARAMETERS)
        if not any(param_group is group for group in self.base_optimizer.param_groups):
            self.base_optimizer.add_param_group(param_group)
        for name, default in self.defaults.items():
            param_group.setdefault(name, default)

    def _batches(
        self, switch: str, params_of: Callable[[dict[str, Any]], list[Tensor]]
    ) -> list[tuple[dict[str, Any], list[Tensor]]]:
        """Each group's ``params_of(group)`` as lists for ``torch._foreach_*`` ops, with their group.

        Device-and-dtype buckets where the group's ``switch`` (the wrapper's ``foreach``) selects the multi-tensor
        path, one tensor per list otherwise, so the wrapper's bookkeeping is written once for both paths. A group
        added to the base optimizer after wrapping (unfrozen layers) gets the wrapper's defaults here first.
        """
        found = []
        for group in self.param_groups:
            for name, default in self.defaults.items():
                group.setdefault(name, default)
            params = params_of(group)
            if params:
                found += [(group, batch[0]) for batch in batches([params], use_foreach(group.get(switch), params))]
        return found

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def state_dict(self) -> dict[str, Any]:
        """Return the wrapper's own state and param-group ids, and the base's full state dict."""
        own = super().state_dict()
        own["base_optimizer"] = self.base_optimizer.state_dict()
        return own

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the base optimizer's state (which restores every group's settings), then the wrapper's own."""
        self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        if len(saved_ids) != len(params):
            raise ValueError(f"state_dict has {len(saved_ids)} parameters, the optimizer {len(params)}")
        id_map = dict(zip(saved_ids, params, strict=True))
        state: defaultdict[Any, Any] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in id_map:
                param = id_map[key]
                state[param] = {
                    name: item.detach().clone().to(param.device) if isinstance(item, Tensor) else copy.deepcopy(item)
                    for name, item in value.items()
                }
            else:
                state[key] = copy.deepcopy(value)
        self.state = state
