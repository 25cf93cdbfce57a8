"""Counter-based random streams for callbacks: reproducible, per rank, and trivially resumable.

Each training batch gets a generator seeded from ``(seed, rank, batch counter)`` through a 64-bit
mixing function. The stream therefore depends only on those three numbers: ranks draw different
values, and a resumed run that restores the counter continues the exact sequence of an
uninterrupted run, without saving (and per rank gathering) generator states.
"""

from __future__ import annotations

import torch

__all__ = ["CounterStream", "stream_seed"]

_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def stream_seed(seed: int, rank: int, counter: int) -> int:
    """A well-mixed 63-bit seed for draw number ``counter`` of ``rank`` under ``seed``."""
    mixed = _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ rank) ^ counter)
    return mixed >> 1


class CounterStream:
    """Generators on CPU and on a device, reseeded for each batch from (seed, rank, counter)."""

    def __init__(self, seed: int, rank: int = 0) -> None:
        self.seed = int(seed)
        self.rank = int(rank)
        self.counter = 0
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device, salt: int = 0) -> torch.Generator:
        """The generator for the current counter on ``device`` (``salt`` separates independent uses)."""
        device = torch.device(device)
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        generator.manual_seed(stream_seed(self.seed + salt, self.rank, self.counter))
        return generator

    def advance(self) -> None:
        self.counter += 1
