"""In-place weight averages over whole lists of tensors: EMA and the running (SWA) mean.

Both updates run as a handful of ``torch._foreach_*`` kernels over *all* floating tensors at once
(one launch per dtype/device group instead of one per tensor), which is what makes them cheap
enough to run after every optimizer step. Three pitfalls are handled here once, for every caller:

- **precision**: the average should be held in float32 (see :func:`averaging_copy`), whatever the
  model's dtype. A bf16 average updated with ``decay=0.999`` moves by ``0.001 * (w - avg)`` per
  step, which is below half a bf16 ulp, so it would never move. ``current`` tensors of another
  dtype (bf16, fp16) or on another device are cast to the average's dtype and device first;
- **integer buffers** (``num_batches_tracked`` and friends) are *copied*, never averaged;
- **tied parameters** are visited once (a module's tensors are deduplicated by identity).

Everything accepts an ``nn.Module`` (its parameters and persistent buffers, in ``state_dict``
order), a mapping of name to tensor (a state dict; the keys must match), or a sequence of tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "TensorCollection",
    "averaging_tensors",
    "averaging_copy",
    "ema_update_",
    "running_mean_update_",
    "copy_tensors_",
]

TensorCollection = nn.Module | Mapping[str, Tensor] | Sequence[Tensor]


def _module_named_tensors(module: nn.Module) -> list[tuple[list[str], Tensor]]:
    """Parameters and persistent buffers of ``module`` in ``state_dict`` order, tied ones merged.

    Each entry is (all state-dict names of the tensor, the live tensor). ``state_dict(keep_vars=True)``
    gives the live ``Parameter``/buffer objects, so in-place updates reach the module.
    """
    entries: list[tuple[list[str], Tensor]] = []
    index: dict[int, int] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if not isinstance(tensor, Tensor):  # extra_state and other objects are not averaged
            continue
        key = id(tensor)
        if key in index:
            entries[index[key]][0].append(name)
        else:
            index[key] = len(entries)
            entries.append(([name], tensor))
    return entries


def averaging_tensors(obj: TensorCollection) -> list[Tensor]:
    """The tensors an average is taken over, in a stable order.

    For a module: parameters and persistent buffers (``state_dict`` order, tied tensors once),
    detached views of the live tensors (writing to them writes to the module). For a mapping:
    its values in key order. For a sequence: the tensors themselves.
    """
    if isinstance(obj, nn.Module):
        return [tensor.detach() for _, tensor in _module_named_tensors(obj)]
    if isinstance(obj, Mapping):
        return [value.detach() if isinstance(value, Tensor) else value for value in obj.values()]
    if isinstance(obj, Tensor):
        raise TypeError("Pass a list of tensors, a state dict or a module, not a single tensor (wrap it: [tensor]).")
    return list(obj)


def _check_pairs(averaged: TensorCollection, current: TensorCollection) -> tuple[list[Tensor], list[Tensor]]:
    if isinstance(averaged, Mapping) and isinstance(current, Mapping) and list(averaged) != list(current):
        missing = [k for k in averaged if k not in current][:5]
        extra = [k for k in current if k not in averaged][:5]
        raise ValueError(
            "averaged and current state dicts have different keys "
            f"(missing from current: {missing}, unexpected in current: {extra}); "
            "average models of the same architecture."
        )
    avg = averaging_tensors(averaged)
    cur = averaging_tensors(current)
    if len(avg) != len(cur):
        raise ValueError(
            f"averaged has {len(avg)} tensors but current has {len(cur)}; they must come from the same architecture "
            "(and, for modules, the same set of persistent buffers)."
        )
    return avg, cur


def _split(avg: list[Tensor], cur: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """Floating pairs (current cast to the average's dtype and device) and the other (integer, bool) pairs."""
    f_avg: list[Tensor] = []
    f_cur: list[Tensor] = []
    i_avg: list[Tensor] = []
    i_cur: list[Tensor] = []
    for a, c in zip(avg, cur):
        if a.shape != c.shape:
            raise ValueError(f"Shape mismatch between averaged {tuple(a.shape)} and current {tuple(c.shape)} tensors.")
        if a.is_floating_point() or a.is_complex():
            if c.dtype != a.dtype or c.device != a.device:
                c = c.to(device=a.device, dtype=a.dtype, non_blocking=True)
            f_avg.append(a)
            f_cur.append(c)
        else:
            if c.device != a.device or c.dtype != a.dtype:
                c = c.to(device=a.device, dtype=a.dtype, non_blocking=True)
            i_avg.append(a)
            i_cur.append(c)
    return f_avg, f_cur, i_avg, i_cur


@torch.no_grad()
def ema_update_(averaged: TensorCollection, current: TensorCollection, decay: float) -> None:
    """``averaged <- decay * averaged + (1 - decay) * current``, in place, over every floating tensor.

    Integer and bool tensors of ``averaged`` (e.g. BatchNorm's ``num_batches_tracked``) receive a
    copy of ``current``'s. ``decay=0`` copies ``current``; ``decay=1`` leaves ``averaged`` as it is.

    Args:
        averaged: the running average (module, state dict or list of tensors), updated in place.
            Keep it in float32 for low-precision models (:func:`averaging_copy` does).
        current: the model's current weights, same structure; any dtype or device.
        decay: the EMA decay in [0, 1] (a Python float).

    The arithmetic is ``torch._foreach_lerp_(averaged, current, 1 - decay)``: one kernel per dtype
    and device group, the same numbers as ``torch.optim.swa_utils.get_ema_multi_avg_fn``.
    """
    decay = float(decay)
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}.")
    avg, cur = _check_pairs(averaged, current)
    f_avg, f_cur, i_avg, i_cur = _split(avg, cur)
    if f_avg:
        if decay == 0.0:
            torch._foreach_copy_(f_avg, f_cur)
        elif decay < 1.0:
            torch._foreach_lerp_(f_avg, f_cur, 1.0 - decay)
    if i_avg:
        torch._foreach_copy_(i_avg, i_cur)


@torch.no_grad()
def running_mean_update_(averaged: TensorCollection, current: TensorCollection, num_averaged: int) -> None:
    """Add ``current`` to an equal-weight mean of ``num_averaged`` models, in place.

    ``averaged <- averaged + (current - averaged) / (num_averaged + 1)`` over every floating
    tensor (the SWA update); ``num_averaged=0`` copies ``current``. Integer and bool tensors are
    copied. The caller increments its own count afterwards.
    """
    n = int(num_averaged)
    if n < 0:
        raise ValueError(f"num_averaged must be >= 0, got {num_averaged}.")
    avg, cur = _check_pairs(averaged, current)
    f_avg, f_cur, i_avg, i_cur = _split(avg, cur)
    if f_avg:
        if n == 0:
            torch._foreach_copy_(f_avg, f_cur)
        else:
            torch._foreach_lerp_(f_avg, f_cur, 1.0 / (n + 1))
    if i_avg:
        torch._foreach_copy_(i_avg, i_cur)


@torch.no_grad()
def averaging_copy(
    obj: TensorCollection, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> list[Tensor]:
    """A detached copy of ``obj``'s tensors to average into: floating tensors as ``dtype`` (float32),
    integer and bool tensors as they are, on ``device`` (default: where each tensor lives).
    """
    out = []
    for tensor in averaging_tensors(obj):
        target = tensor.device if device is None else torch.device(device)
        if tensor.is_floating_point():
            out.append(tensor.to(device=target, dtype=dtype, copy=True))
        else:
            out.append(tensor.to(device=target, copy=True))
    return out


@torch.no_grad()
def copy_tensors_(destination: TensorCollection, source: TensorCollection) -> None:
    """Copy ``source`` into ``destination`` in place, casting dtype and device as needed."""
    dst, src = _check_pairs(destination, source)
    for d, s in zip(dst, src):
        d.copy_(s, non_blocking=True)
