"""SUMixMixin: SUMix's training step (Qin et al., ECCV 2024) on top of a cut-based mixer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_mix.callbacks._batch_access import BatchKey
from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import BatchMixer, CutMix, MixedBatch, RandomChoice, dense_targets
from lightning_mix.mixing.sumix import corrected_lam, semantic_distances, sumix_batch, uncertainty_loss
from lightning_mix.mixins._mixin_state import StreamCheckpointMixin, lazy_stream

__all__ = ["SUMixMixin"]

_HEAD_NAME = "sumix_uncertainty_head"


def _default_sumix_mixer() -> CutMix:
    """The authors' mixer: CutMix with ``lam ~ Beta(0.2, 0.2)``, one box per batch, a random partner
    permutation (``mix_mode="cutmix"``, ``alpha=0.2`` in their CIFAR-100 and Tiny-ImageNet configs).
    """
    return CutMix(alpha=0.2, mode="batch", pairing="random")


class SUMixMixin(StreamCheckpointMixin):
    """Adds SUMix's training step to a LightningModule: a cut-based mix whose ratio is corrected from
    the predictions, plus an uncertainty regulariser on a small extra head.

    **The contract** (what the mixin needs from your module, timm's names):

    * ``forward_features(x)``: the pooled features (B, D) the classifier head reads;
    * ``forward_head(features)``: the logits (B, C) from those features (``forward`` = both);
    * labels as class indices (B,) or dense targets (B, C) (then their argmax is the class the
      correction reads; the targets are mixed as given).

    Call :meth:`configure_sumix` in ``__init__`` (after ``super().__init__()``): it creates the
    uncertainty head ``sumix_uncertainty_head`` (``nn.Linear(D, C)``, weights ~ N(0, 0.01), bias 0,
    the authors' ``init_linear="normal"``). Put the mixin *before* the LightningModule class and
    optimise ``self.parameters()`` (the head trains with the network, as in the authors' code).

    **Each training step** (batch ``[inputs, labels]``), as the authors' ``MixUpClassification.forward_mix``
    with ``is_IN=True`` and ``ClsUncertainMixupHead.IN_loss`` (JinXins/SUMix, commit 0469ec2):

    1. a forward of the clean batch (train mode, with gradient): clean logits (used without gradient)
       and the uncertainty head's logits (with gradient);
    2. the mixer mixes the batch (:class:`~lightning_mix.mixing.MixedBatch`: partner ``index``,
       ratio ``lam``), drawing from the mixin's seeded stream; a forward of the mixed batch gives
       the mixed logits and the uncertainty head's logits on it;
    3. ``lam_hat`` (:func:`~lightning_mix.mixing.corrected_lam` of
       :func:`~lightning_mix.mixing.semantic_distances`) replaces ``lam`` and the targets are
       re-mixed with it (:func:`~lightning_mix.mixing.sumix_batch`);
    4. ``loss = CE(mixed logits, lam_hat-mixed targets) + gamma * R``, ``R`` the regulariser
       :func:`~lightning_mix.mixing.uncertainty_loss`.

    The formulas and where each comes from are in :mod:`lightning_mix.mixing.sumix`. The step logs
    ``train/loss``, ``train/mix_loss``, ``train/uncertainty``, ``train/lam_shift`` (mean
    ``|lam_hat - lam|``) and ``train/acc`` (clean logits against the labels); the last corrected
    batch is kept in ``sumix_last_batch`` and the mixer's ``lam`` in ``sumix_last_lam``.

    **Mixers**: any mixer of :mod:`lightning_mix.mixing` that returns a
    :class:`~lightning_mix.mixing.MixedBatch` (the default is CutMix(alpha=0.2, pairing="random")); the paper
    applies SUMix to the cut-based ones (CutMix, FMix, ResizeMix, SaliencyMix). A mixing callback
    on the same Trainer is refused (the mixin mixes its own batches).

    **Randomness**: the mixer draws from a stream seeded by ``seed`` (or ``torch.initial_seed()`` at
    the first step), the global rank and a step counter; seed and counter are saved in the
    checkpoint under ``"sumix"`` (``on_save_checkpoint``/``on_load_checkpoint`` call ``super()``).

    **Departures from the authors' code** (deliberate):

    * the classification loss weights each sample by its own ``lam_hat_i``; the authors multiply
      a batch-mean cross-entropy by the per-sample weights and average, i.e.
      ``mean(CE_a) mean(lam_hat) + mean(CE_b) mean(1 - lam_hat)``, which drops the per-sample
      pairing the correction computes (``tests/references/sumix_authors.py`` keeps their form);
    * ``lam_hat`` is computed in log-odds form (same value, no underflow to 0/0 for large batches);
    * the uncertainty head always has its own weights (the authors' ``is_norm=True``, all their
      configs but ImageNet, where ``is_norm=False`` reuses the class logits);
    * ``gamma`` defaults to 0.1, the head's default in the authors' code; their released configs
      set 0.5 (CIFAR-100, CUB-200, Aircraft) and 1.0 (Tiny-ImageNet).
    """

    stream_name = "sumix"  # the draw stream, saved under checkpoint["sumix"]
    #: Tells the mixing callbacks that this module mixes its own batches (they refuse it at setup).
    mixes_own_batches = (
        "mixes the clean batch itself in training_step (it needs the clean forward); give the mixer to "
        "configure_sumix instead"
    )

    sumix_num_classes: int = 0
    sumix_gamma: float = 0.1
    sumix_seed: int | None = None
    sumix_input_key: BatchKey = 0
    sumix_target_key: BatchKey = 1

    def configure_sumix(
        self,
        num_classes: int,
        feature_dim: int,
        mixer: BatchMixer | RandomChoice | None = None,
        gamma: float = 0.1,
        seed: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
    ) -> None:
        """Set SUMix's options and create the uncertainty head (call it in ``__init__``, after ``super().__init__()``).

        Args:
            num_classes: C, the classes of the logits and of the uncertainty head.
            feature_dim: D, the width of the features ``forward_features`` returns.
            mixer: the cut-based mixer; None is CutMix(alpha=0.2, pairing="random") (CutMix, alpha 0.2).
            gamma: weight of the uncertainty regulariser (authors' default 0.1).
            seed: seed of the mixer's stream; None takes ``torch.initial_seed()`` at the first step.
            input_key: index or key of the inputs in the batch.
            target_key: index or key of the labels in the batch.
        """
        if not isinstance(self, nn.Module) or "_modules" not in self.__dict__:
            raise RuntimeError("Call configure_sumix in __init__ after super().__init__(), on a LightningModule.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be positive (the width of forward_features), got {feature_dim}.")
        if not gamma >= 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}.")
        if mixer is not None and not isinstance(mixer, (BatchMixer, RandomChoice)):
            raise ValueError(
                f"mixer must be a mixer of lightning_mix.mixing (e.g. CutMix(alpha=0.2, pairing='random')), "
                f"got {type(mixer).__name__}."
            )
        for method in ("forward_features", "forward_head"):
            if not callable(getattr(self, method, None)):
                raise ValueError(
                    f"{type(self).__name__} needs a `{method}` method: SUMix reads the pooled features "
                    "(forward_features) and maps them to logits (forward_head)."
                )
        self.sumix_num_classes = int(num_classes)
        self.sumix_gamma = float(gamma)
        self.sumix_mixer = mixer if mixer is not None else _default_sumix_mixer()
        self.sumix_seed = seed
        self.sumix_input_key = input_key
        self.sumix_target_key = target_key
        head = nn.Linear(feature_dim, num_classes)
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        setattr(self, _HEAD_NAME, head)

    # -- the step --------------------------------------------------------------------------------

    def _sumix_head(self) -> nn.Module:
        head = getattr(self, _HEAD_NAME, None)
        if head is None:
            raise RuntimeError(f"{type(self).__name__}: call self.configure_sumix(num_classes=..., feature_dim=...).")
        return head

    def _sumix_stream(self) -> CounterStream:
        return lazy_stream(self, "sumix", self.sumix_seed)

    def sumix_mix(self, inputs: torch.Tensor, targets: torch.Tensor) -> MixedBatch:
        """Mix ``inputs`` and dense ``targets`` with the mixer, from the seeded stream (one position per call)."""
        stream = self._sumix_stream()
        mixed = self.sumix_mixer(inputs, targets, stream.generator(inputs.device))
        stream.advance()
        return mixed

    def _sumix_targets(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense float targets and class indices from the batch's labels."""
        if labels.is_floating_point():
            if labels.dim() != 2 or labels.shape[1] != self.sumix_num_classes:
                raise ValueError(
                    f"dense targets must have shape (B, {self.sumix_num_classes}), got {tuple(labels.shape)}."
                )
            return labels, labels.argmax(-1)
        return dense_targets(labels, self.sumix_num_classes), labels.long()

    def sumix_losses(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """One SUMix step: ``loss``, ``mix_loss``, ``uncertainty``, the mixed ``logits``, the clean
        ``clean_logits``, the corrected ``batch`` (:class:`~lightning_mix.mixing.MixedBatch` with
        ``lam_hat``) and the mixer's ``lam``.
        """
        head = self._sumix_head()
        targets, classes = self._sumix_targets(labels)
        clean_features = self.forward_features(inputs)
        clean_logits = self.forward_head(clean_features)
        clean_uncertainty = head(clean_features)
        mixed = self.sumix_mix(inputs, targets)
        mixed_features = self.forward_features(mixed.inputs)
        logits = self.forward_head(mixed_features)
        mixed_uncertainty = head(mixed_features)
        own, partner = semantic_distances(clean_logits, logits, classes, mixed.index)
        lam_hat = corrected_lam(mixed.lam, own, partner, classes, mixed.index)
        batch = sumix_batch(mixed, targets, lam_hat)
        mix_loss = soft_cross_entropy(logits, batch.targets)
        regulariser = uncertainty_loss(
            own, partner, clean_uncertainty, mixed_uncertainty, classes, mixed.index, mixed.lam
        )
        # gamma = 0 still multiplies the term in, so every parameter takes part (DDP needs no unused-parameter search)
        loss = mix_loss + self.sumix_gamma * regulariser
        self.sumix_last_batch, self.sumix_last_lam = batch, mixed.lam
        return {
            "loss": loss,
            "mix_loss": mix_loss,
            "uncertainty": regulariser,
            "logits": logits,
            "clean_logits": clean_logits,
            "batch": batch,
            "lam": mixed.lam,
        }

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch[self.sumix_input_key], batch[self.sumix_target_key]
        out = self.sumix_losses(inputs, labels)
        classes = labels.argmax(-1) if labels.is_floating_point() else labels
        acc = (out["clean_logits"].argmax(-1) == classes).float().mean()
        shift = (out["batch"].lam.float() - out["lam"].float()).abs().mean()
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/mix_loss", out["mix_loss"], on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/uncertainty", out["uncertainty"], on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/lam_shift", shift, on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return out["loss"]
