"""Shared set-up of the landscape tests."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Small tensors: one intra-op thread is faster on a shared 2-core machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
