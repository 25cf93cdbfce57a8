"""AutoMixMixin: AutoMix (Liu et al., ECCV 2022) as a LightningModule training step.

A Mix Block (:class:`~lightning_mix.mixing.mix_block.PixelMixBlock`) learns per-pixel mixing masks
from the feature maps of a momentum (EMA) copy of the classifier; the classifier is trained on the
images mixed with those masks. The step follows ``AutoMixup.forward_train`` of Westlake-AI/openmixup
(``openmixup/models/classifiers/automix.py``) with the defaults of its CIFAR ResNet-18 config.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_mix.callbacks._batch_access import BatchKey
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing.mix_block import (
    PixelMixBlock,
    SAMixBlock,
    adjust_mask_to_lam,
    automix_mask_loss,
    mix_with_mask,
)
from lightning_mix.mixing.sampling import sample_beta
from lightning_mix.mixins._momentum_encoder import MomentumEncoderBase

__all__ = ["AutoMixMixin", "SAMixMixin", "mixed_cross_entropy"]

_BLOCK_NAME = "automix_block"


def mixed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """Mixup's loss ``mean_i [lam_i CE(z_i, y_i) + (1 - lam_i) CE(z_i, y_index_i)]`` (float32).

    ``labels`` are class indices (B,) or dense targets (B, C); ``lam`` is (B,), the share of each sample itself.
    """
    own = soft_cross_entropy(logits, labels, reduction="none")
    partner = soft_cross_entropy(logits, labels.index_select(0, index), reduction="none")
    return torch.lerp(partner, own, lam.to(own.dtype)).mean()


class AutoMixMixin(MomentumEncoderBase):
    """Adds AutoMix's training step to a LightningModule; you supply the network and the optimiser.

    **The contract** (what the mixin needs from your module):

    * ``feature_layer``: the dotted name (from ``named_modules()``) of the layer whose output, a
      feature map (N, C, h, w), the Mix Block reads; ``feature_channels`` is its C. The authors
      read stage 3 of a ResNet (``"layer3"`` of torchvision's ResNet-18: C = 256);
      for the demo :class:`~lightning_mix.demos.SmallCNN`, ``"block2"`` (C = 2 * width, 7x7 on MNIST).
    * ``logits_method``: the method that maps a batch of inputs to logits (default ``"forward"``),
      passing through ``feature_layer``. Labels are class indices or dense targets.
    * ``configure_optimizers`` must optimise ``self.parameters()``, which include the Mix Block
      (``self.automix_block``), as the authors train both with one SGD optimiser; checked at fit start.

    Example::

        from lightning_mix.demos import SmallCNN
        from lightning_mix.mixins import AutoMixMixin

        class AutoMixCNN(AutoMixMixin, SmallCNN):
            def __init__(self, width: int = 32):
                super().__init__(width=width)
                self.configure_automix(feature_layer="block2", feature_channels=2 * width)

    **Each training step** (batch ``[inputs, labels]``), as ``AutoMixup.forward_train``:

    1. two partner permutations and two ratios ``lam_mb, lam_bb ~ Beta(alpha, alpha)`` (one per
       batch) are drawn; the momentum copy ``k`` of the network gives the feature maps (no grad);
    2. the Mix Block gives two masks: ``m_mb`` (for ``index_mb``) and ``m_bb`` (for ``index_bb``,
       detached; replaced by the constant ``1 - lam_bb`` when ``lam_bb`` or ``1 - lam_bb`` is at most
       ``lam_margin``, i.e. plain Mixup);
    3. ``loss = mix(q(x_bb)) + clean_weight * CE(q(x)) + block_weight * mix(k(x_mb)) + mask_weight * L1(m_mb)``
       where ``x_bb = x (1 - m_bb) + x[index_bb] m_bb`` (same for ``x_mb``), ``mix`` is
       :func:`mixed_cross_entropy` at lam, ``q`` is your network and ``k`` its momentum copy run
       with ``torch.func.functional_call``. The classifier ``q`` gets gradients from its two terms
       only; the Mix Block only from ``mix(k(x_mb))`` (through ``x_mb``; ``k``'s weights take no
       gradient) and the mask regulariser :func:`~lightning_mix.mixing.mix_block.automix_mask_loss`.

    **The momentum copy** holds your network's parameters in float32 (the Mix Block excluded) and
    its own buffers (BatchNorm statistics of its train-mode forwards, never read since ``k`` only
    runs in train mode). After every optimiser step ``t`` (0-based) its parameters move by
    :func:`~lightning_mix.averaging.ema.ema_update_` with momentum
    :func:`~lightning_mix.mixing.mix_block.automix_momentum` (0.999, cosine to 0.999999 from 10% of
    ``trainer.estimated_stepping_batches``); the update is applied at the start of the next training
    step (so gradient accumulation updates it once per optimiser step, and a checkpoint written at
    any point resumes the same sequence).

    **Checkpoint**: the Mix Block is a submodule (its weights in ``state_dict``, its optimiser
    state in your optimiser's); the momentum copy, the step it is synced to and the random stream
    (seed and counter) go under ``checkpoint["automix"]``. ``on_save_checkpoint``/``on_load_checkpoint``
    call ``super()``, so keep calling ``super()`` if you override them, and ``on_fit_start`` too.

    **Averaging callbacks** (EMA, SWA, ModelSoup) average ``state_dict``, so the Mix Block is averaged
    with the classifier; the averaged Mix Block is never used for evaluation (only the classifier
    is), and resuming continues from the trained weights (``current_model_state``). The momentum
    copy is outside ``state_dict`` and is not averaged (it is itself an average).

    Departures from the authors (deliberate): one classification head (yours) for the clean and
    mixed losses, where the authors' config has two linear heads (``head_one`` and ``head_mix``);
    the momentum copy's buffers are copied from the network once and then kept by the copy (the
    authors' ``backbone_k`` has its own from initialisation: the same thing at the start of training);
    the mask is upsampled to the input size rather than by a power-of-two factor (identical when
    the input is a multiple of the feature map).
    """

    #: Tells the mixing callbacks that this module mixes its own batches (they refuse it at setup).
    mixes_own_batches = "mixes the clean batch itself in training_step (with its Mix Block's masks)"

    automix_feature_layer: str = ""
    automix_feature_channels: int = 0
    automix_alpha: float = 2.0
    automix_base_momentum: float = 0.999
    automix_end_momentum: float = 0.999999
    automix_momentum_start: float = 0.1
    automix_mask_weight: float = 0.1
    automix_mask_margin: float = 0.1
    automix_lam_margin: float = 0.08
    automix_clean_weight: float = 1.0
    automix_block_weight: float = 1.0
    automix_logits_method: str = "forward"
    automix_seed: int | None = None
    automix_input_key: BatchKey = 0
    automix_target_key: BatchKey = 1
    automix_mask_adjust: float = 0.0
    automix_mask_variance_weight: float = 0.0

    def configure_automix(
        self,
        feature_layer: str,
        feature_channels: int,
        alpha: float = 2.0,
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        momentum_start: float = 0.1,
        mask_weight: float = 0.1,
        mask_margin: float = 0.1,
        lam_margin: float = 0.08,
        clean_weight: float = 1.0,
        block_weight: float = 1.0,
        reduction: int = 2,
        upsample_mode: str = "nearest",
        lam_embedding: str = "none",
        logits_method: str = "forward",
        seed: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
    ) -> None:
        """Set AutoMix's options and build the Mix Block (call it in ``__init__``, after ``super().__init__()``).

        The defaults are the authors' CIFAR ResNet-18 config (``r18_l2_a2_near_L1_01_mlr5e_2.py``).

        Args:
            feature_layer: dotted name of the layer whose feature map (N, C, h, w) the Mix Block reads.
            feature_channels: C of that feature map.
            alpha: Beta(alpha, alpha) of both ratios (authors: 2).
            momentum: momentum of the encoder copy at the start (authors: 0.999).
            end_momentum: momentum at the end of the cosine schedule (authors: 0.999999); equal to
                ``momentum`` for a constant one.
            momentum_start: fraction of training before the cosine schedule starts (authors: 0.1).
            mask_weight: weight of the L1 mask regulariser (authors: 0.1).
            mask_margin: its margin (authors: 0.1).
            lam_margin: plain Mixup for the classifier's batch when lam or 1 - lam is at most this (authors: 0.08).
            clean_weight: weight of the clean cross-entropy (authors' ``head_one_q``: 1).
            block_weight: weight of the Mix Block's mixup loss through the momentum copy (``head_mix_k``: 1).
            reduction: query/key channel reduction of the Mix Block (authors: 2).
            upsample_mode: mask upsampling (authors: ``"nearest"``).
            lam_embedding: ``"none"`` (authors' CIFAR setting) or ``"concat"`` (lam as a feature channel).
            logits_method: name of the method mapping inputs to logits.
            seed: seed of the mixing stream; None takes ``torch.initial_seed()`` at the first step.
            input_key: index or key of the inputs in the batch.
            target_key: index or key of the labels in the batch.
        """
        if not isinstance(self, nn.Module) or "_modules" not in self.__dict__:
            raise RuntimeError("Call configure_automix in __init__ after super().__init__(), on a LightningModule.")
        if not feature_layer or not isinstance(feature_layer, str):
            raise ValueError(
                "feature_layer must name a layer of the module (a name from named_modules()), e.g. 'layer3'."
            )
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}.")
        if not 0 <= momentum <= end_momentum <= 1:
            raise ValueError(
                f"need 0 <= momentum <= end_momentum <= 1, got momentum={momentum}, end_momentum={end_momentum}."
            )
        if not 0 <= momentum_start <= 1:
            raise ValueError(f"momentum_start must lie in [0, 1], got {momentum_start}.")
        for name, value in (("mask_weight", mask_weight), ("mask_margin", mask_margin), ("clean_weight", clean_weight)):
            if value < 0:
                raise ValueError(f"{name} must be non-negative, got {value}.")
        if not block_weight > 0:
            raise ValueError(
                f"block_weight must be positive (the Mix Block learns only through it), got {block_weight}."
            )
        if not 0 <= lam_margin < 0.5:
            raise ValueError(f"lam_margin must lie in [0, 0.5), got {lam_margin}.")
        if not callable(getattr(self, logits_method, None)):
            raise ValueError(f"logits_method {logits_method!r} is not a method of {type(self).__name__}.")
        self.automix_feature_layer = feature_layer
        self.automix_feature_channels = int(feature_channels)
        self.automix_alpha = float(alpha)
        self.automix_base_momentum = float(momentum)
        self.automix_end_momentum = float(end_momentum)
        self.automix_momentum_start = float(momentum_start)
        self.automix_mask_weight = float(mask_weight)
        self.automix_mask_margin = float(mask_margin)
        self.automix_lam_margin = float(lam_margin)
        self.automix_clean_weight = float(clean_weight)
        self.automix_block_weight = float(block_weight)
        self.automix_logits_method = logits_method
        self.automix_seed = seed
        self.automix_input_key = input_key
        self.automix_target_key = target_key
        setattr(
            self,
            _BLOCK_NAME,
            PixelMixBlock(
                feature_channels, reduction=reduction, upsample_mode=upsample_mode, lam_embedding=lam_embedding
            ),
        )

    def _automix_check(self) -> None:
        super()._automix_check()
        block = self._automix_block()
        if not self.automatic_optimization:
            raise RuntimeError(
                "AutoMixMixin uses automatic optimisation (one optimiser, as the authors); "
                "set automatic_optimization=True."
            )
        optimised = {id(p) for opt in self.trainer.optimizers for group in opt.param_groups for p in group["params"]}
        missing = [n for n, p in block.named_parameters() if id(p) not in optimised]
        if missing:
            raise ValueError(
                f"The Mix Block's parameters {missing} are in no optimiser; optimise self.parameters() in "
                "configure_optimizers (the Mix Block trains with the classifier, as the authors)."
            )

    def automix_draw(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        """This step's draws from the seeded stream (one stream position per call).

        Permutations ``index_mb``, ``index_bb`` and ratios ``lam_mb``, ``lam_bb`` (B,) each, and
        ``adjust_draw`` (1,), a uniform number deciding SAMix's mask adjustment.
        """
        stream = self._automix_stream()
        generator = stream.generator(device)
        index_mb = torch.randperm(batch_size, generator=generator, device=device)
        index_bb = torch.randperm(batch_size, generator=generator, device=device)
        lam = sample_beta(self.automix_alpha, self.automix_alpha, 2, generator, device)
        adjust_draw = torch.rand((1,), generator=generator, device=device)
        stream.advance()
        return {
            "index_mb": index_mb,
            "index_bb": index_bb,
            "lam_mb": lam[0].expand(batch_size),
            "lam_bb": lam[1].expand(batch_size),
            "adjust_draw": adjust_draw,
        }

    # -- the step ------------------------------------------------------------------------------------

    def automix_losses(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One AutoMix step's losses and what they were computed from.

        Returns ``loss`` (the weighted sum), ``mix_loss``, ``clean_loss``, ``block_loss``, ``mask_loss``,
        the clean ``logits``, the masks ``mask_mb``/``mask_bb`` (partner's share, (B, 1, H, W)) and the
        draws of :meth:`automix_draw`. The momentum copy is used as it stands (no EMA update here).
        """
        block = self._automix_block()
        batch_size = inputs.shape[0]
        draws = self.automix_draw(batch_size, inputs.device)
        momentum_state = self.automix_momentum_state()
        features = self.automix_features(inputs)
        size = tuple(inputs.shape[2:])
        mask_mb = block(features, draws["index_mb"], draws["lam_mb"], size)
        mask_bb = block(features, draws["index_bb"], draws["lam_bb"], size).detach()
        lam_bb = draws["lam_bb"]
        if self.automix_mask_adjust > 0:  # SAMix: sometimes rescale the classifier's mask to mean lam exactly
            adjust = (draws["adjust_draw"] < self.automix_mask_adjust).view(1, 1, 1, 1)
            mask_bb = torch.where(adjust, adjust_mask_to_lam(mask_bb, lam_bb), mask_bb)
        plain = (lam_bb <= self.automix_lam_margin) | (1 - lam_bb <= self.automix_lam_margin)
        mask_bb = torch.where(plain.view(-1, 1, 1, 1), (1 - lam_bb).view(-1, 1, 1, 1).to(mask_bb.dtype), mask_bb)

        mixed_bb = mix_with_mask(inputs, draws["index_bb"], mask_bb)
        mixed_mb = mix_with_mask(inputs, draws["index_mb"], mask_mb)
        mix_loss = mixed_cross_entropy(self._automix_call(None, mixed_bb), labels, draws["index_bb"], lam_bb)
        logits = self._automix_call(None, inputs)
        clean_loss = soft_cross_entropy(logits, labels)
        block_logits = self._automix_call(momentum_state, mixed_mb)
        block_loss = mixed_cross_entropy(block_logits, labels, draws["index_mb"], draws["lam_mb"])
        mask_loss = automix_mask_loss(
            mask_mb, draws["lam_mb"], self.automix_mask_margin, self.automix_mask_variance_weight
        )
        loss = (
            mix_loss
            + self.automix_clean_weight * clean_loss
            + self.automix_block_weight * block_loss
            + self.automix_mask_weight * mask_loss
        )
        return {
            "loss": loss,
            "mix_loss": mix_loss,
            "clean_loss": clean_loss,
            "block_loss": block_loss,
            "mask_loss": mask_loss,
            "logits": logits,
            "mask_mb": mask_mb,
            "mask_bb": mask_bb,
            **draws,
        }

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch[self.automix_input_key], batch[self.automix_target_key]
        self.automix_sync_momentum(self.trainer.global_step, self.trainer.estimated_stepping_batches)
        out = self.automix_losses(inputs, labels)
        main_label = labels.argmax(-1) if labels.is_floating_point() else labels
        acc = (out["logits"].argmax(-1) == main_label).float().mean()
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        for key in ("mix_loss", "clean_loss", "block_loss", "mask_loss"):
            self.log(f"train/{key}", out[key], on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return out["loss"]


class SAMixMixin(AutoMixMixin):
    """SAMix in its supervised setting: AutoMix's training step with SAMix's Mix Block and regularisers.

    SAMix: Li et al., "Boosting Discriminative Visual Representation Learning with Scenario-Agnostic Mixup".

    The contract, the step, the momentum copy, checkpoints and the averaging callbacks are
    :class:`AutoMixMixin`'s. What changes, following the authors' SAMix CIFAR config (same
    ``AutoMixup`` class in Westlake-AI/openmixup, ``configs/classification/cifar100/samix/basic/r18/
    unsampling_modebilinear/r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2_lam_mul_k0_25_mask_adjust0_25_ep800.py``):

    * the Mix Block is :class:`~lightning_mix.mixing.mix_block.SAMixBlock`: lam enters the features
      (residual multiplication after :func:`~lightning_mix.mixing.mix_block.rescale_lam`, k = 0.25),
      query and key read both samples' features, the value is a small conv-BN-ELU-conv network,
      bilinear upsampling;
    * the mask regulariser adds a variance reward, ``L1 - 2 var(m)`` (the authors' ``"L1+Variance"``);
    * with probability ``mask_adjust = 0.25`` per step the classifier's mask is rescaled so that each
      sample's own share is exactly lam (:func:`~lightning_mix.mixing.mix_block.adjust_mask_to_lam`).

    Example::

        from lightning_mix.demos import SmallCNN
        from lightning_mix.mixins import SAMixMixin

        class SAMixCNN(SAMixMixin, SmallCNN):
            def __init__(self, width: int = 32):
                super().__init__(width=width)
                self.configure_samix(feature_layer="block2", feature_channels=2 * width)

    The Mix Block's mixup loss through the momentum copy is :func:`mixed_cross_entropy`: the
    config's ``head_mix_k`` sets ``neg_weight=0.5`` on a softmax soft cross-entropy, where it
    multiplies only terms whose target is zero, and ``eta`` is 0, so the paper's eta-balanced loss
    reduces to the Mixup cross-entropy in this setting.

    Departures: :func:`~lightning_mix.mixing.mix_block.adjust_mask_to_lam` compares the mask with
    the classifier's lam (``lam_bb``), where the authors' code compares it with the Mix Block's
    ``lam_mb`` although the classifier's labels use ``lam_bb`` (the comment there says ``lam_bb``);
    the others are :class:`AutoMixMixin`'s.
    """

    def configure_samix(
        self,
        feature_layer: str,
        feature_channels: int,
        alpha: float = 2.0,
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        momentum_start: float = 0.1,
        mask_weight: float = 0.1,
        mask_margin: float = 0.1,
        variance_weight: float = 2.0,
        mask_adjust: float = 0.25,
        lam_margin: float = 0.08,
        clean_weight: float = 1.0,
        block_weight: float = 1.0,
        reduction: int = 2,
        value_hidden: int | None = None,
        upsample_mode: str = "bilinear",
        lam_mul_k: float = 0.25,
        logits_method: str = "forward",
        seed: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
    ) -> None:
        """Set SAMix's options and build its Mix Block (call it in ``__init__``, after ``super().__init__()``).

        Arguments shared with :meth:`AutoMixMixin.configure_automix` mean the same; the defaults are
        the authors' SAMix CIFAR ResNet-18 config.

        Args:
            feature_layer: dotted name of the layer whose feature map (N, C, h, w) the Mix Block reads.
            feature_channels: C of that feature map.
            alpha: Beta(alpha, alpha) of both ratios (authors: 2).
            momentum: momentum of the encoder copy at the start (authors: 0.999).
            end_momentum: momentum at the end of the cosine schedule (authors: 0.999999).
            momentum_start: fraction of training before the cosine schedule starts (authors: 0.1).
            mask_weight: weight of the mask regulariser (authors: 0.1).
            mask_margin: margin of its L1 part (authors: 0.1).
            lam_margin: plain Mixup for the classifier's batch when lam or 1 - lam is at most this (authors: 0.08).
            clean_weight: weight of the clean cross-entropy (authors: 1).
            block_weight: weight of the Mix Block's mixup loss through the momentum copy (authors: 1).
            reduction: query/key channel reduction of the Mix Block (authors: 2).
            logits_method: name of the method mapping inputs to logits.
            seed: seed of the mixing stream; None takes ``torch.initial_seed()`` at the first step.
            input_key: index or key of the inputs in the batch.
            target_key: index or key of the labels in the batch.
            variance_weight: weight of the mask variance reward in the mask regulariser (authors: 2).
            mask_adjust: probability per step of rescaling the classifier's mask to mean lam (authors: 0.25).
            value_hidden: hidden width of the value network; None is ``feature_channels // 2`` (authors: 128 of 256).
            upsample_mode: mask upsampling (authors: ``"bilinear"``).
            lam_mul_k: k of the lam rescaling (authors: 0.25 on CIFAR).
        """
        if variance_weight < 0:
            raise ValueError(f"variance_weight must be non-negative, got {variance_weight}.")
        if not 0 <= mask_adjust <= 1:
            raise ValueError(f"mask_adjust is a probability in [0, 1], got {mask_adjust}.")
        self.configure_automix(
            feature_layer,
            feature_channels,
            alpha=alpha,
            momentum=momentum,
            end_momentum=end_momentum,
            momentum_start=momentum_start,
            mask_weight=mask_weight,
            mask_margin=mask_margin,
            lam_margin=lam_margin,
            clean_weight=clean_weight,
            block_weight=block_weight,
            reduction=reduction,
            upsample_mode=upsample_mode,
            logits_method=logits_method,
            seed=seed,
            input_key=input_key,
            target_key=target_key,
        )
        setattr(
            self,
            _BLOCK_NAME,  # replaces the PixelMixBlock configure_automix built
            SAMixBlock(
                feature_channels,
                reduction=reduction,
                value_hidden=value_hidden,
                upsample_mode=upsample_mode,
                lam_mul_k=lam_mul_k,
            ),
        )
        self.automix_mask_adjust = float(mask_adjust)
        self.automix_mask_variance_weight = float(variance_weight)
