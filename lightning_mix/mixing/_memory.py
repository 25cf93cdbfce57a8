"""New output tensors for the mixers, backed by transparent huge pages on Linux CPUs when large.

A mixer returns a new batch tensor every step. On CPU, torch allocates large tensors straight from
the kernel (``mmap``), so every step's output arrives as fresh 4 KiB pages, each zeroed by the
kernel on first touch. For a 128 x 3 x 224 x 224 float32 batch (77 MB) that first touch costs
more than the copying itself: on the 2-core development VM, ``x.clone()`` takes 21 ms, of which
about 20 ms are page faults. With the buffer advised as huge-page memory (``madvise(...,
MADV_HUGEPAGE)``, what PyTorch's own ``THP_MEM_ALLOC_ENABLE=1`` does for every allocation), the
same gather takes 10-12 ms instead of 28 ms.

Only our own outputs are advised, only on Linux CPUs, only when they are at least
:data:`HUGEPAGE_MIN_BYTES`, and only when the kernel's transparent huge pages are not ``never``.
Anything that fails (no ``libc``, an old kernel) switches the advice off silently for the process:
values are never affected, only where the kernel puts them. Set the environment variable
``LIGHTNING_MIX_HUGEPAGES=0`` to switch it off (for instance where the kernel's ``defrag`` setting
makes huge-page faults stall on fragmented memory).

Outputs that need a gradient are made by the ordinary, autograd-recording ops.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import sys

import torch

__all__ = ["HUGEPAGE_MIN_BYTES", "hugepages_enabled", "new_empty", "clone", "index_select"]

HUGEPAGE_MIN_BYTES = 8 * 1024 * 1024  # four 2 MiB huge pages: below this the advice cannot pay off
_MADV_HUGEPAGE = 14
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"

_madvise = None  # libc's madvise, once looked up
_enabled: bool | None = None  # decided on first use


def _thp_available() -> bool:
    try:
        with open(_THP_SETTING) as setting:
            return "[never]" not in setting.read()
    except OSError:
        return False


def hugepages_enabled() -> bool:
    """Whether large CPU outputs are advised as huge pages in this process (decided once)."""
    global _enabled, _madvise
    if _enabled is None:
        _enabled = False
        if sys.platform.startswith("linux") and os.environ.get("LIGHTNING_MIX_HUGEPAGES", "1") != "0" and _thp_available():
            try:
                libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's included
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                libc.madvise.restype = ctypes.c_int
                _madvise = libc.madvise
                _enabled = True
            except (OSError, AttributeError):
                _enabled = False
    return _enabled


def _advise_hugepages(tensor: torch.Tensor) -> None:
    """Advise the whole pages inside ``tensor``'s (untouched) buffer as huge-page memory."""
    global _enabled
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // page) * page, end // page * page
    if last > first and _madvise(first, last - first, _MADV_HUGEPAGE) != 0:
        _enabled = False  # the kernel refuses: stop asking


def _wants_advice(like: torch.Tensor, nbytes: int) -> bool:
    return like.device.type == "cpu" and nbytes >= HUGEPAGE_MIN_BYTES and hugepages_enabled()


def _needs_autograd(tensor: torch.Tensor) -> bool:
    return tensor.requires_grad and torch.is_grad_enabled()


def _advised_empty(shape: tuple[int, ...] | torch.Size, like: torch.Tensor) -> torch.Tensor:
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    _advise_hugepages(out)
    return out


def new_empty(shape: tuple[int, ...] | torch.Size, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape`` with ``like``'s dtype and device."""
    if _wants_advice(like, math.prod(shape) * like.element_size()):
        return _advised_empty(shape, like)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def clone(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.clone()``, huge-page backed when large, contiguous and on CPU (other layouts, such
    as channels-last, are cloned as torch does, keeping their layout)."""
    if (
        _needs_autograd(tensor)
        or not tensor.is_contiguous()
        or not _wants_advice(tensor, tensor.numel() * tensor.element_size())
    ):
        return tensor.clone()
    return _advised_empty(tensor.shape, tensor).copy_(tensor)


def index_select(source: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``source.index_select(dim, index)`` into a new tensor (huge-page backed when large on CPU)."""
    shape = list(source.shape)
    shape[dim] = index.numel()
    if _needs_autograd(source) or not _wants_advice(source, math.prod(shape) * source.element_size()):
        return source.index_select(dim, index)
    return torch.index_select(source, dim, index, out=_advised_empty(tuple(shape), source))
