import os

import pytest
import torch

os.environ.setdefault("PYTHONHASHSEED", "0")


@pytest.fixture(autouse=True)
def _few_threads():
    """Two cores on CI: one intra-op thread keeps tests from oversubscribing when pytest runs DDP children."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
