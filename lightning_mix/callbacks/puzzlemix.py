"""PuzzleMix callback: a saliency pass, then the graph-cut mask, block transport, adversarial step and clean loss."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks._saliency_base import SaliencyMixingBase
from lightning_mix.mixing import MixedBatch
from lightning_mix.mixing.input_saliency import ChannelReduce
from lightning_mix.mixing.puzzle_adversarial import (
    AdversarialStep,
    PixelScale,
    fgsm_perturbation,
    perturb,
    random_start,
)
from lightning_mix.mixing.puzzlemix import PuzzleMixer, Solver, check_puzzle_inputs, transport_grid

_BLOCK_SALT = 1
_ADVERSARIAL_SALT = 3  # the two "perturb?" draws and coef, on the CPU generator
_START_SALT = 4  # the random start, on the batch's device


class PuzzleMix(SaliencyMixingBase):
    """PuzzleMix (Kim, Choo and Song, ICML 2020) with the authors' defaults (snu-mllab/PuzzleMix ``main.py``).

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import PuzzleMix
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        puzzle = PuzzleMix(block_nums=[2, 4, 7, 14], num_classes=10,   # 28x28 images
                           pixel_mean=[0.1307], pixel_std=[0.3081])    # MNIST5k's normalisation
        Trainer(max_epochs=10, callbacks=[puzzle]).fit(SmallCNN(), MNIST5kDataModule())

    Each training batch, in ``on_train_batch_start``:

    1. the targets are made dense (``num_classes``, ``label_smoothing``);
    2. a block grid ``n x n`` with ``n`` drawn uniformly from ``block_nums`` (authors:
       ``2 ** randint(1, 5)`` = {2, 4, 8, 16} on 32x32 images); for ``n > 1``:
    3. the adversarial draws (``adv_p > 0``): perturb the own images, the partners, each with
       probability ``adv_p``; if either, a random start ``U(-eps, eps)`` in pixel space
       (:mod:`~lightning_mix.mixing.puzzle_adversarial`, ``eps = adv_eps / 255``);
    4. a saliency pass on the batch (plus the start, if any): the model, in eval mode when
       ``clean_lam = 0`` and in train mode otherwise (the authors' rule; ``saliency_eval_mode``
       overrides it), under the Trainer's precision, cross-entropy against the targets,
       ``sqrt(mean_c (d loss / d x)^2)`` per pixel; parameters' gradients are not touched and
       DDP's reducer is not involved (see :func:`~lightning_mix.callbacks._saliency_pass.clean_input_pass`);
    5. partners by a random permutation, one ``lam ~ Beta(alpha, alpha)``, and
       :class:`~lightning_mix.mixing.puzzlemix.PuzzleMixer`'s mask (graph cut, on the clean
       images in pixel space);
    6. with an adversarial draw, the FGSM noise ``coef * clamp(start + (eps + 2/255) sign(g), -eps, eps)``
       (``g`` the pass's input gradient, ``coef ~ U(0, 1)``) is added to the chosen side(s) and
       clamped to the pixel range [0, 1]; then the blocks are transported and composed;
    7. the batch's inputs and targets are replaced: ``targets = lam_i t_i + (1 - lam_i) t_j`` with
       ``lam_i`` the mean of sample ``i``'s mask.

    :attr:`last_mixed` holds the :class:`~lightning_mix.mixing.MixedBatch`, :attr:`last_block_num`
    the grid size and :attr:`last_adversarial` the
    :class:`~lightning_mix.mixing.puzzle_adversarial.AdversarialStep` (each None when the batch was
    left unmixed, resp. not perturbed).

    Clean loss (``clean_lam > 0``): the pass's loss keeps its graph and, in ``on_before_backward``,
    ``clean_lam * CE(model(x_clean), t) / accumulate_grad_batches`` is added in place to the loss
    tensor Lightning is about to back-propagate (the one it divided by ``accumulate_grad_batches``;
    the logged loss is the module's own, detached before the hook; under ``16-mixed`` the term is
    multiplied by the gradient scaler's scale, as that loss already is). The term so goes through
    the precision plugin's scaling and DDP's gradient all-reduce like the module's loss. It needs
    automatic optimisation (checked at the start of fit) and a loss whose last operation does not
    save its output for backward (a mean, sum or cross-entropy; an in-place error at backward
    otherwise).

    The image size is only known at the first batch: block numbers that do not divide it, a
    ``t_size`` that does not divide a block size, or a pixel normalisation with the wrong number of
    channels raise there, before any training step.
    The module's ``forward`` must return logits (B, K) and ``training_step`` must accept dense
    targets (e.g. :func:`~lightning_mix.losses.soft_cross_entropy`).

    Departures (documented in ``docs/guide/saliency_mixing.md``): the transport result is completed
    to a permutation; without ``pixel_mean``/``pixel_std`` the data-smoothness term and the
    adversarial step take the images as pixels in [0, 1]; with ``solver="torch"`` the mask is a
    local minimum of the authors' energy instead of gco's; the clean loss has the weight of the
    authors' ImageNet code (``clean_lam * CE``; their CIFAR code writes ``2 clean_lam / K * CE``
    next to a binary cross-entropy mixed loss).

    Args:
        alpha: Beta concentration of lam (authors: 1.0).
        block_nums: candidate grid sizes; each must divide the image height and width.
        n_labels, beta, gamma, eta, neigh_size, transport, t_eps: see
            :class:`~lightning_mix.mixing.puzzlemix.PuzzleMixer` (authors: 3, 1.2, 0.5, 0.2, 4, True, 0.8).
        t_size: transport block size in pixels (authors: -1, the mask's blocks); see
            :class:`~lightning_mix.mixing.puzzlemix.PuzzleMixer`. Checked against the image size at the first batch.
        solver: ``"auto"`` (gco-wrapper when installed, else torch), ``"gco"`` or ``"torch"``.
        sweeps: sweeps of the torch solver.
        adv_p: probability of perturbing the own images, and independently the partners, in a
            mixed batch (authors: 0.0, off).
        adv_eps: the perturbation's bound in pixel levels, ``eps = adv_eps / 255`` of the [0, 1]
            pixel range (authors: 10.0).
        clean_lam: weight of the clean-batch cross-entropy added to the step's loss (authors: 0.0).
        pixel_mean, pixel_std: the normalisation the images carry, ``x = (pixel - mean) / std``
            with pixels in [0, 1], one value per channel or one for all (the authors' dataset mean
            and std); None (default): the images are pixels in [0, 1].
        saliency_eval_mode: run the saliency pass with the module in eval mode; None (default):
            the authors' rule, eval mode when ``clean_lam == 0``, train mode otherwise.
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
        t_size: int = -1,
        solver: Solver = "auto",
        sweeps: int = 8,
        adv_p: float = 0.0,
        adv_eps: float = 10.0,
        clean_lam: float = 0.0,
        pixel_mean: list[float] | None = None,
        pixel_std: list[float] | None = None,
        saliency_eval_mode: bool | None = None,
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
        if not 0.0 <= adv_p <= 1.0:
            raise ValueError(f"PuzzleMix: adv_p is a probability and must lie in [0, 1], got {adv_p}.")
        if adv_eps < 0:
            raise ValueError(f"PuzzleMix: adv_eps (pixel levels out of 255) must be non-negative, got {adv_eps}.")
        if clean_lam < 0:
            raise ValueError(f"PuzzleMix: clean_lam must be non-negative, got {clean_lam}.")
        if saliency_eval_mode is None:
            saliency_eval_mode = clean_lam == 0
        self._set_saliency_options("PuzzleMix", saliency_eval_mode, channel_reduce, p)
        self.mixer = PuzzleMixer(
            alpha, n_labels, beta, gamma, eta, neigh_size, transport, t_eps, solver, sweeps, t_size
        )
        self.block_nums = block_nums
        self.adv_p = float(adv_p)
        self.adv_eps = float(adv_eps)
        self.clean_lam = float(clean_lam)
        self.pixels = PixelScale(pixel_mean, pixel_std)
        self.last_mixed: MixedBatch | None = None
        self.last_block_num: int | None = None
        self.last_adversarial: AdversarialStep | None = None
        self._clean_term: torch.Tensor | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.clean_lam > 0 and not pl_module.automatic_optimization:
            raise ValueError(
                f"PuzzleMix(clean_lam={self.clean_lam}) adds the clean loss to the loss of automatic optimisation, "
                f"but {type(pl_module).__name__} optimises manually; add "
                "clean_lam * soft_cross_entropy(self(x_clean), y) to your own loss and leave clean_lam=0."
            )
        super().on_fit_start(trainer, pl_module)

    def _adversarial_draws(self) -> tuple[bool, bool, float]:
        """Perturb the own images?, the partners? (each with probability ``adv_p``) and ``coef ~ U(0, 1)``."""
        if self.adv_p <= 0.0:
            return False, False, 0.0
        draws = torch.rand(3, generator=self.generator(torch.device("cpu"), _ADVERSARIAL_SALT)).tolist()
        return draws[0] < self.adv_p, draws[1] < self.adv_p, draws[2]

    def _mix(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        block_num: int,
    ) -> MixedBatch:
        pixels = self.pixels.to_pixels(inputs)
        own_adv, partner_adv, coef = self._adversarial_draws()
        eps = self.adv_eps / 255.0
        start, probe = None, inputs
        if own_adv or partner_adv:
            start = random_start(pixels, eps, self.generator(inputs.device, _START_SALT))
            probe = self.pixels.from_pixels(pixels + start).to(inputs.dtype)
        keep = self.clean_lam > 0
        result = self._saliency_pass(trainer, pl_module, probe, targets, keep_graph=keep)
        if keep:
            self._clean_term = self.clean_lam * result.loss
        own_sources = partner_sources = inputs
        if start is not None:
            noise = fgsm_perturbation(start, result.gradient, eps, coef)
            perturbed = self.pixels.from_pixels(perturb(pixels, noise)).to(inputs.dtype)
            own_sources = perturbed if own_adv else inputs
            partner_sources = perturbed if partner_adv else inputs
            self.last_adversarial = AdversarialStep(own_adv, partner_adv, start, coef, noise)
        energy_images = inputs if self.pixels.identity else pixels
        return self.mixer(
            energy_images,
            targets,
            result.saliency,
            block_num,
            self.generator(inputs.device),
            own_sources,
            partner_sources,
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        inputs, targets = self.read_batch(batch)
        check_puzzle_inputs(inputs, self.block_nums)
        if self.mixer.transport:
            for n in self.block_nums:
                transport_grid(inputs, n, self.mixer.t_size)
        self.pixels.check(inputs)
        self.last_mixed, self.last_block_num, self.last_adversarial = None, None, None
        self._clean_term = None
        if self._should_mix():
            choice = torch.randint(len(self.block_nums), (), generator=self.generator(torch.device("cpu"), _BLOCK_SALT))
            block_num = self.block_nums[int(choice)]
            if block_num > 1:  # a 1x1 grid keeps the batch as it is (the authors' block_num == 1 branch)
                mixed = self._mix(trainer, pl_module, inputs, targets, block_num)
                self.last_mixed, self.last_block_num = mixed, block_num
                set_entry(batch, self.input_key, mixed.inputs)
                targets = mixed.targets
        set_entry(batch, self.target_key, targets)
        self.advance()

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        """Add ``clean_lam * CE(clean) / accumulate_grad_batches`` in place to the loss about to be back-propagated.

        Under ``16-mixed`` the loss Lightning hands this hook is already multiplied by the gradient
        scaler's scale, so the term is scaled by the same scaler (``precision_plugin.scaler.scale``).
        """
        if self._clean_term is not None:
            term, self._clean_term = self._clean_term, None
            term = term / trainer.accumulate_grad_batches
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None:
                term = scaler.scale(term)
            loss.add_(term.to(loss.dtype))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._clean_term = None  # a step that skipped backward (training_step returned None) frees the graph here


__all__ = ["PuzzleMix"]
