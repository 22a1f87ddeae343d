"""Fixtures shared by the unit tests."""

import pytest
import torch

from dgmbook.utils import torch_threads


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is fastest (a second only adds synchronisation, and spins when
    the cores are busy) and gives results that do not depend on the machine's core count.
    A test module turns it on for all its tests with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with torch_threads(1):
        torch.manual_seed(0)
        yield
