"""Checkpoint files in and out, in one place (torch only).

Every part of lightning-mix that reads or writes a checkpoint goes through this module:

- :func:`load_checkpoint` / :func:`load_state_dict_lazy`: ``torch.load(weights_only=True, mmap=True)``;
  nothing is read from disk until a tensor is touched. A file that cannot be read (empty,
  truncated, random bytes) raises :class:`CheckpointError` naming it; a file that
  ``weights_only=True`` refuses raises :class:`pickle.UnpicklingError` saying how to load a trusted
  file yourself.
- :func:`extract_state_dict`: the weights of a Lightning checkpoint (``"state_dict"``, or the
  trained weights ``"current_model_state"`` of the EMA/SWA layout) or of a plain state dict.
- :func:`check_compatible`: same names, same shapes, same dtypes across models, else
  :class:`IncompatibleCheckpointsError` (the one error type for mismatched inputs).
- :func:`check_output_path` and :func:`save_checkpoint_atomically`: refuse an unwritable output
  before any work, then write to a temporary file in the output's folder and rename it; the
  temporary file is removed on any failure, Ctrl-C and SIGTERM included, and the final file gets
  the mode ``torch.save`` would give (``0666`` minus the umask: ``0644`` by default).

Memory: a merge over memory-mapped files keeps only the pages it touched resident until the kernel
reclaims them. Processes that free many large temporaries (long merges) can keep glibc from
growing its heap with ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment; that is a process-wide
allocator setting, so the library never changes it on its own.
"""

from __future__ import annotations

import os
import pickle
import secrets
import signal
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "atomic_write_path",
    "CheckpointError",
    "IncompatibleCheckpointsError",
    "TRAINING_STATE_KEYS",
    "load_checkpoint",
    "load_state_dict_lazy",
    "extract_state_dict",
    "checkpoint_metadata",
    "check_compatible",
    "check_output_path",
    "save_checkpoint_atomically",
]

#: Entries of a Lightning checkpoint that describe a training run, not a set of weights; a file
#: derived from checkpoints (a merge, a soup) drops them. ``current_model_state`` and
#: ``averaging_state`` belong to the EMA/SWA layout of the input they came from.
TRAINING_STATE_KEYS = (
    "state_dict",
    "optimizer_states",
    "lr_schedulers",
    "loops",
    "callbacks",
    "MixedPrecision",
    "current_model_state",
    "averaging_state",
)


class CheckpointError(ValueError):
    """A file is not a readable checkpoint, or holds no state dict where one is expected."""


class IncompatibleCheckpointsError(ValueError):
    """State dicts that must share one architecture differ (a name, a shape or a dtype)."""


def _unreadable(path: Path) -> CheckpointError:
    return CheckpointError(
        f"not a readable checkpoint: {str(path)!r} (truncated? empty? not written by torch.save?); "
        "write it again or leave it out"
    )


def load_checkpoint(path: str | os.PathLike[str], mmap: bool = True) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True``, memory-mapped by default.

    Files in the legacy (non-zip) format cannot be memory-mapped and are read whole.

    Raises:
        FileNotFoundError: ``path`` does not exist (or is a directory: ``IsADirectoryError``).
        CheckpointError: the file is empty, truncated or not a ``torch.save`` file.
        pickle.UnpicklingError: the file holds objects ``weights_only=True`` refuses; the message
            says how to load a file you trust.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {str(path)!r} is a directory; pass the checkpoint files inside it")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise _unreadable(path)
    is_zip = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # not a refused class: bytes that are no pickle at all
            raise _unreadable(path) from err
        raise pickle.UnpicklingError(
            f"{str(path)!r} holds objects that torch.load(weights_only=True) refuses (see above). If you trust "
            "the file, load it with torch.load(path, weights_only=False) and pass its state dict instead of the path"
        ) from err
    except (EOFError, OSError, RuntimeError, zipfile.BadZipFile, ValueError) as err:
        raise _unreadable(path) from err


def extract_state_dict(obj: Any, origin: str = "object", key: str = "state_dict") -> Mapping[str, Tensor]:
    """The tensors of a loaded checkpoint.

    Args:
        obj: a Lightning checkpoint (a dict with ``"state_dict"``) or a plain state dict.
        origin: names ``obj`` in error messages (a path, "model 1").
        key: ``"state_dict"`` (what the module holds and is evaluated with: the average when an
            EMA or SWA callback owned the final weights) or ``"current_model_state"`` (the trained
            weights of that layout; a checkpoint without averaging has only ``"state_dict"``).

    Raises:
        CheckpointError: ``obj`` holds no mapping of names to tensors there.
    """
    if key not in ("state_dict", "current_model_state"):
        raise ValueError(f"key must be 'state_dict' or 'current_model_state', got {key!r}")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        if key == "current_model_state":
            if not isinstance(obj.get(key), Mapping):
                raise CheckpointError(f"{origin} has no 'current_model_state' (it was saved without EMA or SWA)")
            obj = obj[key]
        else:
            obj = obj["state_dict"]
    if isinstance(obj, Mapping) and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(
        f"{origin} is not a state dict: expected a mapping of names to tensors or a Lightning checkpoint "
        "with a 'state_dict' entry"
    )


def load_state_dict_lazy(path: str | os.PathLike[str], key: str = "state_dict") -> Mapping[str, Tensor]:
    """:func:`load_checkpoint` then :func:`extract_state_dict`: the file's weights, memory-mapped."""
    return extract_state_dict(load_checkpoint(path), str(path), key)


def checkpoint_metadata(obj: Any) -> dict[str, Any] | None:
    """The entries of a Lightning checkpoint other than its weights and training state; ``None`` for a plain state dict.

    What a derived checkpoint keeps (``hyper_parameters``, ``datamodule_hyper_parameters``,
    versions, ``epoch``...), so ``load_from_checkpoint`` works on it.
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return {k: v for k, v in obj.items() if k not in TRAINING_STATE_KEYS}
    return None


def check_compatible(
    states: Sequence[Mapping[str, Tensor]],
    labels: Sequence[str] | None = None,
    reference: int = 0,
    dtypes: bool = True,
) -> list[str]:
    """Check the state dicts hold the same names with the same shapes and dtypes; return the names in reference order.

    ``dtypes=False`` skips the dtype comparison (a float32 accumulator against its ingredients).

    Raises:
        IncompatibleCheckpointsError: naming the first missing or extra name, shape or dtype
            difference and the two inputs.
    """
    labels = list(labels) if labels is not None else [f"model {i}" for i in range(len(states))]
    ref, ref_label = states[reference], labels[reference]
    names = list(ref.keys())
    for state, label in zip(states, labels):
        if state is ref:
            continue
        for name in names:
            if name not in state:
                raise IncompatibleCheckpointsError(
                    f"{label} has no tensor {name!r} (present in {ref_label}); the models must share one architecture"
                )
        if len(state) != len(names):
            extra = next(n for n in state.keys() if n not in ref)
            raise IncompatibleCheckpointsError(
                f"{label} has a tensor {extra!r} that {ref_label} lacks; the models must share one architecture"
            )
        for name in names:
            a, b = ref[name], state[name]
            if a.shape != b.shape:
                raise IncompatibleCheckpointsError(
                    f"shape mismatch at {name!r}: {tuple(a.shape)} in {ref_label} but {tuple(b.shape)} in {label}"
                )
            if dtypes and a.dtype != b.dtype:
                raise IncompatibleCheckpointsError(
                    f"dtype mismatch at {name!r}: {a.dtype} in {ref_label} but {b.dtype} in {label}; cast the models "
                    "to one dtype first (e.g. model.float() before saving)"
                )
    return names


def check_output_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Refuse an output that cannot be written, before any work: return it as a ``Path``.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
        IsADirectoryError: ``path`` is a directory.
        NotADirectoryError: a parent of ``path`` is a file.
        PermissionError: the folder that would hold ``path`` is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"output {str(path)!r} is a directory; name a file inside it")
    if path.exists() and not overwrite:
        raise FileExistsError(f"output {str(path)!r} exists; pass overwrite (--overwrite) to replace it")
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {str(path)!r}: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {str(path)!r}: the folder {str(folder)!r} is not writable")
    return path


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` while the block runs (main thread only), so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def atomic_write_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path in ``path``'s folder that is renamed over ``path`` when the block succeeds.

    For writers that take a path (``trainer.save_checkpoint``, ``figure.savefig``): write the file
    at the yielded path inside the block. Readers never see a partial file: the rename happens only
    after the block returns, and the temporary file (``.NAME.<random>.tmp``) is removed on any
    failure (including ``KeyboardInterrupt`` and, in the main thread, SIGTERM). Missing parent
    folders are created. A block that writes nothing leaves ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    with _sigterm_raises():
        try:
            yield tmp
            if tmp.exists():
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def save_checkpoint_atomically(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write_path`, flushed to disk before the rename.

    The file is opened like ``torch.save(obj, path)`` opens it, so its mode follows the umask
    (``0644`` by default). Returns ``path``.
    """
    with atomic_write_path(path) as tmp, open(tmp, "xb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)
