"""SMMixMixin: SMMix's training step for a ViT LightningModule (Chen et al., ICCV 2023, ChenMnZ/SMMix)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_mix.callbacks._batch_access import BatchKey
from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import dense_targets, sample_beta
from lightning_mix.mixing.attention import AttentionCapture, resolve_attention_modules
from lightning_mix.mixing.smmix import image_token_attention, smmix_images
from lightning_mix.mixins._mixin_state import StreamCheckpointMixin, lazy_stream

__all__ = ["SMMixMixin"]


class SMMixMixin(StreamCheckpointMixin):
    """Adds SMMix's training step (self-motivated max-min attention mixing) to a ViT LightningModule.

    Each training step, as in the authors' ``smmix.py``/``engine.py`` (ChenMnZ/SMMix), the partner of
    sample ``i`` is sample ``B - 1 - i`` (the batch flipped), and with probability ``switch_prob``:

    * **SMMix**: a no-grad forward of the clean batch in eval mode gives the clean logits and the
      last attention module's map; each image's least attended ``s x s`` window of patches receives
      its partner's most attended window (:func:`~lightning_mix.mixing.smmix.smmix_images`), ``s``
      uniform in ``[int(g * min_side_ratio), int(g * max_side_ratio)]`` for a ``g x g`` grid, and
      ``lam = 1 - s^2 / g^2``. The loss is ``CE(class logits, lam y + (1 - lam) y_partner)``
      ``+ fine_weight * (CE(token_head(mean own tokens), y) + CE(token_head(mean pasted tokens), y_partner)) / 2``
      ``+ consistency_weight * KL(softmax(lam z + (1 - lam) z_partner) || softmax(class logits))``
      (KL averaged over the batch), where ``z`` are the clean logits and the token means are over the
      final-norm image tokens of the mixed images.
    * otherwise **Mixup**: ``lam ~ Beta(alpha, alpha)`` per batch, loss ``CE`` on the mixed target only.

    Labels are smoothed by ``label_smoothing`` (0.1, DeiT's and the authors'); dense float targets
    are used as given. The authors' weights are 1 and 1.

    The module must provide (timm's ``VisionTransformer`` names):

    * ``forward_features(x)``: the tokens after the final norm, (B, prefix + P, D);
    * ``forward_head(features)``: the class logits from those tokens (``forward`` = both);
    * a recognised attention module (timm-style or ``nn.MultiheadAttention``; the last one is used,
      or name it with ``attention_module``), and a ``num_prefix_tokens`` attribute (default 1).

    Call :meth:`configure_smmix` in ``__init__`` (after ``super().__init__()``): it creates the
    token head ``smmix_token_head`` (``nn.Linear(embed_dim, num_classes)``, separate from the class
    head as in the authors' code). Put the mixin *before* the LightningModule class.

    Under DDP use ``strategy="ddp_find_unused_parameters_true"`` (the token head takes no part in the
    Mixup steps; the authors set ``find_unused_parameters=True``); plain ``"ddp"`` is refused at the
    start of fit.

    Departures: none at the authors' settings; window sides are capped at ``g - 1`` (only
    ``max_side_ratio = 1`` reaches ``g``, where the own-token mean would be empty); odd batch sizes
    are allowed (the authors assert an even batch; with the flip the middle sample is its own
    partner). The random draws (branch, window side, lam) come from a CPU stream seeded by ``seed``
    (or ``torch.initial_seed()``), the global rank and a step counter, saved in the checkpoint.
    """

    stream_name = "smmix"  # the draw stream, saved under checkpoint["smmix"]
    #: Tells the mixing callbacks that this module mixes its own batches (they refuse it at setup).
    mixes_own_batches = "mixes the batch itself in training_step (SMMix or Mixup, from the clean batch's attention)"

    smmix_switch_prob: float = 0.5
    smmix_alpha: float = 0.8
    smmix_min_side_ratio: float = 0.25
    smmix_max_side_ratio: float = 0.75
    smmix_label_smoothing: float = 0.1
    smmix_fine_weight: float = 1.0
    smmix_consistency_weight: float = 1.0
    smmix_num_classes: int = 0
    smmix_seed: int | None = None
    smmix_attention_module: str | None = None
    smmix_input_key: BatchKey = 0
    smmix_target_key: BatchKey = 1

    def configure_smmix(
        self,
        num_classes: int,
        embed_dim: int,
        switch_prob: float = 0.5,
        alpha: float = 0.8,
        min_side_ratio: float = 0.25,
        max_side_ratio: float = 0.75,
        label_smoothing: float = 0.1,
        fine_weight: float = 1.0,
        consistency_weight: float = 1.0,
        attention_module: str | None = None,
        seed: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
    ) -> None:
        """Set SMMix's options and create the token head; the defaults are the authors' (DeiT recipe).

        Args:
            num_classes: classes of the token head and of the dense targets.
            embed_dim: width D of the tokens ``forward_features`` returns.
            switch_prob: probability of an SMMix step (else a Mixup step); authors 0.5.
            alpha: Beta(alpha, alpha) of the Mixup steps; authors 0.8.
            min_side_ratio: smallest window side as a fraction of the grid side (floored); authors 0.25.
            max_side_ratio: largest window side as a fraction of the grid side (floored); authors 0.75.
            label_smoothing: of class-index labels; authors 0.1.
            fine_weight: weight of the fine-grained token-label loss; authors 1.
            consistency_weight: weight of the prediction consistency (KL) loss; authors 1.
            attention_module: dotted name of the attention module whose map guides the mixing;
                None takes the last recognised one.
            seed: seed of the draws; None takes ``torch.initial_seed()`` at the first step.
            input_key: index or key of the inputs in the batch.
            target_key: index or key of the labels in the batch.
        """
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        if not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"switch_prob must lie in [0, 1], got {switch_prob}.")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}.")
        if not 0.0 < min_side_ratio <= max_side_ratio <= 1.0:
            raise ValueError(
                f"need 0 < min_side_ratio <= max_side_ratio <= 1, got {min_side_ratio} and {max_side_ratio}."
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
        if fine_weight < 0 or consistency_weight < 0:
            raise ValueError(f"loss weights must be non-negative, got {fine_weight} and {consistency_weight}.")
        self.smmix_num_classes = num_classes
        self.smmix_switch_prob = switch_prob
        self.smmix_alpha = alpha
        self.smmix_min_side_ratio = min_side_ratio
        self.smmix_max_side_ratio = max_side_ratio
        self.smmix_label_smoothing = label_smoothing
        self.smmix_fine_weight = fine_weight
        self.smmix_consistency_weight = consistency_weight
        self.smmix_attention_module = attention_module
        self.smmix_seed = seed
        self.smmix_input_key = input_key
        self.smmix_target_key = target_key
        self.smmix_token_head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.smmix_token_head.weight, std=0.02)
        nn.init.zeros_(self.smmix_token_head.bias)

    # -- draws -----------------------------------------------------------------------------------

    def _smmix_stream(self) -> CounterStream:
        return lazy_stream(self, "smmix", self.smmix_seed)

    def smmix_side_choices(self, grid: int) -> list[int]:
        """The window sides (in patches) drawn uniformly for a ``grid x grid`` patch grid."""
        if grid < 2:
            raise ValueError(f"SMMix needs a patch grid of at least 2 x 2, got {grid} x {grid}.")
        high = min(grid - 1, int(grid * self.smmix_max_side_ratio))  # the image keeps at least one row of its own
        low = min(high, max(1, int(grid * self.smmix_min_side_ratio)))
        return list(range(low, high + 1))

    def smmix_draw(self, grid: int) -> tuple[bool, int, float]:
        """This step's ``(use_smmix, window side, mixup lam)`` from the CPU stream (no device sync)."""
        stream = self._smmix_stream()
        generator = stream.generator(torch.device("cpu"))
        use_smmix = bool(torch.rand((), generator=generator) < self.smmix_switch_prob)
        sides = self.smmix_side_choices(grid)
        side = sides[int(torch.randint(len(sides), (), generator=generator))]
        lam = float(sample_beta(self.smmix_alpha, self.smmix_alpha, 1, generator, "cpu", torch.float64)[0])
        stream.advance()
        return use_smmix, side, lam

    # -- the step --------------------------------------------------------------------------------

    def _smmix_attention(self) -> nn.Module:
        cached = getattr(self, "_smmix_attention_cache", None)
        if cached is None:
            names = [self.smmix_attention_module] if self.smmix_attention_module is not None else None
            # a tuple, so that nn.Module does not register the attention module a second time
            cached = self._smmix_attention_cache = (resolve_attention_modules(self, names)[-1][1],)
        return cached[0]

    def _smmix_dense(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.is_floating_point() and labels.dim() == 2:
            return labels
        return dense_targets(labels, self.smmix_num_classes, self.smmix_label_smoothing)

    def smmix_losses(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """One step's losses and draw.

        Returns ``loss``, ``cls``, ``fine``, ``consistency``, the class ``logits``, ``lam`` and ``mode``
        (``"smmix"`` or ``"mixup"``); the mixed inputs are kept in ``smmix_last_inputs``.
        """
        if not isinstance(getattr(self, "smmix_token_head", None), nn.Module):
            raise RuntimeError(f"{type(self).__name__}: call self.configure_smmix(...) in __init__.")
        patch = getattr(self, "patch_size", None)
        grid = inputs.shape[-1] // patch if isinstance(patch, int) else None
        if grid is None:
            raise ValueError(f"{type(self).__name__} needs an int `patch_size` attribute (the ViT's patch size).")
        targets = self._smmix_dense(labels)
        partner = torch.arange(inputs.shape[0] - 1, -1, -1, device=inputs.device)
        use_smmix, side, mix_lam = self.smmix_draw(grid)
        zero = targets.new_zeros(())
        if not use_smmix:
            mixed = torch.lerp(inputs[partner], inputs, mix_lam)
            logits = self.forward_head(self.forward_features(mixed))
            cls = soft_cross_entropy(logits, torch.lerp(targets[partner], targets, mix_lam))
            self.smmix_last_inputs = mixed
            return {
                "loss": cls,
                "cls": cls,
                "fine": zero,
                "consistency": zero,
                "logits": logits,
                "lam": mix_lam,
                "mode": "mixup",
            }
        prefix = int(getattr(self, "num_prefix_tokens", 1))
        was_training = self.training
        self.eval()
        with torch.no_grad(), AttentionCapture([self._smmix_attention()], rows="all") as capture:
            clean_logits = self.forward_head(self.forward_features(inputs)).float()
        self.train(was_training)
        scores = image_token_attention(capture.maps[0], prefix)
        mixed, source_mask, lam = smmix_images(inputs, scores, side, patch, partner)
        self.smmix_last_inputs = mixed
        features = self.forward_features(mixed)
        logits = self.forward_head(features)
        tokens = features[:, prefix:]
        source = source_mask.unsqueeze(-1).to(tokens.dtype)
        own_mean = (tokens * (1 - source)).sum(1) / (1 - source).sum(1)
        pasted_mean = (tokens * source).sum(1) / source.sum(1)
        cls = soft_cross_entropy(logits, lam * targets + (1 - lam) * targets[partner])
        fine = 0.5 * (
            soft_cross_entropy(self.smmix_token_head(own_mean), targets)
            + soft_cross_entropy(self.smmix_token_head(pasted_mean), targets[partner])
        )
        reference = F.softmax(lam * clean_logits + (1 - lam) * clean_logits[partner], dim=-1)
        consistency = F.kl_div(F.log_softmax(logits.float(), dim=-1), reference, reduction="batchmean")
        loss = cls + self.smmix_fine_weight * fine + self.smmix_consistency_weight * consistency
        return {
            "loss": loss,
            "cls": cls,
            "fine": fine,
            "consistency": consistency,
            "logits": logits,
            "lam": lam,
            "mode": "smmix",
        }

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        inputs, labels = batch[self.smmix_input_key], batch[self.smmix_target_key]
        out = self.smmix_losses(inputs, labels)
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/cls", out["cls"], on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/fine", out["fine"], on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/consistency", out["consistency"], on_step=False, on_epoch=True, sync_dist=True)
        return out["loss"]

    def on_fit_start(self) -> None:
        parent = getattr(super(), "on_fit_start", None)
        if parent is not None:
            parent()
        wrapper = getattr(getattr(self, "trainer", None), "strategy", None)
        wrapper = getattr(wrapper, "model", None)
        if isinstance(wrapper, DistributedDataParallel) and not wrapper.find_unused_parameters:
            if self.smmix_switch_prob < 1.0:
                raise ValueError(
                    f"{type(self).__name__} trains the token head in SMMix steps only, so DDP sees unused "
                    "parameters in its Mixup steps (and would hang); use "
                    "strategy='ddp_find_unused_parameters_true' (the authors' find_unused_parameters=True)."
                )
