"""TransMix: CutMix for vision transformers, the mixed label re-weighted by the class token's attention."""

from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_mix.callbacks._attention_labels import AttentionLabelCallback, PendingBatch
from lightning_mix.callbacks._batch_access import BatchKey
from lightning_mix.mixing import MixedBatch
from lightning_mix.mixing.attention import AttentionFn
from lightning_mix.mixing.transmix import patch_source_mask, transmix_lam

__all__ = ["TransMix"]


class TransMix(AttentionLabelCallback):
    """TransMix (Chen et al. 2022): the mixed label's lam comes from the last block's class attention.

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import TransMix
        from lightning_mix.demos import MNIST5kDataModule, TinyViT
        from lightning_mix.mixing import CutMix, Mixup, RandomChoice

        transmix = TransMix(RandomChoice([Mixup(0.8), CutMix(1.0)]), label_smoothing=0.1)
        Trainer(max_epochs=10, callbacks=[transmix]).fit(TinyViT(), MNIST5kDataModule())

    It is a :class:`~lightning_mix.callbacks.MixingCallback` (so it counts as the Trainer's one
    mixing callback) that wraps a mask mixer: in ``on_train_batch_start`` the batch is mixed as
    MixingCallback mixes it, and a probe image holding each sample's index is mixed with the same
    draws to know which pixels were pasted. During ``training_step``'s forward pass a forward hook
    recomputes the class token's attention row of the last attention module from its q and k
    (:mod:`lightning_mix.mixing.attention`; fused attention is fine, nothing is run twice), and
    relabels the batch *in place*, before the loss is computed::

        lam_attn = sum(attention over own patches) / sum(attention over all patches)
        lam = (lam_area + lam_attn) / 2          # average_with_area=True (the official code)
        targets = lam * t + (1 - lam) * t[index]

    Authors' rules kept (``Beckschen/TransMix``): attention of the last block, softmax before
    attention dropout, mean over heads, class token's row over the patch tokens, detached (no
    gradient through the label); a patch counts as pasted when its top-left pixel is (their
    nearest-neighbour downsampling; with :class:`~lightning_mix.mixing.patch_grid.PatchCutMix`
    every patch is wholly pasted or not); ``lam_area`` is the pasted pixel area; batches or samples
    mixed by interpolation (Mixup inside a RandomChoice) keep their area lam, as in the official
    code, which applies TransMix to CutMix batches only.

    Contract with ``training_step``: it must read the targets tensor from the batch and compute
    the loss from it *after* the forward pass (as :class:`~lightning_mix.demos.TinyViT` and
    :class:`~lightning_mix.demos.SmallCNN` do: ``x, y = batch; loss = ce(self(x), y)``); the
    tensor's values change during the forward. ``last_mixed.lam`` holds the attention lam after the
    forward. If the hook does not run during a mixed training step (wrong module, the model not
    called), ``on_train_batch_end`` raises an error naming the fix.

    The mixer must draw its boxes independently of the pixel values (CutMix, PatchCutMix, FMix,
    ResizeMix, Mixup and RandomChoice of these): SaliencyMix is refused.

    Args:
        mixer: the mask mixer (CutMix, PatchCutMix, or RandomChoice with Mixup as in DeiT).
        average_with_area: ``lam = (lam_area + lam_attn) / 2`` (True, the official code) or the
            paper's ``lam_attn`` alone (False).
        attention_module: dotted name of the attention module whose class attention is read;
            None takes the last one found (timm ``Attention`` or ``nn.MultiheadAttention``).
        attention_fn: for other attention modules, ``fn(module, args, kwargs, output)`` returning
            the attention map (B, H, N, N) (see :class:`~lightning_mix.mixing.attention.AttentionCapture`).
        patch_size: the ViT's patch size; None infers it from the number of patch tokens.
        num_prefix_tokens: tokens before the patch tokens (1: a class token; 2 with DeiT's
            distillation token).
        num_classes, label_smoothing, p, stop_epoch, input_key, target_key, seed: as
            :class:`~lightning_mix.callbacks.MixingCallback`. The authors' DeiT recipe uses
            ``RandomChoice([Mixup(0.8), CutMix(1.0)])`` and ``label_smoothing=0.1``.
    """

    def __init__(
        self,
        mixer: Callable[..., MixedBatch],
        average_with_area: bool = True,
        attention_module: str | None = None,
        attention_fn: AttentionFn | None = None,
        patch_size: int | None = None,
        num_prefix_tokens: int = 1,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        p: float = 1.0,
        stop_epoch: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(
            mixer,
            None if attention_module is None else [attention_module],
            attention_fn,
            patch_size,
            num_prefix_tokens,
            num_classes,
            label_smoothing,
            p,
            stop_epoch,
            input_key,
            target_key,
            seed,
        )
        self.average_with_area = average_with_area
        self.attention_module = attention_module

    def consume(self, position: int, attention: torch.Tensor, pending: PendingBatch) -> torch.Tensor | None:
        """The class row (B, H, N) of the last block -> TransMix's lam."""
        grid = self.patch_grid(attention.shape[-1])
        patches = attention.mean(dim=1)[:, self.num_prefix_tokens :]
        pasted, area = patch_source_mask(pending.sources, grid)
        return transmix_lam(patches, pasted, area if self.average_with_area else None)
