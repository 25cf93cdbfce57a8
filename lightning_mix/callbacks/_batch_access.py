"""Reading and replacing entries of a training batch in place, shared by the mixing callbacks."""

from __future__ import annotations

from collections.abc import MutableMapping, MutableSequence
from typing import Any

import torch

__all__ = ["check_mutable_batch", "get_entry", "set_entry"]

BatchKey = int | str


def check_mutable_batch(batch: Any, owner: str) -> None:
    """Raise a clear error when ``batch`` cannot be changed in place (a tuple, a tensor, ...)."""
    if isinstance(batch, (MutableSequence, MutableMapping)):
        return
    kind = type(batch).__name__
    raise TypeError(
        f"{owner} changes the training batch in place, but the batch is a {kind}, which cannot be "
        "changed. A Lightning callback cannot replace the batch object, only mutate it. Return a list "
        "or a dict from your Dataset/collate_fn (torch's default_collate already turns the tuples a "
        "Dataset returns into a list), or apply the mixer yourself in training_step."
    )


def get_entry(batch: Any, key: BatchKey, owner: str, role: str) -> torch.Tensor:
    """``batch[key]`` with an error that names the valid keys when it is missing."""
    check_mutable_batch(batch, owner)
    try:
        value = batch[key]
    except (KeyError, IndexError, TypeError):
        valid = list(batch.keys()) if isinstance(batch, MutableMapping) else list(range(len(batch)))
        raise KeyError(
            f"{owner}: the batch has no entry {key!r} for the {role}; valid keys are {valid}. "
            f"Set {role}_key to one of them."
        ) from None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{owner}: batch[{key!r}] ({role}) must be a tensor, got {type(value).__name__}.")
    return value


def set_entry(batch: Any, key: BatchKey, value: torch.Tensor) -> None:
    batch[key] = value
