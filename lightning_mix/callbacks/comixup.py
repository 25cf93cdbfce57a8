"""Co-Mixup callback: a clean saliency pass, then the batch-level Co-Mixup of each batch."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks._saliency_base import SaliencyMixingBase
from lightning_mix.mixing import MixedBatch
from lightning_mix.mixing.comixup import CoMixer, ThresholdType, check_comixup_inputs
from lightning_mix.mixing.input_saliency import ChannelReduce


class CoMixup(SaliencyMixingBase):
    """Co-Mixup (Kim et al., ICLR 2021) with the authors' defaults (snu-mllab/Co-Mixup ``main.py``).

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import CoMixup
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        Trainer(max_epochs=10, callbacks=[CoMixup(num_classes=10)]).fit(SmallCNN(), MNIST5kDataModule())

    Each training batch, in ``on_train_batch_start``:

    1. the targets are made dense (``num_classes``, ``label_smoothing``);
    2. a saliency pass on the clean batch under the Trainer's precision (module in train mode, as
       the authors' default ``clean_lam = 1``: BatchNorm's running statistics see the clean batch),
       ``sqrt(mean_c (d loss / d x)^2)`` per pixel; parameters' gradients are untouched and DDP's
       reducer is not involved (see :func:`~lightning_mix.callbacks._saliency_pass.clean_input_saliency`);
    3. :class:`~lightning_mix.mixing.comixup.CoMixer`: per partition of ``part_size`` inputs, as
       many outputs, each a block-wise mix of possibly several inputs chosen by the authors'
       iterative solver;
    4. the batch's inputs and targets are replaced; ``targets[o] = sum_k weights[o, k] t[k]`` with
       ``weights[o, k]`` the share of blocks (mask mass) of input ``k`` in output ``o``.
       :attr:`last_weights` holds that (B, B) matrix and :attr:`last_mixed` the
       :class:`~lightning_mix.mixing.MixedBatch`, whose ``index`` is each output's dominant input and
       ``lam`` that input's share (both None for a batch left unmixed).

    The module's ``forward`` must return logits (B, K) and ``training_step`` must accept dense targets
    (e.g. :func:`~lightning_mix.losses.soft_cross_entropy`). Departures (documented in
    ``docs/guide/saliency_mixing.md``): the authors' clean-input loss (``clean_lam = 1`` adds the
    clean batch's cross-entropy to the step's gradient) is not added, the pass only reads the input
    gradient; each per-output grid problem is solved by ICM on the device instead of gco; all
    ``n_iter`` rounds run (no early stop).

    Args:
        alpha: Dirichlet concentration of the prior (authors' ``mixup_alpha``: 2.0).
        block_num: blocks per image side (authors: 4); must divide the image height and width.
        part_size: inputs per partition (authors' ``m_part``: 20).
        beta, gamma, eta, thres, thres_type, omega, set_resolve, n_iter, sweeps: see
            :class:`~lightning_mix.mixing.comixup.CoMixer` (authors: 0.32, 1.0, 0.05, 0.83, "hard",
            0.001, True, 4).
        saliency_eval_mode: run the saliency pass with the module in eval mode (authors' Co-Mixup
            default: False, train mode).
        channel_reduce: channel reduction of the input gradient (authors: ``"rms"``).
        p: probability of mixing a batch (authors: 1.0); unmixed batches still get dense targets.
        num_classes, label_smoothing, input_key, target_key, seed: as :class:`MixingCallback`.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        block_num: int = 4,
        part_size: int = 20,
        beta: float = 0.32,
        gamma: float = 1.0,
        eta: float = 0.05,
        thres: float = 0.83,
        thres_type: ThresholdType = "hard",
        omega: float = 0.001,
        set_resolve: bool = True,
        n_iter: int = 4,
        sweeps: int = 4,
        saliency_eval_mode: bool = False,
        channel_reduce: ChannelReduce = "rms",
        p: float = 1.0,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_classes, label_smoothing, input_key, target_key, seed)
        self._set_saliency_options("CoMixup", saliency_eval_mode, channel_reduce, p)
        self.mixer = CoMixer(
            alpha, block_num, part_size, beta, gamma, eta, thres, thres_type, omega, set_resolve, n_iter, sweeps
        )
        self.last_mixed: MixedBatch | None = None
        self.last_weights: torch.Tensor | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        inputs, targets = self.read_batch(batch)
        check_comixup_inputs(inputs, self.mixer.block_num)
        self.last_mixed, self.last_weights = None, None
        if self._should_mix() and inputs.shape[0] > 1:
            saliency = self._saliency(trainer, pl_module, inputs, targets)
            result = self.mixer(inputs, targets, saliency, self.generator(inputs.device))
            self.last_mixed, self.last_weights = result.mixed, result.weights
            set_entry(batch, self.input_key, result.mixed.inputs)
            targets = result.mixed.targets
        set_entry(batch, self.target_key, targets)
        self.advance()


__all__ = ["CoMixup"]
