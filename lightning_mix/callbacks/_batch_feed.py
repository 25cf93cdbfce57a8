"""Feed batches to a LightningModule outside Lightning's loops, the way the loops would.

Callbacks that run the model on data of their own accord (SWA's BatchNorm recalibration,
ModelSoup's BatchNorm pass and candidate scoring) must move each batch exactly as the Trainer does,
or a normalisation done in a transfer hook, a custom batch type or the precision plugin's input
cast is silently skipped. Everything here uses Lightning's public API only.

The API:

- :func:`_transferred_batches` ``(trainer, pl_module, dataloader, limit, dataloader_idx=0)`` yields
  the batches of ``dataloader`` (at most ``limit``) as the training step would receive them:
  ``trainer.precision_plugin.convert_input``, then ``on_before_batch_transfer`` (the DataModule's
  when it overrides it, as Lightning chooses), then ``trainer.strategy.batch_to_device``, which runs
  ``transfer_batch_to_device`` and ``on_after_batch_transfer``. Run the model on them inside
  ``trainer.precision_plugin.forward_context()`` (as :func:`_feed_module` does).
- :func:`_resolve_input_key` ``(batch, forward, input_key, owner)`` turns a user's ``input_key``
  into the key that picks the model input from ``batch``, or raises a clear error naming the valid
  keys. ``input_key=None`` means "auto": a tensor batch is the input, a list/tuple batch gives its
  element 0, a dict batch gives its single tensor entry whose key names a parameter of
  ``forward`` (or its single tensor entry when ``forward`` takes one argument). Call it on the first
  batch a callback sees (before any optimizer step) so a misconfiguration stops the fit at once.
- :func:`_model_input` ``(batch, input_key)`` picks the input with a key that
  :func:`_resolve_input_key` returned.

``_feed_module(trainer, module, batch, input_key)`` runs ``module(_model_input(batch, input_key))``
inside the precision plugin's forward context.

ModelSoup's scoring uses the step-wise forms :func:`on_host` and :func:`to_device` (the two halves
of :func:`_transferred_batches`, so host batches can be cached and moved later) and the
error-reporting pickers :func:`batch_entry` and :func:`model_input`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden

__all__ = [
    "BatchKey",
    "_feed_module",
    "_model_input",
    "_resolve_input_key",
    "_transferred_batches",
    "batch_entry",
    "model_input",
    "on_host",
    "to_device",
    "transferred",
]

InputKey = int | str | None
BatchKey = int | str


def _forward_parameters(forward: Callable[..., Any]) -> tuple[list[str], bool]:
    """Names of ``forward``'s named parameters (``self`` excluded) and whether it takes ``**kwargs``."""
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        return [], False
    names, var_keyword = [], False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.append(parameter.name)
    return names, var_keyword


def _resolve_input_key(batch: Any, forward: Callable[..., Any], input_key: InputKey, owner: str) -> InputKey:
    """The key that picks the model input from ``batch`` (see the module docstring); raises if there is none."""
    if isinstance(batch, torch.Tensor):
        if input_key is not None:
            raise TypeError(
                f"{owner}(input_key={input_key!r}) was given, but the batches are single tensors; "
                "set input_key=None (the tensor is the model input)."
            )
        return None
    if isinstance(batch, Mapping):
        tensors = [k for k, v in batch.items() if isinstance(v, torch.Tensor)]
        if input_key is not None:
            if input_key not in batch:
                raise KeyError(
                    f"{owner}(input_key={input_key!r}): the batch (a dict) has no such entry; its keys are "
                    f"{list(batch)}. Set input_key to the key of the model input."
                )
            return input_key
        names, _ = _forward_parameters(forward)
        named = [k for k in tensors if k in names]
        if len(named) == 1:
            return named[0]
        if len(names) == 1 and len(tensors) == 1:
            return tensors[0]
        raise ValueError(
            f"{owner} cannot tell which entry of the dict batch (tensor entries {tensors}) is the model input: "
            f"forward takes {names}. Set {owner}(input_key=<key>)."
        )
    if isinstance(batch, (list, tuple)):
        key = 0 if input_key is None else input_key
        if not isinstance(key, int) or not -len(batch) <= key < len(batch):
            raise KeyError(
                f"{owner}(input_key={input_key!r}): the batch is a {type(batch).__name__} of {len(batch)} "
                "elements; set input_key to the index of the model input."
            )
        return key
    raise TypeError(
        f"{owner} does not know how to find the model input in a batch of type {type(batch).__name__}; "
        "give it a bn_forward callable (module, batch) that runs the model on one batch."
    )


def _model_input(batch: Any, input_key: InputKey) -> Any:
    """``batch[input_key]``; ``input_key=None``: the batch itself (a tensor) or its element 0 (a list/tuple).

    ``input_key`` comes from :func:`_resolve_input_key`, so a dict batch always has a key here.
    """
    if input_key is None:
        if isinstance(batch, (list, tuple)):
            return batch[0]
        if isinstance(batch, Mapping):
            raise ValueError("_model_input needs a key for a dict batch; resolve it with _resolve_input_key first.")
        return batch
    return batch[input_key]


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


def _transferred_batches(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    dataloader: Iterable[Any],
    limit: int | float | None = None,
    dataloader_idx: int = 0,
) -> Iterator[Any]:
    """The batches of ``dataloader`` (at most ``limit``; ``None`` or inf: all) on the device, moved
    through the precision plugin's input cast and the module's (or DataModule's) transfer hooks."""
    batches: Iterable[Any] = dataloader
    if limit is not None and limit != float("inf"):
        batches = islice(dataloader, int(limit))
    for batch in batches:
        yield to_device(trainer, on_host(trainer, pl_module, batch, dataloader_idx), dataloader_idx)


transferred = _transferred_batches


def _feed_module(trainer: pl.Trainer, module: torch.nn.Module, batch: Any, input_key: InputKey) -> Any:
    """``module(_model_input(batch, input_key))`` inside the precision plugin's forward context."""
    with trainer.precision_plugin.forward_context():
        return module(_model_input(batch, input_key))


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
        raise KeyError(
            f"{who}: the batch has no entry {key!r}; valid keys: {valid}. Set {option} to one of them."
        ) from None


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
