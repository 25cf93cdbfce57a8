"""EMA decay schedules: constant, warmup (``1 - (1 + t / inv_gamma) ** -power``), delayed start.

An EMA with a fixed ``decay=0.9999`` remembers its random initialisation for tens of thousands of
steps. The warmup schedule (used by timm, diffusers and the ``ema_pytorch`` package) starts at 0
(copy the weights) and rises towards ``decay``: with ``inv_gamma=1``, ``power=2/3`` it reaches
0.999 after ~31k steps and 0.9999 after ~1M; ``power=3/4`` gets there after ~10k / ~215k steps.
"""

from __future__ import annotations

__all__ = ["ema_warmup_decay", "ema_decay_at"]


def ema_warmup_decay(
    step: int, decay: float, inv_gamma: float = 1.0, power: float = 2.0 / 3.0, min_decay: float = 0.0
) -> float:
    """``1 - (1 + step / inv_gamma) ** -power``, clamped to ``[min_decay, decay]``.

    ``step`` counts optimizer steps since the EMA started (0 at its start, where the value is
    ``min_decay``, i.e. a copy when ``min_decay=0``).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    if inv_gamma <= 0 or power <= 0:
        raise ValueError(f"inv_gamma and power must be > 0, got inv_gamma={inv_gamma}, power={power}.")
    if not 0.0 <= min_decay <= decay <= 1.0:
        raise ValueError(f"Need 0 <= min_decay <= decay <= 1, got min_decay={min_decay}, decay={decay}.")
    value = 1.0 - (1.0 + step / inv_gamma) ** -power
    return min(max(value, min_decay), decay)


def ema_decay_at(
    step: int,
    decay: float,
    start_step: int = 0,
    warmup: bool = False,
    inv_gamma: float = 1.0,
    power: float = 2.0 / 3.0,
    min_decay: float = 0.0,
) -> float | None:
    """The decay of the EMA update made after optimizer step ``step`` (``trainer.global_step``).

    - ``step < start_step``: ``None``, no update (the EMA has not started);
    - ``step == start_step``: ``0.0``, the EMA starts as a copy of the weights at that step;
    - later: ``decay``, or with ``warmup`` the value of :func:`ema_warmup_decay` at
      ``step - start_step``.
    """
    if step < start_step:
        return None
    t = step - start_step
    if t == 0:
        return 0.0
    if warmup:
        return ema_warmup_decay(t, decay, inv_gamma=inv_gamma, power=power, min_decay=min_decay)
    return float(decay)
