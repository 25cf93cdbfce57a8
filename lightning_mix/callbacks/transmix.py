"""TransMix: CutMix for vision transformers, the mixed label re-weighted by the class token's attention."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks.mixing import MixingCallback
from lightning_mix.mixing import MixedBatch, RandomChoice, SaliencyMix, mix_targets
from lightning_mix.mixing.attention import AttentionCapture, AttentionFn, resolve_attention_modules
from lightning_mix.mixing.transmix import infer_patch_grid, patch_source_mask, probe_sources, transmix_lam

__all__ = ["TransMix"]


class _Pending(NamedTuple):
    """What the attention hook needs to relabel the batch being trained on."""

    mixed: MixedBatch
    base_targets: torch.Tensor  # dense targets before mixing
    batch_targets: torch.Tensor  # the tensor placed in the batch, relabelled in place
    sources: torch.Tensor  # mixed probe (B, 1, H, W): where each pixel came from
    is_mask: torch.Tensor  # (B,) bool: the sample was mixed by a mask (CutMix), not interpolated


def _uses_pixel_dependent_draws(mixer: Any) -> bool:
    if isinstance(mixer, SaliencyMix):
        return True
    if isinstance(mixer, RandomChoice):
        return any(_uses_pixel_dependent_draws(m) for m in mixer.mixers)
    return False


class TransMix(MixingCallback):
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
        attention_module: Optional[str] = None,
        attention_fn: Optional[AttentionFn] = None,
        patch_size: Optional[int] = None,
        num_prefix_tokens: int = 1,
        num_classes: Optional[int] = None,
        label_smoothing: float = 0.0,
        p: float = 1.0,
        stop_epoch: Optional[int] = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(mixer, num_classes, label_smoothing, p, stop_epoch, input_key, target_key, seed)
        if _uses_pixel_dependent_draws(mixer):
            raise ValueError(
                "TransMix re-draws the mixer's boxes on a probe image, so the draws must not depend on the pixels; "
                "SaliencyMix does. Use CutMix, PatchCutMix, FMix or ResizeMix (or a RandomChoice of them and Mixup)."
            )
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}.")
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size}.")
        if attention_fn is not None and attention_module is None:
            raise ValueError("attention_fn is given: name the module it reads with attention_module='...'.")
        self.average_with_area = average_with_area
        self.attention_module = attention_module
        self.attention_fn = attention_fn
        self.patch_size = patch_size
        self.num_prefix_tokens = num_prefix_tokens
        self._capture: Optional[AttentionCapture] = None
        self._pending: Optional[_Pending] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._capture is not None:
            return
        names = None if self.attention_module is None else [self.attention_module]
        chosen = resolve_attention_modules(pl_module, names, has_attention_fn=self.attention_fn is not None)
        self._capture = AttentionCapture(
            [chosen[-1][1]], rows="cls", attention_fn=self.attention_fn, on_capture=self._relabel
        ).attach()
        self._capture.enabled = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._capture is not None:
            self._capture.remove()
            self._capture = None
            self._pending = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        inputs, targets = self.read_batch(batch)
        self._pending = None
        if not self._should_mix(trainer):
            self.last_mixed = None
            set_entry(batch, self.target_key, targets)
            self.advance()
            return
        if inputs.dim() != 4:
            raise ValueError(f"TransMix needs image batches (B, C, H, W), got shape {tuple(inputs.shape)}.")
        generator = self.generator(inputs.device)
        state = generator.get_state()
        mixed = self.mixer(inputs, targets, generator=generator)
        generator.set_state(state)  # the same draws again, on a probe that records where pixels come from
        sources = self.mixer(probe_sources(inputs.shape[0], inputs.shape[2:], inputs.device), targets, generator).inputs
        b = inputs.shape[0]
        own = torch.arange(b, device=inputs.device, dtype=sources.dtype).view(b, 1, 1, 1)
        is_mask = ((sources == own) | (sources == mixed.index.to(sources.dtype).view(b, 1, 1, 1))).flatten(1).all(1)
        batch_targets = mixed.targets  # a fresh tensor: the hook may write into it
        self._pending = _Pending(mixed, targets, batch_targets, sources, is_mask)
        self.last_mixed = mixed._replace(targets=batch_targets)
        set_entry(batch, self.input_key, mixed.inputs)
        set_entry(batch, self.target_key, batch_targets)
        self._capture.enabled = True
        self.advance()

    def _relabel(self, position: int, cls_attention: torch.Tensor) -> None:
        """Attention hook: the class row (B, H, N) of the last block -> TransMix lam -> targets in place."""
        pending, self._pending = self._pending, None
        self._capture.enabled = False
        if pending is None:
            return
        patches = cls_attention.mean(dim=1)[:, self.num_prefix_tokens :]
        grid = infer_patch_grid(patches.shape[1], pending.sources.shape[-2:], self.patch_size)
        pasted, area = patch_source_mask(pending.sources, grid)
        lam = transmix_lam(patches, pasted, area if self.average_with_area else None)
        lam = torch.where(pending.is_mask, lam, pending.mixed.lam.float())
        pending.batch_targets.copy_(mix_targets(pending.base_targets, pending.mixed.index, lam))
        self.last_mixed = pending.mixed._replace(targets=pending.batch_targets, lam=lam)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            self._pending = None
            self._capture.enabled = False
            raise RuntimeError(
                "TransMix mixed the batch but its attention hook did not run during training_step, so the targets "
                "kept the area lam. Check that training_step calls the model on batch[input_key], and that "
                "attention_module names an attention module used in that forward pass."
            )
