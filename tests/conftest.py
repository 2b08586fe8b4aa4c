"""Keep every test independent of the data sets installed on the machine running it; pick the device of the
optimizer path comparisons (``--device cuda`` runs them on a GPU; every other test runs on the CPU); one intra-op
thread per parallel (xdist) worker."""

import os

import pytest
import torch

from studies import data


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        help="device of the tests that take the `device` fixture (the optimizer path comparisons): cpu or cuda",
    )


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers: the parallelism is theirs, one thread each
        torch.set_num_threads(1)  # (four workers of two threads on two cores lose a third of the time to contention)
    text = config.getoption("--device")
    if text not in ("cpu", "cuda"):
        raise pytest.UsageError(f"--device must be cpu or cuda (got {text!r})")
    if text == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda asked, but torch sees no CUDA device")


@pytest.fixture
def device(request) -> torch.device:
    """The device named by ``--device`` (cpu unless asked)."""
    return torch.device(request.config.getoption("--device"))


@pytest.fixture(autouse=True)
def _no_machine_data(monkeypatch):
    """Tests see only the data folders they make: no ``$VALLEY_DATA``, no system data sets."""
    monkeypatch.delenv("VALLEY_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", ())
