"""PuzzleMix callback: a clean saliency pass, then the graph-cut mask and block transport of each batch."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks._saliency_base import SaliencyMixingBase
from lightning_mix.mixing import MixedBatch
from lightning_mix.mixing.input_saliency import ChannelReduce
from lightning_mix.mixing.puzzlemix import PuzzleMixer, Solver, check_puzzle_inputs

_BLOCK_SALT = 1


class PuzzleMix(SaliencyMixingBase):
    """PuzzleMix (Kim, Choo and Song, ICML 2020) with the authors' defaults (snu-mllab/PuzzleMix ``main.py``).

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import PuzzleMix
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        puzzle = PuzzleMix(block_nums=[2, 4, 7, 14], num_classes=10)   # 28x28 images
        Trainer(max_epochs=10, callbacks=[puzzle]).fit(SmallCNN(), MNIST5kDataModule())

    Each training batch, in ``on_train_batch_start``:

    1. the targets are made dense (``num_classes``, ``label_smoothing``);
    2. a saliency pass on the clean batch: the model (in eval mode, as the authors' default
       ``clean_lam = 0``) under the Trainer's precision, cross-entropy against the targets,
       ``sqrt(mean_c (d loss / d x)^2)`` per pixel; parameters' gradients are not touched and DDP's
       reducer is not involved (see :func:`~lightning_mix.callbacks._saliency_pass.clean_input_saliency`);
    3. a block grid ``n x n`` with ``n`` drawn uniformly from ``block_nums`` (authors:
       ``2 ** randint(1, 5)`` = {2, 4, 8, 16} on 32x32 images), partners by a random permutation,
       one ``lam ~ Beta(alpha, alpha)``, and :class:`~lightning_mix.mixing.puzzlemix.PuzzleMixer`'s
       mask (graph cut) and transport;
    4. the batch's inputs and targets are replaced: ``targets = lam_i t_i + (1 - lam_i) t_j`` with
       ``lam_i`` the mean of sample ``i``'s mask; :attr:`last_mixed` holds the
       :class:`~lightning_mix.mixing.MixedBatch` and :attr:`last_block_num` the grid size (both
       None for a batch left unmixed).

    The image size is only known at the first batch: block numbers that do not divide it raise
    there, before any training step. The module's ``forward`` must return logits (B, K) and ``training_step`` must
    accept dense
    targets (e.g. :func:`~lightning_mix.losses.soft_cross_entropy`). Not implemented: the authors'
    optional adversarial perturbation (``adv_p``, 0 by default) and ``clean_lam > 0``.
    Departures (documented in ``docs/guide/saliency_mixing.md``): the transport result is completed
    to a permutation; the data-smoothness term compares the images as given (the authors
    un-normalise them first); with ``solver="torch"`` the mask is a local minimum of the authors'
    energy instead of gco's.

    Args:
        alpha: Beta concentration of lam (authors: 1.0).
        block_nums: candidate grid sizes; each must divide the image height and width.
        n_labels, beta, gamma, eta, neigh_size, transport, t_eps: see
            :class:`~lightning_mix.mixing.puzzlemix.PuzzleMixer` (authors: 3, 1.2, 0.5, 0.2, 4, True, 0.8).
        solver: ``"auto"`` (gco-wrapper when installed, else torch), ``"gco"`` or ``"torch"``.
        sweeps: sweeps of the torch solver.
        saliency_eval_mode: run the saliency pass with the module in eval mode (authors).
        channel_reduce: channel reduction of the input gradient (authors: ``"rms"``).
        p: probability of mixing a batch (authors: 1.0); unmixed batches still get dense targets.
        num_classes, label_smoothing, input_key, target_key, seed: as :class:`MixingCallback`.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        block_nums: list[int] = [2, 4, 8, 16],  # noqa: B006  (jsonargparse shows the default; never mutated)
        n_labels: int = 3,
        beta: float = 1.2,
        gamma: float = 0.5,
        eta: float = 0.2,
        neigh_size: int = 4,
        transport: bool = True,
        t_eps: float = 0.8,
        solver: Solver = "auto",
        sweeps: int = 8,
        saliency_eval_mode: bool = True,
        channel_reduce: ChannelReduce = "rms",
        p: float = 1.0,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_classes, label_smoothing, input_key, target_key, seed)
        block_nums = [int(n) for n in ([block_nums] if isinstance(block_nums, int) else block_nums)]
        if not block_nums or min(block_nums) < 1:
            raise ValueError(
                f"PuzzleMix: block_nums must be a non-empty list of positive grid sizes, got {block_nums}."
            )
        self._set_saliency_options("PuzzleMix", saliency_eval_mode, channel_reduce, p)
        self.mixer = PuzzleMixer(alpha, n_labels, beta, gamma, eta, neigh_size, transport, t_eps, solver, sweeps)
        self.block_nums = block_nums
        self.last_mixed: MixedBatch | None = None
        self.last_block_num: int | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        inputs, targets = self.read_batch(batch)
        check_puzzle_inputs(inputs, self.block_nums)
        self.last_mixed, self.last_block_num = None, None
        if self._should_mix():
            choice = torch.randint(len(self.block_nums), (), generator=self.generator(torch.device("cpu"), _BLOCK_SALT))
            block_num = self.block_nums[int(choice)]
            if block_num > 1:  # a 1x1 grid keeps the batch as it is (the authors' block_num == 1 branch)
                saliency = self._saliency(trainer, pl_module, inputs, targets)
                mixed = self.mixer(inputs, targets, saliency, block_num, self.generator(inputs.device))
                self.last_mixed, self.last_block_num = mixed, block_num
                set_entry(batch, self.input_key, mixed.inputs)
                targets = mixed.targets
        set_entry(batch, self.target_key, targets)
        self.advance()


__all__ = ["PuzzleMix"]
