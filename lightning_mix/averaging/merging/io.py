"""State-dict sources for merging: in memory, or checkpoint files read lazily one tensor at a time.

Files are opened with ``torch.load(mmap=True, weights_only=True)``: nothing is read until a tensor is
touched, and after a tensor has been used its pages are handed back to the kernel (``madvise``,
Linux), so the resident memory of a merge over files stays near one output model plus the largest
tensor of every input, however many inputs there are. Lightning checkpoints keep their weights under
``"state_dict"``; a plain ``torch.save(model.state_dict())`` file works as well.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

__all__ = ["StateDictSource", "StateDictLike", "load_checkpoint_lazy", "extract_state_dict", "limit_heap_growth"]

StateDictLike = Union[Mapping[str, Tensor], str, os.PathLike, nn.Module, "StateDictSource"]

_MADV_DONTNEED = 4
_PAGE = 4096
_libc: Any = None
if sys.platform.startswith("linux"):  # pragma: no branch
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _PAGE = os.sysconf("SC_PAGE_SIZE")
    except (OSError, AttributeError, ValueError):  # pragma: no cover
        _libc = None


def limit_heap_growth(threshold: int = 1 << 17) -> bool:
    """Make glibc serve allocations above ``threshold`` bytes with their own ``mmap`` (Linux only).

    By default glibc raises that threshold each time a large block is freed, after which large
    temporaries come from the heap and the heap rarely shrinks: a long per-tensor merge then holds
    freed temporaries interleaved with the tensors it keeps, up to twice its real need. Fixing the
    threshold (what ``MALLOC_MMAP_THRESHOLD_=131072`` does) returns every large temporary to the
    system when it is freed. It changes the whole process's allocator, so the library never calls
    it on its own; ``lightning-mix merge`` does. Returns whether it took effect.
    """
    if _libc is None:
        return False
    try:
        return bool(_libc.mallopt(ctypes.c_int(-3), ctypes.c_int(threshold)))  # M_MMAP_THRESHOLD
    except AttributeError:  # pragma: no cover - not glibc
        return False


def load_checkpoint_lazy(path: str | os.PathLike) -> tuple[Any, bool]:
    """Load a ``torch.save`` file memory-mapped (tensors are read on first touch).

    Returns the loaded object and whether it is memory-mapped (files in the legacy, non-zip format
    cannot be, and are read whole).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True), True
        except RuntimeError as err:
            if "mmap" not in str(err) and "zip" not in str(err):
                raise
        return torch.load(path, map_location="cpu", weights_only=True), False
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(
            f"{str(path)!r} holds objects that torch.load(weights_only=True) refuses (see above). If you trust "
            "the file, load it with torch.load(path, weights_only=False) and pass its state dict instead of the path"
        ) from err


def extract_state_dict(obj: Any, origin: str = "object") -> Mapping[str, Tensor]:
    """The tensors of a loaded checkpoint: ``obj["state_dict"]`` for Lightning checkpoints, else ``obj``."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise TypeError(
        f"{origin} is not a state dict: expected a mapping of names to tensors or a Lightning checkpoint "
        "with a 'state_dict' entry"
    )


def _drop_pages(tensor: Tensor) -> None:
    """Return the memory-mapped pages under ``tensor`` to the kernel (they are re-read if touched again)."""
    if _libc is None:
        return
    storage = tensor.untyped_storage()
    start, stop = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    start = -(-start // _PAGE) * _PAGE  # only whole pages inside this tensor's bytes
    stop = stop // _PAGE * _PAGE
    if stop > start:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), _MADV_DONTNEED)


class StateDictSource:
    """A read-only, ordered view of one model's tensors: a mapping, a module or a checkpoint file.

    Files are memory-mapped and read one tensor at a time; :meth:`release` hands a used tensor's
    pages back. ``label`` names the source in error messages.
    """

    def __init__(self, tensors: Mapping[str, Tensor], label: str, mapped: bool = False) -> None:
        self._tensors = tensors
        self.label = label
        self.mapped = mapped
        self.names: list[str] = list(tensors.keys())

    @classmethod
    def open(cls, source: StateDictLike, label: str | None = None) -> "StateDictSource":
        """Wrap a state dict, an ``nn.Module`` (its ``state_dict()``) or a checkpoint path."""
        if isinstance(source, StateDictSource):
            return source
        if isinstance(source, nn.Module):
            return cls(source.state_dict(), label or type(source).__name__)
        if isinstance(source, (str, os.PathLike)):
            obj, mapped = load_checkpoint_lazy(source)
            return cls(extract_state_dict(obj, str(source)), label or str(source), mapped)
        if isinstance(source, Mapping):
            return cls(extract_state_dict(source, label or "state dict"), label or "state dict")
        raise TypeError(
            f"cannot read weights from {type(source).__name__}: pass a mapping of names to tensors, "
            "an nn.Module or the path of a checkpoint"
        )

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __len__(self) -> int:
        return len(self.names)

    def release(self, name: str) -> None:
        """Drop the resident pages of a memory-mapped tensor once it has been used (no-op in memory)."""
        if self.mapped:
            _drop_pages(self._tensors[name])
