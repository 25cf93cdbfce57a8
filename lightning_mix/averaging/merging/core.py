"""The per-tensor merge loop shared by every method.

Every merge walks the names of a reference model (the base, or the first model) one tensor at a
time: it reads that tensor from every source, casts it to float32 on ``device``, lets the method
combine the tensors, casts the result to the output dtype, and releases the inputs. Peak memory is
the output plus a few copies of the largest tensor, never a flattened copy of whole models.

What is not merged is copied from the reference: integer and boolean buffers (``num_batches_tracked``,
index buffers) and names left out by ``include`` / ``exclude``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor

from lightning_mix.averaging.merging.io import StateDictLike, StateDictSource

__all__ = ["merge_state_dicts", "check_compatible", "Progress", "MergeError"]

Progress = Callable[[int, int, str], None]
Combine = Callable[[str, list[Tensor], dict[str, Any]], Tensor]


class MergeError(ValueError):
    """The inputs of a merge do not match (names, shapes) or a method's options are invalid."""


def _patterns(patterns: str | Iterable[str] | None) -> list[str] | None:
    if patterns is None:
        return None
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _matches(name: str, patterns: list[str] | None) -> bool:
    return patterns is not None and any(fnmatchcase(name, p) for p in patterns)


def check_compatible(sources: Sequence[StateDictSource], reference: int = 0) -> list[str]:
    """Check all sources hold the same names with the same shapes; return the names in reference order.

    Raises :class:`MergeError` naming the first mismatch (a missing or extra name, or a shape).
    """
    ref = sources[reference]
    names = ref.names
    for src in sources:
        if src is ref:
            continue
        for name in names:
            if name not in src:
                raise MergeError(f"{src.label} has no tensor {name!r} (present in {ref.label}); the models must share one architecture")
        if len(src) != len(names):
            extra = next(n for n in src.names if n not in ref)
            raise MergeError(f"{src.label} has a tensor {extra!r} that {ref.label} lacks; the models must share one architecture")
        for name in names:
            a, b = ref[name], src[name]
            if a.shape != b.shape:
                raise MergeError(
                    f"shape mismatch at {name!r}: {tuple(a.shape)} in {ref.label} but {tuple(b.shape)} in {src.label}"
                )
    return names


def merge_state_dicts(
    models: Sequence[StateDictLike],
    combine: Combine,
    params: Mapping[str, Any] | None = None,
    *,
    reference: int = 0,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """Merge state dicts tensor by tensor with ``combine(name, float32_tensors, params)``.

    Args:
        models: state dicts, modules or checkpoint paths (read lazily), all of one architecture.
        combine: the method, called per floating-point tensor with the inputs in float32 (same
            order as ``models``) and the method's parameters for that name; it must not modify
            its inputs in place.
        params: the method's parameters (``overrides`` change them per name).
        reference: index of the model that gives the names, the order, the integer buffers, the
            tensors left out by the filters and the default output dtype (the base model).
        include: glob patterns (``fnmatch``) of names to merge; ``None`` merges every
            floating-point tensor. Names not included are copied from the reference.
        exclude: glob patterns of names not to merge (copied from the reference).
        overrides: ``{pattern: {param: value}}``; every pattern matching a name updates the
            parameters for that name, in order (``{"head.*": {"density": 0.5}}``).
        dtype: output dtype of merged floating-point tensors; ``None`` keeps the reference's.
        device: where the per-tensor arithmetic runs (a GPU makes large merges faster); the
            result is returned on the CPU.
        progress: called as ``progress(done, total, name)`` after each tensor.
        labels: names of the models for error messages.
    """
    sources = [StateDictSource.open(m, labels[i] if labels else f"model {i}") for i, m in enumerate(models)]
    if not sources:
        raise MergeError("no models to merge")
    names = check_compatible(sources, reference)
    include_p, exclude_p = _patterns(include), _patterns(exclude)
    base_params = dict(params or {})
    out: dict[str, Tensor] = {}
    total = len(names)
    for i, name in enumerate(names):
        ref = sources[reference][name]
        merge_it = ref.is_floating_point() and (include_p is None or _matches(name, include_p))
        merge_it = merge_it and not _matches(name, exclude_p)
        if not merge_it:
            out[name] = ref.detach().clone()
        else:
            p = dict(base_params)
            for pattern, update in (overrides or {}).items():
                if fnmatchcase(name, pattern):
                    p.update(update)
            inputs = [s[name].detach().to(device=device, dtype=torch.float32) for s in sources]
            merged = combine(name, inputs, p)
            out[name] = merged.to(dtype=dtype or ref.dtype).cpu()
            del inputs, merged
        for s in sources:
            s.release(name)
        if progress is not None:
            progress(i + 1, total, name)
    return out
