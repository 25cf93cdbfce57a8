"""The training mixins' seeded draw streams: built at first use, saved in and restored from checkpoints.

A mixin named ``name`` keeps its :class:`~lightning_mix.callbacks._rng.CounterStream` at
``module._{name}_rng`` and, after a checkpoint load, the restored position at ``module._{name}_restored``
until the stream is built again.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_mix.callbacks._rng import CounterStream

__all__ = ["StreamCheckpointMixin", "lazy_stream", "load_stream", "restore_stream", "save_stream"]


def lazy_stream(module: Any, name: str, seed: int | None) -> CounterStream:
    """The module's stream, built at first use from ``seed`` (None: ``torch.initial_seed()``) and its global rank.

    A position restored from a checkpoint (:func:`restore_stream`) replaces the seed and counter.
    """
    stream = getattr(module, f"_{name}_rng", None)
    if stream is None:
        seed = seed if seed is not None else torch.initial_seed()
        stream = CounterStream(seed, rank=getattr(module, "global_rank", 0))
        restored = getattr(module, f"_{name}_restored", None)
        if restored is not None:
            stream.seed, stream.counter = restored["seed"], restored["counter"]
        setattr(module, f"_{name}_rng", stream)
    return stream


def restore_stream(module: Any, name: str, seed: int, counter: int) -> None:
    """Drop the module's stream; the next :func:`lazy_stream` resumes at ``seed`` and ``counter``."""
    setattr(module, f"_{name}_restored", {"seed": int(seed), "counter": int(counter)})
    setattr(module, f"_{name}_rng", None)


def save_stream(module: Any, name: str, checkpoint: dict[str, Any], key: str) -> None:
    """Write the stream's seed and counter to ``checkpoint[key]``; nothing when no stream was built yet."""
    stream = getattr(module, f"_{name}_rng", None)
    if stream is not None:
        checkpoint[key] = {"seed": stream.seed, "counter": stream.counter}


def load_stream(module: Any, name: str, checkpoint: dict[str, Any], key: str) -> None:
    """Restore the position :func:`save_stream` wrote to ``checkpoint[key]``; nothing when it is absent."""
    state = checkpoint.get(key)
    if state:
        restore_stream(module, name, state["seed"], state["counter"])


class StreamCheckpointMixin:
    """Saves and restores a mixin's draw stream (named by the class attribute ``stream_name``) with the
    checkpoint, under ``checkpoint[stream_name]``, and calls the next class's hooks first."""

    stream_name: str

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        parent = getattr(super(), "on_save_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        save_stream(self, self.stream_name, checkpoint, self.stream_name)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        parent = getattr(super(), "on_load_checkpoint", None)
        if parent is not None:
            parent(checkpoint)
        load_stream(self, self.stream_name, checkpoint, self.stream_name)
