"""Batches for a callback's own forward passes, moved the way Lightning's loops move them.

A callback that runs the module outside Lightning's loops (ModelSoup's scoring and BatchNorm
passes) must see each batch as the module's ``validation_step`` would: converted by the precision
plugin, through ``on_before_batch_transfer`` (the datamodule's when it overrides it, as Lightning
chooses), then ``trainer.strategy.batch_to_device`` (``transfer_batch_to_device`` and
``on_after_batch_transfer``). Forward passes then run inside ``precision_plugin.forward_context()``.
Only public Lightning API is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

__all__ = ["BatchKey", "batch_entry", "model_input", "on_host", "to_device", "transferred"]

BatchKey = int | str


def on_host(trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, dataloader_idx: int = 0) -> Any:
    """``batch`` after the precision plugin's ``convert_input`` and ``on_before_batch_transfer``, still on the host."""
    batch = trainer.precision_plugin.convert_input(batch)
    datamodule = trainer.datamodule
    owner: Any = pl_module
    if datamodule is not None and is_overridden("on_before_batch_transfer", datamodule):
        owner = datamodule  # Lightning prefers the datamodule's hook when it overrides it
    return owner.on_before_batch_transfer(batch, dataloader_idx)


def to_device(trainer: pl.Trainer, batch: Any, dataloader_idx: int = 0) -> Any:
    """A host batch (from :func:`on_host`) on the root device, through ``transfer_batch_to_device`` and
    ``on_after_batch_transfer``."""
    return trainer.strategy.batch_to_device(batch, dataloader_idx=dataloader_idx)


def transferred(
    trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Iterable, limit: float | None, dataloader_idx: int = 0
) -> Iterator[Any]:
    """The first ``limit`` batches of ``loader`` (all when ``None`` or infinite), each ready for the module."""
    batches: Iterable = loader
    if limit is not None and limit != float("inf"):
        batches = islice(loader, int(limit))
    for batch in batches:
        yield to_device(trainer, on_host(trainer, pl_module, batch, dataloader_idx), dataloader_idx)


def batch_entry(batch: Any, key: BatchKey, who: str, option: str) -> Any:
    """``batch[key]`` with an error naming the valid keys and the option to set."""
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError):
        if isinstance(batch, Mapping):
            valid: Any = list(batch.keys())
        elif isinstance(batch, (list, tuple)):
            valid = list(range(len(batch)))
        else:
            valid = f"none (the batch is a {type(batch).__name__})"
        raise KeyError(f"{who}: the batch has no entry {key!r}; valid keys: {valid}. Set {option} to one of them.") from None


def model_input(batch: Any, key: BatchKey | None, who: str, option: str = "input_key") -> Any:
    """The model input of ``batch``: ``batch[key]``, or with ``key=None`` the batch itself when it is a
    tensor, ``batch[0]`` of a list or tuple, and the one tensor entry of a dict (an error otherwise)."""
    if key is not None:
        return batch_entry(batch, key, who, option)
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        tensors = [k for k, v in batch.items() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return batch[tensors[0]]
        raise KeyError(
            f"{who}: the batch is a dict with tensor entries {tensors}; set {option} to the key of the model input."
        )
    raise TypeError(f"{who}: cannot find the model input in a batch of type {type(batch).__name__}; set {option}.")
