"""Where a merge reads its inputs: state dicts, modules, or checkpoint files read lazily.

Files are opened through :mod:`lightning_mix.checkpoint_io` (``weights_only=True``, memory-mapped):
nothing is read until a tensor is touched, so a merge reads each input one tensor at a time.
Lightning checkpoints give their ``"state_dict"``; a plain ``torch.save(model.state_dict())`` file
works as well.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Union

from torch import Tensor, nn

from lightning_mix.checkpoint_io import extract_state_dict, load_checkpoint

__all__ = ["StateDictSource", "StateDictLike"]

StateDictLike = Union[Mapping[str, Tensor], str, os.PathLike, nn.Module, "StateDictSource"]


class StateDictSource:
    """A read-only, ordered view of one model's tensors: a mapping, a module or a checkpoint file.

    ``label`` names the source in error messages.
    """

    def __init__(self, tensors: Mapping[str, Tensor], label: str) -> None:
        self._tensors = tensors
        self.label = label
        self.names: list[str] = list(tensors.keys())

    @classmethod
    def open(cls, source: StateDictLike, label: str | None = None) -> StateDictSource:
        """Wrap a state dict, an ``nn.Module`` (its ``state_dict()``) or a checkpoint path."""
        if isinstance(source, StateDictSource):
            return source
        if isinstance(source, nn.Module):
            return cls(source.state_dict(), label or type(source).__name__)
        if isinstance(source, (str, os.PathLike)):
            return cls(extract_state_dict(load_checkpoint(source), str(source)), label or str(source))
        if isinstance(source, Mapping):
            return cls(extract_state_dict(source, label or "state dict"), label or "state dict")
        raise TypeError(
            f"cannot read weights from {type(source).__name__}: pass a mapping of names to tensors, "
            "an nn.Module or the path of a checkpoint"
        )

    @property
    def tensors(self) -> Mapping[str, Tensor]:
        """The underlying mapping of names to tensors (read-only by convention)."""
        return self._tensors

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self.names)
