"""The clean-batch saliency pass run by the saliency-guided mixing callbacks (PuzzleMix, Co-Mixup)."""

from __future__ import annotations

from typing import NamedTuple

import lightning.pytorch as pl
import torch

from lightning_mix.mixing.input_saliency import ChannelReduce, input_gradient, reduce_channels


class SaliencyPass(NamedTuple):
    """What one pass yields: the saliency (B, H, W), the input gradient (B, C, H, W) and the loss."""

    saliency: torch.Tensor
    gradient: torch.Tensor
    loss: torch.Tensor


def clean_input_pass(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    eval_mode: bool = True,
    channel_reduce: ChannelReduce = "rms",
    keep_graph: bool = False,
) -> SaliencyPass:
    """Input-gradient saliency of the clean batch, as PuzzleMix's authors compute it, with its gradient and loss.

    * Under the Trainer's precision: the forward runs inside ``trainer.precision_plugin.forward_context()``
      (autocast for ``16-mixed``/``bf16-mixed``).
    * Parameters' ``.grad`` are untouched: only the inputs are differentiated
      (``torch.autograd.grad``), so the step's own backward and the optimizer see exactly what they
      would without the pass.
    * No DDP reduction is triggered: ``pl_module`` is the bare LightningModule (Lightning hands
      callbacks the module, not the DDP wrapper), so the forward never arms DDP's reducer and the
      ranks' next backward and all-reduce run as usual.
    * With ``eval_mode`` (the authors' default, ``clean_lam = 0``) every submodule is put in eval
      mode for the pass (BatchNorm uses, and does not update, its running statistics; dropout is
      off) and each one's own ``training`` flag is restored afterwards.
    * With ``keep_graph`` the returned loss keeps its graph (PuzzleMix's clean loss, added to the
      step's loss later); otherwise it is detached.
    """
    flags = [(module, module.training) for module in pl_module.modules()]
    if eval_mode:
        pl_module.eval()
    try:
        with trainer.precision_plugin.forward_context():
            gradient, loss = input_gradient(pl_module, inputs, targets, keep_graph=keep_graph)
    finally:
        for module, flag in flags:
            module.training = flag
    return SaliencyPass(reduce_channels(gradient, channel_reduce), gradient, loss)


def clean_input_saliency(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    eval_mode: bool = True,
    channel_reduce: ChannelReduce = "rms",
) -> torch.Tensor:
    """The saliency (B, H, W) of :func:`clean_input_pass` alone."""
    return clean_input_pass(trainer, pl_module, inputs, targets, eval_mode, channel_reduce).saliency


__all__ = ["SaliencyPass", "clean_input_pass", "clean_input_saliency"]
