import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("PYTHONHASHSEED", "0")

_TESTS = Path(__file__).parent
# helper modules shared by test files in several folders (no package __init__ in tests/)
for _folder in (_TESTS / "ddp", _TESTS / "ddp" / "scripts", _TESTS / "lightning", _TESTS):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

REPO_ROOT = _TESTS.parent

from tiny_trainer import tiny_trainer as _tiny_trainer  # noqa: E402  (tests/ is on sys.path from here on)


@pytest.fixture
def tiny_trainer():
    """The factory of small quiet CPU Trainers (tests/tiny_trainer.py): ``tiny_trainer(**overrides)``."""
    return _tiny_trainer


@pytest.fixture(autouse=True)
def _few_threads():
    """Two cores on CI: one intra-op thread keeps tests from oversubscribing when pytest runs DDP children."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
