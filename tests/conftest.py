"""Keep every test independent of the data sets installed on the machine running it."""

import pytest

from studies import data


@pytest.fixture(autouse=True)
def _no_machine_data(monkeypatch):
    """Tests see only the data folders they make: no ``$VALLEY_DATA``, no system data sets."""
    monkeypatch.delenv("VALLEY_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", ())
