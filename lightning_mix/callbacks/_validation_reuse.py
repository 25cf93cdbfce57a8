"""Score a snapshot from the fit's own epoch-end validation, when that validation ran on exactly its weights.

ModelSoup's ingredients are taken just before the epoch-end validation. On a single process, when
the module still holds exactly the snapshot's weights during that validation (no other callback
swapped weights in, checked by a fingerprint of every parameter and buffer before and after), and
the module's ``validation_step`` calls the module once per batch on the batch's model input (the
same object), the logits of that call give the built-in score (accuracy, NLL) of the snapshot at
no extra forward pass. The capture uses a forward hook removed by its handle. Anything else (a
custom scorer, several calls, another input, DDP, where BatchNorm buffers differ per rank) leaves
the snapshot to be scored by ModelSoup's own loop at the end of training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_mix.callbacks._soup_scoring import LabelScore

__all__ = ["ValidationCapture", "weights_fingerprint"]


def weights_fingerprint(module: nn.Module) -> torch.Tensor:
    """Per-tensor sums (float64) of every parameter and buffer, stacked on the module's device."""
    sums = [t.detach().double().sum() for t in list(module.parameters()) + list(module.buffers()) if t.numel()]
    return torch.stack(sums) if sums else torch.zeros(0, dtype=torch.float64)


class ValidationCapture:
    """Accumulates the built-in score of one validation epoch from the module's own forward calls."""

    def __init__(self, module: nn.Module, scorer: LabelScore, fingerprint: torch.Tensor) -> None:
        self.module, self.scorer, self.fingerprint = module, scorer, fingerprint
        self.calls: list[tuple[Any, Any]] = []
        self.valid = True
        self.batches = 0
        self.totals: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.calls.append((args[0] if args else None, output))

    def start_batch(self) -> None:
        self.calls.clear()

    def end_batch(self, batch: Any) -> None:
        calls, self.calls = self.calls, []
        if not self.valid:
            return
        try:
            expected = self.scorer.model_input(batch)
        except (KeyError, TypeError):
            self.valid = False
            return
        if len(calls) != 1 or calls[0][0] is not expected or not isinstance(calls[0][1], torch.Tensor):
            self.valid = False
            return
        try:
            values = self.scorer.from_logits(calls[0][1], batch).detach().double().reshape(-1)
        except (KeyError, TypeError, ValueError, RuntimeError):  # logits of another shape than the scorer reads
            self.valid = False
            return
        pair = torch.stack(
            [values.sum(), torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device)]
        )
        self.totals = pair if self.totals is None else self.totals + pair
        self.batches += 1

    def finish(self, expected_batches: float) -> float | None:
        """Remove the hook; the mean score, or ``None`` when the capture does not stand for the snapshot."""
        self.handle.remove()
        if not self.valid or self.totals is None or self.batches != expected_batches:
            return None
        if not torch.equal(weights_fingerprint(self.module), self.fingerprint):
            return None
        total, count = self.totals.tolist()
        return total / count if count > 0 else None
