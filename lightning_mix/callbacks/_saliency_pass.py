"""The clean-batch saliency pass run by the saliency-guided mixing callbacks (PuzzleMix)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from lightning_mix.mixing.input_saliency import ChannelReduce, input_gradient_saliency


def clean_input_saliency(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    eval_mode: bool = True,
    channel_reduce: ChannelReduce = "rms",
) -> torch.Tensor:
    """Input-gradient saliency (B, H, W) of the clean batch, as PuzzleMix's authors compute it.

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
    """
    flags = [(module, module.training) for module in pl_module.modules()]
    if eval_mode:
        pl_module.eval()
    try:
        with trainer.precision_plugin.forward_context():
            return input_gradient_saliency(pl_module, inputs, targets, channel_reduce=channel_reduce)
    finally:
        for module, flag in flags:
            module.training = flag


__all__ = ["clean_input_saliency"]
