"""A callback's seeded draw stream: started at fit start, kept in the callback's checkpoint state."""

from __future__ import annotations

from typing import Any

import torch

from lightning_mix.callbacks._rng import CounterStream


class SeededStreamState:
    """Mixed into a Callback before ``Callback``: the stream ``_stream`` and its ``state_dict`` round trip.

    The callback sets ``seed`` (None: ``torch.initial_seed()``), ``_stream = None`` and
    ``_restored = None`` in ``__init__`` and calls :meth:`_start_stream` in ``on_fit_start``. A state
    loaded before fit start is kept in ``_restored`` and applied by :meth:`_start_stream`.
    """

    seed: int | None
    _stream: CounterStream | None
    _restored: dict[str, int] | None

    def _start_stream(self, rank: int) -> None:
        seed = self.seed if self.seed is not None else torch.initial_seed()
        self._stream = CounterStream(seed, rank=rank)
        if self._restored is not None:
            self._stream.seed, self._stream.counter = self._restored["seed"], self._restored["counter"]
            self._restored = None

    def state_dict(self) -> dict[str, Any]:
        if self._stream is None:
            return {}
        return {"seed": self._stream.seed, "counter": self._stream.counter}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        restored = {"seed": int(state_dict["seed"]), "counter": int(state_dict["counter"])}
        if self._stream is not None:  # restored after on_fit_start
            self._stream.seed, self._stream.counter = restored["seed"], restored["counter"]
        else:
            self._restored = restored


__all__ = ["SeededStreamState"]
