"""AdAutoMixMixin: Adversarial AutoMix (Qin et al., ICLR 2024) as a LightningModule training step.

A generator (:class:`~lightning_mix.mixing.mix_block.AdaptiveMaskGenerator`) mixes ``N`` images per
sample with learned per-pixel shares, reading the feature maps of an EMA target network (the
momentum copy of :class:`~lightning_mix.mixins._momentum_encoder.MomentumEncoderBase`, shared with
AutoMix). The classifier learns from the generated mixtures; every other optimisation step the
generator maximises the target network's mixed loss under a cosine-similarity constraint. The step
follows ``AdAutoMix.forward_train`` of JinXins/Adversarial-AutoMixup
(``openmixup/models/classifiers/AdAutoMix.py``, commit 9d6fd12) with the defaults of its CIFAR
ResNet-18 config (``configs/classification/cifar100/basic/r18_adautomix_bilinear.py``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.callbacks._batch_access import BatchKey
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing.mix_block import AdaptiveMaskGenerator, mix_with_masks
from lightning_mix.mixing.sampling import sample_beta
from lightning_mix.mixins._momentum_encoder import MomentumEncoderBase

__all__ = ["AdAutoMixMixin", "multi_mixed_cross_entropy"]

_GENERATOR_NAME = "adautomix_generator"


def multi_mixed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, lam: torch.Tensor
) -> torch.Tensor:
    """The N-image mixup loss ``mean_b sum_i lam_i CE(z_b, y_{indices[i, b]})`` (float32).

    ``labels`` are class indices (B,) or dense targets (B, C); ``indices`` (N, B) gives each slot's
    image; ``lam`` (N,) the slots' shares (the authors' ``ClsMixupHead.co_loss``).
    """
    loss = logits.new_zeros((), dtype=torch.float32)
    for slot in range(indices.shape[0]):  # N is a handful (authors: 3); each term is vectorised over the batch
        loss = loss + lam[slot].float() * soft_cross_entropy(logits, labels.index_select(0, indices[slot]))
    return loss


class AdAutoMixMixin(MomentumEncoderBase):
    """Adds AdAutoMix's training step to a LightningModule; you supply the network and two optimisers.

    **The contract** (as :class:`~lightning_mix.mixins.AutoMixMixin`'s):

    * ``feature_layer``: the dotted name of the layer whose feature map (B, C, h, w) the generator
      reads, ``feature_channels`` its C (authors: stage 3 of a ResNet; ``"block2"`` for the demo
      :class:`~lightning_mix.demos.SmallCNN`);
    * ``logits_method``: the method mapping inputs to logits (default ``"forward"``), through ``feature_layer``;
    * ``configure_optimizers`` returns **two optimisers**: first the classifier's, over every
      parameter except the generator's, then the generator's, over exactly
      ``self.adautomix_generator.parameters()`` (checked at fit start), with optional schedulers
      (``interval`` ``"step"`` or ``"epoch"``; the mixin steps them, as Lightning does not under
      manual optimisation; ``ReduceLROnPlateau`` is refused). The authors train both with one SGD
      optimiser; two optimisers with the same settings take the same steps, since no parameter
      gets gradients from both objectives.

    The mixin uses Lightning's manual optimisation (``configure_adautomix`` sets
    ``automatic_optimization = False``): each batch runs one backward of the sum of the two
    objectives and, at the end of an accumulation group, steps both optimisers (the generator's
    through ``trainer.strategy.optimizer_step``, so that ``trainer.global_step`` counts one per
    optimisation step, as in automatic optimisation). Under ``16-mixed`` the generator's gradients
    are rescaled when the classifier's step changed the GradScaler's scale, so both are unscaled by
    the scale their backward used.

    Example::

        from lightning_mix.demos import SmallCNN
        from lightning_mix.mixins import AdAutoMixMixin

        class AdAutoMixCNN(AdAutoMixMixin, SmallCNN):
            def __init__(self, width: int = 32):
                super().__init__(width=width)
                self.configure_adautomix(feature_layer="block2", feature_channels=2 * width)

            def configure_optimizers(self):
                generator = set(self.adautomix_generator.parameters())
                classifier = [p for p in self.parameters() if p not in generator]
                return [torch.optim.AdamW(classifier, lr=3e-3), torch.optim.AdamW(generator, lr=3e-3)]

    **Each training step** (batch ``[inputs, labels]``), as ``AdAutoMix.forward_train``:

    1. two sets of ``N`` slots (``N = mix_samples``, authors: 3), ``indices_mb`` and ``indices_bb``
       (N, B): slot 0 is the sample itself, the others random permutations; ratios
       ``lam ~ Beta(alpha, alpha)``, one per slot and step: for N = 2 two draws, ``lam_mb = (l0, 1 - l0)``
       and ``lam_bb = (l1, 1 - l1)``; for N > 2, N draws normalised to sum 1, shared by both sets;
    2. the target network ``k`` (the momentum copy) gives the feature maps (no gradient) and the
       generator the shares ``m_mb`` and ``m_bb`` (B, N, H, W) (``m_bb`` detached; replaced by the
       constant ``lam_bb`` when ``lam_bb[0]`` or ``1 - lam_bb[0]`` is at most ``lam_margin``);
       ``x_mb = sum_i x[indices_mb[i]] m_mb[:, i]``, same for ``x_bb``;
    3. the classifier ``q`` (your network) minimises
       ``mix(q(x_bb)) + (1 - mixup_ratio) CE(q(x)) + mixup_ratio mix(q(sum_i lam_i x[indices_bb[i]]))``
       for N > 2 (the last term is plain N-image Mixup), ``mix(q(x_bb)) + CE(q(x))`` for N = 2, where
       ``mix`` is :func:`multi_mixed_cross_entropy`;
    4. the generator minimises, through ``k`` (whose weights take no gradient):
       ``-beta mix(k(x_mb)) + (1 - beta) cos`` on even optimisation steps (the adversarial steps,
       step 0 first) and ``mix(k(x_mb))`` on odd ones, where
       ``cos = mean_b sum_i lam_i cos_sim(k(x_mb)_b, k(x[indices_mb[i]])_b)`` compares logits.

    The classifier gets gradients only from step 3's terms (the masks are detached), the
    generator only from step 4's (``k`` is a functional copy).

    **The target network** holds your network's parameters in float32 (the generator excluded)
    and moves after every optimisation step by :func:`~lightning_mix.averaging.ema.ema_update_` with
    momentum :func:`~lightning_mix.mixing.mix_block.automix_momentum` (0.999, cosine to 0.999999
    from 10% of the optimisation steps: the authors' ``CosineScheduleHook``), applied lazily at the
    start of the next step, as AutoMix's momentum copy.

    **Gradient accumulation**: Lightning refuses ``Trainer(accumulate_grad_batches=k)`` under manual
    optimisation; pass ``accumulate_grad_batches=k`` to :meth:`configure_adautomix` instead. Each
    batch's loss is divided by ``k``, both optimisers step after ``k`` batches (and after the last
    batch of an epoch), and the target network, the adversarial parity and step schedulers follow
    optimisation steps.

    **DDP**: gradients are averaged by DDP as usual (one backward per batch). Lightning's DDP
    wrapper stops broadcasting buffers under manual optimisation, so the mixin broadcasts rank 0's
    buffers (BatchNorm statistics) at the start of every training step, as DDP does under automatic
    optimisation. Each rank draws its own mixtures (the stream is offset by the rank). The target
    network's buffers are never read (it runs in train mode) and stay per rank; the checkpoint
    holds rank 0's.

    **Checkpoint**: the generator is a submodule (its weights in ``state_dict``); both optimiser and
    scheduler states are in Lightning's checkpoint; the target network, the step it is synced to
    and the draw stream go under ``checkpoint["adautomix"]``. Resuming from a checkpoint written
    between optimisation steps (at an accumulation boundary) continues exactly. Keep calling
    ``super()`` in ``on_fit_start``, ``on_train_epoch_end``, ``on_save_checkpoint`` and
    ``on_load_checkpoint`` if you override them.

    **Averaging callbacks** (EMA, SWA, ModelSoup) average ``state_dict``, so the generator is
    averaged with the classifier; it is never used for evaluation (only the classifier is), and
    resuming continues from the trained weights. The target network is outside ``state_dict``
    and not averaged (it is itself an average).

    Departures from the authors (deliberate): one classification head (yours) for the clean, mixed
    and target-network losses, where the authors' config has ``head_one`` and ``head_mix`` (and
    their momentum copies); slot 0 of each set is the sample itself where the authors' N > 2 branch
    draws N random permutations (the same mixtures up to the order of the batch, which no loss
    depends on); the adversarial parity counts optimisation steps, where the authors count calls of
    ``forward_train`` (the same without accumulation) and do not checkpoint it; the target
    network's logits on the clean slots come from one forward of ``x`` indexed per slot (BatchNorm
    in train mode gives the same logits for a permuted batch; the authors run one forward per
    slot); the mask is upsampled to the input size rather than by ``scale_factor=4`` (identical
    when the input is 4x the feature map); the target network's buffers are AutoMix's (copied once,
    then its own); ``is_random`` (a random N per step), ``switch_off`` and ``mix_shuffle_no_repeat``
    (off in the authors' configs) are not offered.
    """

    #: Tells the mixing callbacks that this module mixes its own batches (they refuse it at setup).
    mixes_own_batches = "mixes the clean batch itself in training_step (with its adversarial mask generator)"

    _automix_block_name = _GENERATOR_NAME
    _automix_checkpoint_key = "adautomix"
    _automix_configure_name = "configure_adautomix"

    adautomix_mix_samples: int = 3
    adautomix_alpha: float = 1.0
    adautomix_lam_margin: float = 0.03
    adautomix_mixup_ratio: float = 0.5
    adautomix_beta: float = 0.3
    adautomix_accumulate_grad_batches: int = 1
    automix_input_key: BatchKey = 0
    automix_target_key: BatchKey = 1

    def configure_adautomix(
        self,
        feature_layer: str,
        feature_channels: int,
        mix_samples: int = 3,
        alpha: float = 1.0,
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        momentum_start: float = 0.1,
        lam_margin: float = 0.03,
        mixup_ratio: float = 0.5,
        beta: float = 0.3,
        reduction: int = 2,
        upsample_mode: str = "bilinear",
        lam_embedding: str = "none",
        accumulate_grad_batches: int = 1,
        logits_method: str = "forward",
        seed: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
    ) -> None:
        """Set AdAutoMix's options, build the generator and switch to manual optimisation.

        Call it in ``__init__`` after ``super().__init__()``. The defaults are the authors' CIFAR
        ResNet-18 config (``r18_adautomix_bilinear.py``).

        Args:
            feature_layer: dotted name of the layer whose feature map (B, C, h, w) the generator reads.
            feature_channels: C of that feature map.
            mix_samples: N, the images mixed into each sample (authors: 3).
            alpha: Beta(alpha, alpha) of the ratios (authors: 1).
            momentum: momentum of the target network at the start (authors: 0.999).
            end_momentum: momentum at the end of the cosine schedule (authors: 0.999999).
            momentum_start: fraction of training before the cosine schedule starts (authors: 0.1).
            lam_margin: plain Mixup for the classifier's batch when ``lam_bb[0]`` or ``1 - lam_bb[0]``
                is at most this (authors: 0.03).
            mixup_ratio: weight of plain N-image Mixup against the clean loss, N > 2 (authors' ``mixup_radio``: 0.5).
            beta: weight of the adversarial mixed loss against the cosine term (authors' ``beta_radio``: 0.3).
            reduction: query/key channel reduction of the generator (authors: 2).
            upsample_mode: mask upsampling (authors' CIFAR ResNet config: ``"bilinear"``).
            lam_embedding: ``"none"`` (authors' CIFAR config) or ``"concat"`` (lam as a feature channel).
            accumulate_grad_batches: batches per optimisation step (use this, not the Trainer's option).
            logits_method: name of the method mapping inputs to logits.
            seed: seed of the draw stream; None takes ``torch.initial_seed()`` at the first step.
            input_key: index or key of the inputs in the batch.
            target_key: index or key of the labels in the batch.
        """
        if not isinstance(self, nn.Module) or "_modules" not in self.__dict__:
            raise RuntimeError("Call configure_adautomix in __init__ after super().__init__(), on a LightningModule.")
        if not feature_layer or not isinstance(feature_layer, str):
            raise ValueError(
                "feature_layer must name a layer of the module (a name from named_modules()), e.g. 'layer3'."
            )
        if int(mix_samples) != mix_samples or mix_samples < 2:
            raise ValueError(f"mix_samples must be an integer of at least 2, got {mix_samples}.")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}.")
        if not 0 <= momentum <= end_momentum <= 1:
            raise ValueError(
                f"need 0 <= momentum <= end_momentum <= 1, got momentum={momentum}, end_momentum={end_momentum}."
            )
        if not 0 <= momentum_start <= 1:
            raise ValueError(f"momentum_start must lie in [0, 1], got {momentum_start}.")
        if not 0 <= lam_margin < 0.5:
            raise ValueError(f"lam_margin must lie in [0, 0.5), got {lam_margin}.")
        for name, value in (("mixup_ratio", mixup_ratio), ("beta", beta)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {value}.")
        if int(accumulate_grad_batches) != accumulate_grad_batches or accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be a positive integer, got {accumulate_grad_batches}.")
        if not callable(getattr(self, logits_method, None)):
            raise ValueError(f"logits_method {logits_method!r} is not a method of {type(self).__name__}.")
        self.automix_feature_layer = feature_layer
        self.automix_feature_channels = int(feature_channels)
        self.automix_base_momentum = float(momentum)
        self.automix_end_momentum = float(end_momentum)
        self.automix_momentum_start = float(momentum_start)
        self.automix_logits_method = logits_method
        self.automix_seed = seed
        self.automix_input_key = input_key
        self.automix_target_key = target_key
        self.adautomix_mix_samples = int(mix_samples)
        self.adautomix_alpha = float(alpha)
        self.adautomix_lam_margin = float(lam_margin)
        self.adautomix_mixup_ratio = float(mixup_ratio)
        self.adautomix_beta = float(beta)
        self.adautomix_accumulate_grad_batches = int(accumulate_grad_batches)
        self.automatic_optimization = False
        setattr(
            self,
            _GENERATOR_NAME,
            AdaptiveMaskGenerator(
                feature_channels, reduction=reduction, upsample_mode=upsample_mode, lam_embedding=lam_embedding
            ),
        )

    # -- checks ----------------------------------------------------------------------------------

    def _automix_check(self) -> None:
        super()._automix_check()
        if self.automatic_optimization:
            raise RuntimeError(
                "AdAutoMixMixin uses manual optimisation (two optimisers); keep automatic_optimization=False "
                "as configure_adautomix sets it."
            )
        optimizers = self.trainer.optimizers
        if len(optimizers) != 2:
            raise ValueError(
                f"AdAutoMixMixin needs two optimisers from configure_optimizers, got {len(optimizers)}: first the "
                "classifier's (every parameter but the generator's), then the generator's "
                "(self.adautomix_generator.parameters())."
            )
        generator = {id(p) for p in self._automix_block().parameters()}
        owned = [{id(p) for group in opt.param_groups for p in group["params"]} for opt in optimizers]
        classifier = {id(p) for p in self.parameters() if p.requires_grad} - generator
        if owned[1] != generator:
            raise ValueError(
                "The second optimiser must optimise exactly the generator's parameters "
                "(self.adautomix_generator.parameters())."
            )
        if owned[0] & generator or not classifier <= owned[0]:
            raise ValueError(
                "The first optimiser must optimise every parameter of the classifier and none of the generator's; "
                "build it from [p for p in self.parameters() if p not in set(self.adautomix_generator.parameters())]."
            )
        for config in self.trainer.lr_scheduler_configs:
            plateau = isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            if plateau or config.interval not in ("step", "epoch"):
                raise ValueError(
                    "AdAutoMixMixin steps the schedulers itself (manual optimisation) and supports "
                    "interval='step' or 'epoch' without ReduceLROnPlateau; got "
                    f"interval={config.interval!r}, {type(config.scheduler).__name__}."
                )

    # -- randomness --------------------------------------------------------------------------------

    def adautomix_draw(self, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
        """This step's draws from the seeded stream (one stream position per call).

        ``indices_mb`` and ``indices_bb`` (N, B), slot 0 the identity; ``lam_mb`` and ``lam_bb`` (N,),
        each summing to 1.
        """
        slots = self.adautomix_mix_samples
        stream = self._automix_stream()
        generator = stream.generator(device)
        identity = torch.arange(batch_size, device=device)
        sets = []
        for _ in range(2):
            perms = [torch.randperm(batch_size, generator=generator, device=device) for _ in range(slots - 1)]
            sets.append(torch.stack([identity, *perms]))
        draws = sample_beta(self.adautomix_alpha, self.adautomix_alpha, slots, generator, device).float()
        stream.advance()
        if slots == 2:
            lam_mb = torch.stack([draws[0], 1 - draws[0]])
            lam_bb = torch.stack([draws[1], 1 - draws[1]])
        else:
            lam_mb = lam_bb = draws / draws.sum()
        return {"indices_mb": sets[0], "indices_bb": sets[1], "lam_mb": lam_mb, "lam_bb": lam_bb}

    # -- the step ------------------------------------------------------------------------------------

    def _slot_features(self, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        slots, batch = indices.shape
        return features.index_select(0, indices.flatten()).view(slots, batch, *features.shape[1:])

    def adautomix_losses(
        self, inputs: torch.Tensor, labels: torch.Tensor, adversarial: bool
    ) -> dict[str, torch.Tensor]:
        """One AdAutoMix step's objectives and what they were computed from.

        Returns ``loss`` (``classifier_loss + generator_loss``, the sum a single backward takes),
        ``classifier_loss`` with its terms ``mix_loss``, ``clean_loss``, ``plain_loss`` (0 for N = 2),
        ``generator_loss`` with ``target_mix_loss`` and ``cosine``, the clean ``logits``, the shares
        ``mask_mb``/``mask_bb`` (B, N, H, W) and the draws of :meth:`adautomix_draw`. ``adversarial``
        selects the generator's objective. The target network is used as it stands (no EMA update here).
        """
        generator = self._automix_block()
        slots = self.adautomix_mix_samples
        draws = self.adautomix_draw(inputs.shape[0], inputs.device)
        indices_mb, indices_bb, lam_mb, lam_bb = (draws[k] for k in ("indices_mb", "indices_bb", "lam_mb", "lam_bb"))
        target_state = self.automix_momentum_state()
        features = self.automix_features(inputs)
        size = tuple(inputs.shape[2:])
        mask_mb = generator(self._slot_features(features, indices_mb), lam_mb, size)
        mask_bb = generator(self._slot_features(features, indices_bb), lam_bb, size).detach()
        margin = self.adautomix_lam_margin
        plain = (lam_bb[0] <= margin) | (1 - lam_bb[0] <= margin)
        mask_bb = torch.where(plain, lam_bb.view(1, slots, 1, 1).to(mask_bb.dtype), mask_bb)

        mixed_bb = mix_with_masks(inputs, indices_bb, mask_bb)
        mixed_mb = mix_with_masks(inputs, indices_mb, mask_mb)
        mix_loss = multi_mixed_cross_entropy(self._automix_call(None, mixed_bb), labels, indices_bb, lam_bb)
        logits = self._automix_call(None, inputs)
        clean_loss = soft_cross_entropy(logits, labels)
        if slots > 2:
            plain_mixed = mix_with_masks(inputs, indices_bb, lam_bb.view(1, slots, 1, 1))
            plain_loss = multi_mixed_cross_entropy(self._automix_call(None, plain_mixed), labels, indices_bb, lam_bb)
            ratio = self.adautomix_mixup_ratio
            classifier_loss = mix_loss + (1 - ratio) * clean_loss + ratio * plain_loss
        else:
            plain_loss = torch.zeros_like(clean_loss)
            classifier_loss = mix_loss + clean_loss

        target_logits = self._automix_call(target_state, mixed_mb).float()
        target_mix_loss = multi_mixed_cross_entropy(target_logits, labels, indices_mb, lam_mb)
        with torch.no_grad():
            clean_target = self._automix_call(target_state, inputs).float()
        slot_targets = clean_target.index_select(0, indices_mb.flatten()).view(slots, *clean_target.shape)
        similarity = F.cosine_similarity(target_logits.unsqueeze(0), slot_targets, dim=-1)  # (N, B)
        cosine = (lam_mb.view(slots, 1) * similarity).sum(dim=0).mean()
        if adversarial:
            generator_loss = -self.adautomix_beta * target_mix_loss + (1 - self.adautomix_beta) * cosine
        else:
            generator_loss = target_mix_loss
        return {
            "loss": classifier_loss + generator_loss,
            "classifier_loss": classifier_loss,
            "mix_loss": mix_loss,
            "clean_loss": clean_loss,
            "plain_loss": plain_loss,
            "generator_loss": generator_loss,
            "target_mix_loss": target_mix_loss,
            "cosine": cosine,
            "logits": logits,
            "mask_mb": mask_mb,
            "mask_bb": mask_bb,
            **draws,
        }

    def _adautomix_total_steps(self) -> float:
        """The fit's optimisation steps: ``trainer.estimated_stepping_batches`` with this mixin's accumulation."""
        trainer = self.trainer
        max_steps = trainer.max_steps if trainer.max_steps != -1 else float("inf")
        batches = trainer.num_training_batches
        if trainer.max_epochs == -1 or batches == float("inf"):
            return max_steps
        steps = math.ceil(batches / self.adautomix_accumulate_grad_batches) * max(trainer.max_epochs, 1)
        return min(steps, max_steps)

    def _adautomix_broadcast_buffers(self) -> None:
        """Rank 0's buffers (BatchNorm statistics) to every rank, as DDP's ``broadcast_buffers`` does before a forward.

        Under manual optimisation Lightning's DDP wrapper turns that broadcast off after the first step
        (the backward runs inside ``training_step``), so each rank's statistics would drift apart; this
        restores DDP's automatic-optimisation behaviour. One broadcast per dtype (the buffers flattened).
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if torch.distributed.get_world_size() < 2:
            return
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for _, buffer in self.named_buffers():
            groups.setdefault(buffer.dtype, []).append(buffer)
        for buffers in groups.values():
            flat = torch.cat([b.detach().reshape(-1) for b in buffers])
            torch.distributed.broadcast(flat, src=0)
            offset = 0
            for b in buffers:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch[self.automix_input_key], batch[self.automix_target_key]
        self._adautomix_broadcast_buffers()
        step = self.trainer.global_step
        self.automix_sync_momentum(step, self._adautomix_total_steps())
        out = self.adautomix_losses(inputs, labels, adversarial=step % 2 == 0)
        accumulate = self.adautomix_accumulate_grad_batches
        self.manual_backward(out["loss"] / accumulate)
        if (batch_idx + 1) % accumulate == 0 or batch_idx + 1 >= self.trainer.num_training_batches:
            self._adautomix_optimizer_step()
        main_label = labels.argmax(-1) if labels.is_floating_point() else labels
        acc = (out["logits"].argmax(-1) == main_label).float().mean()
        self.log("train/loss", out["classifier_loss"], prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        for key in ("mix_loss", "clean_loss", "plain_loss", "generator_loss", "target_mix_loss", "cosine"):
            self.log(f"train/{key}", out[key], on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return out["loss"].detach()

    def _adautomix_optimizer_step(self) -> None:
        classifier_opt, generator_opt = self.optimizers()
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # 16-mixed: a GradScaler
        scale_at_backward = scaler.get_scale() if scaler is not None else None
        classifier_opt.step()  # counts trainer.global_step once per optimisation step
        if scaler is not None:
            self._adautomix_rescale_generator_grads(scale_at_backward, scaler.get_scale())
        # the generator's step through the strategy (precision plugin included) without a second count
        self.trainer.strategy.optimizer_step(generator_opt.optimizer, closure=_no_closure, model=self)
        classifier_opt.zero_grad(set_to_none=True)
        generator_opt.zero_grad(set_to_none=True)
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "step" and self.trainer.global_step % config.frequency == 0:
                config.scheduler.step()

    def _adautomix_rescale_generator_grads(self, scale_at_backward: float, scale_now: float) -> None:
        """Keep the generator's scaled gradients consistent with the scaler's current scale.

        Lightning updates a GradScaler after every optimiser step, so the classifier's step may
        change the scale (halved after an overflow, doubled at a growth step) before the
        generator's gradients, scaled by the old value in the one backward, are unscaled by the
        new one. Multiplying them by ``new / old`` makes that unscale exact.
        """
        if scale_now == scale_at_backward:
            return
        factor = scale_now / scale_at_backward
        for param in self.adautomix_generator.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)

    def on_train_epoch_end(self) -> None:
        parent = getattr(super(), "on_train_epoch_end", None)
        if parent is not None:
            parent()
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == "epoch" and (self.trainer.current_epoch + 1) % config.frequency == 0:
                config.scheduler.step()


def _no_closure() -> None:
    """The closure handed to the strategy's optimiser step: the backward already ran (manual optimisation)."""
    return None
