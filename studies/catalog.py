"""The registry of studies: name -> :class:`studies.runner.Study`. Adding a study = one module + one name here.

The names are listed without importing the study modules, so that ``valley --help`` stays fast; :data:`STUDIES`
imports them on first use (each module is named after its study).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from studies.runner import Study

#: The scales a study may define (``valley --quick|--paper|--full|--scale``); each study lists its own.
SCALES = ("tiny", "quick", "paper", "full")

#: The studies in report order; each is ``studies.<name>.STUDY``.
NAMES = (
    "kingma2015adam",
    "reddi2018",
    "heo2021adamp",
    "ravines",
    "crowded_valley",
    "guan_xgrad",
    "checkpoint_distance",
    "flat_minima",
    "weight_norm_growth",
    "liu2020radam",
    "cohen2021eos",
)


@cache
def _studies() -> dict[str, Study]:
    studies = {}
    for name in NAMES:
        study = importlib.import_module(f"studies.{name}").STUDY
        if study.name != name:
            raise RuntimeError(f"studies.{name}.STUDY is named {study.name!r}")
        studies[name] = study
    return studies


def __getattr__(attr: str) -> Any:
    """``STUDIES``: the studies by name, imported on first access."""
    if attr == "STUDIES":
        return _studies()
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def get(name: str) -> Study:
    """The study called ``name``; a ``ValueError`` lists the known ones."""
    if name not in NAMES:
        raise ValueError(f"Unknown study {name!r}; known studies: {', '.join(NAMES)}")
    return _studies()[name]
