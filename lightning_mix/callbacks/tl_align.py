"""TL-Align: token labels traced through every block's attention and residual; the class token's label is the target."""

from __future__ import annotations

import torch

from lightning_mix.callbacks._attention_labels import AttentionLabelCallback, PendingBatch
from lightning_mix.mixing.tl_align import initial_token_weights, patch_own_fraction, propagate_token_weights

__all__ = ["TLAlign"]


class TLAlign(AttentionLabelCallback):
    """TL-Align (Xiao et al. 2023): the mixed label follows the tokens through the network.

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import TLAlign
        from lightning_mix.demos import MNIST5kDataModule, TinyViT
        from lightning_mix.mixing.patch_grid import PatchCutMix

        tl_align = TLAlign(PatchCutMix(alpha=1.0, patch_size=4), label_smoothing=0.1)
        Trainer(max_epochs=10, callbacks=[tl_align]).fit(TinyViT(patch_size=4), MNIST5kDataModule())

    Before the first block each token carries a label: the class token the area-mixed label,
    each patch token the label of the image its pixels came from. In every block, a forward hook
    recomputes the block's attention from its q and k (fused attention is fine; nothing runs twice)
    and updates the labels as the authors' code does (``Euphoria16/TL-Align``)::

        labels = (mean_heads(attention) @ labels + labels) / 2      # attention, then the residual

    After the last block the class token's label replaces the area-mixed target, in place,
    before the loss is computed. Labels are tracked as the weight of the sample's own label per
    token (the rule is linear), so the result is exactly ``lam * t + (1 - lam) * t[index]`` with
    ``lam`` = the class token's weight, and ``last_mixed.lam`` holds it.

    Authors' defaults: token-level CutMix only (``--mixup 0 --cutmix 1.0``, batch mode) with
    ``label_smoothing=0.1``: use :class:`~lightning_mix.mixing.patch_grid.PatchCutMix` with the
    model's patch size (the preset does). With a pixel box that cuts patches, a patch token starts
    with its pixels' share of each label (the authors only use patch-aligned boxes). Interpolated
    samples (Mixup in a RandomChoice) keep their lam: every token carries the same mix, which the
    rule leaves unchanged. Departure: PatchCutMix places the box with timm's corner convention
    (``[c - side // 2, c + (side + 1) // 2)``); the authors' ``rand_token_bbox`` uses
    ``c +- side // 2``, so their odd sides are one patch shorter.

    Attention modules are hooked in the order ``find_attention_modules`` lists them (all of them
    by default), which must be the order the forward runs them; ``training_step`` must compute the
    loss from the batch's target tensor after the forward, as for :class:`TransMix`.

    Args:
        mixer: the mask mixer (PatchCutMix, or CutMix/FMix/RandomChoice; SaliencyMix is refused).
        attention_modules: dotted names of the blocks' attention modules, in forward order; None
            takes every recognised attention module (timm-style or ``nn.MultiheadAttention``).
        attention_fn: for other attention modules, ``fn(module, args, kwargs, output)`` returning
            the attention map (B, H, N, N).
        patch_size: the ViT's patch size; None infers it from the number of patch tokens.
        num_prefix_tokens: tokens before the patch tokens (1: a class token); they all start with
            the area-mixed label.
        num_classes, label_smoothing, p, stop_epoch, input_key, target_key, seed: as
            :class:`~lightning_mix.callbacks.MixingCallback`.
    """

    rows = "all"
    last_only = False
    _weights: torch.Tensor | None = None  # set per batch by start() and consume()
    _next_block: int = 0

    def start(self, pending: PendingBatch) -> None:
        self._weights, self._next_block = None, 0

    def consume(self, position: int, attention: torch.Tensor, pending: PendingBatch) -> torch.Tensor | None:
        """Block ``position``'s map (B, H, N, N) -> the token weights; lam after the last block."""
        if position != self._next_block:
            raise RuntimeError(
                f"TLAlign expected attention module {self._next_block} to run next but module {position} ran; "
                "list attention_modules in the order the forward pass runs them, each once per forward."
            )
        if self._weights is None:
            grid = self.patch_grid(attention.shape[-1])
            own = patch_own_fraction(pending.sources, grid)
            area_lam = own.mean(dim=1)  # patches tile the image: the own-pixel area
            self._weights = initial_token_weights(own, area_lam, self.num_prefix_tokens)
        self._weights = propagate_token_weights(self._weights, attention)
        self._next_block += 1
        if self._next_block < self.num_hooked_modules:
            return None
        return self._weights[:, 0]
