"""Fixtures shared by every test tier (helpers without fixtures are in ``helpers.py``)."""

import pytest
import torch

from helpers import ill_conditioned_grads


@pytest.fixture
def grads_factory():
    return ill_conditioned_grads


@pytest.fixture
def single_thread():
    """One intra-op torch thread (CNNs on a shared 2-core machine run far slower with more)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
