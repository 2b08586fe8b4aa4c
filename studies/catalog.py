"""The registry of studies: name -> :class:`studies.runner.Study`. Adding a study = one module + one entry here."""

from __future__ import annotations

from studies import (
    checkpoint_distance,
    cohen2021eos,
    crowded_valley,
    flat_minima,
    guan_xgrad,
    heo2021adamp,
    kingma2015adam,
    liu2020radam,
    ravines,
    reddi2018,
    weight_norm_growth,
)
from studies.runner import Study

STUDIES: dict[str, Study] = {
    s.name: s
    for s in (
        kingma2015adam.STUDY,
        reddi2018.STUDY,
        heo2021adamp.STUDY,
        ravines.STUDY,
        crowded_valley.STUDY,
        guan_xgrad.STUDY,
        checkpoint_distance.STUDY,
        flat_minima.STUDY,
        weight_norm_growth.STUDY,
        liu2020radam.STUDY,
        cohen2021eos.STUDY,
    )
}


def get(name: str) -> Study:
    """The study called ``name``; a ``ValueError`` lists the known ones."""
    if name not in STUDIES:
        raise ValueError(f"Unknown study {name!r}; known studies: {', '.join(STUDIES)}")
    return STUDIES[name]
