"""The base of the saliency-guided mixing callbacks (PuzzleMix, Co-Mixup): their shared options and decisions."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks._mixing_base import MixingCallbackBase
from lightning_mix.callbacks._saliency_pass import SaliencyPass, clean_input_pass
from lightning_mix.mixing.input_saliency import CHANNEL_REDUCES, ChannelReduce

_DECISION_SALT = 2


class SaliencyMixingBase(MixingCallbackBase):
    """A :class:`MixingCallbackBase` that mixes with probability ``p`` after a clean saliency pass.

    Subclasses call :meth:`_set_saliency_options` in ``__init__`` (it checks ``channel_reduce`` and
    ``p``, naming the callback in the error), then :meth:`_should_mix` and :meth:`_saliency` per batch.
    """

    saliency_eval_mode: bool
    channel_reduce: ChannelReduce
    p: float

    def _set_saliency_options(
        self, name: str, saliency_eval_mode: bool, channel_reduce: ChannelReduce, p: float
    ) -> None:
        if channel_reduce not in CHANNEL_REDUCES:
            raise ValueError(f"{name}: channel_reduce must be one of {CHANNEL_REDUCES}, got {channel_reduce!r}.")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: p is a probability and must lie in [0, 1], got {p}.")
        self.saliency_eval_mode = saliency_eval_mode
        self.channel_reduce = channel_reduce
        self.p = p

    @property
    def state_key(self) -> str:
        return self._generate_state_key(input_key=self.input_key)

    def _saliency(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inputs: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """The clean batch's saliency (B, H, W) with this callback's eval mode and channel reduction."""
        return self._saliency_pass(trainer, pl_module, inputs, targets).saliency

    def _saliency_pass(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        keep_graph: bool = False,
    ) -> SaliencyPass:
        """The whole pass (saliency, input gradient, loss) with this callback's eval mode and channel reduction."""
        return clean_input_pass(
            trainer, pl_module, inputs, targets, self.saliency_eval_mode, self.channel_reduce, keep_graph
        )

    def _should_mix(self) -> bool:
        """Whether this batch is mixed (:meth:`_draw_decision` with ``p``)."""
        return self._draw_decision(self.p, _DECISION_SALT)


__all__ = ["SaliencyMixingBase"]
