"""What TransMix and TL-Align share: mix a batch, record where pixels came from, relabel it from attention hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks.mixing import MixingCallback
from lightning_mix.mixing import MixedBatch, RandomChoice, SaliencyMix, mix_targets
from lightning_mix.mixing.attention import AttentionCapture, AttentionFn, Rows, resolve_attention_modules
from lightning_mix.mixing.transmix import infer_patch_grid, probe_sources

__all__ = ["AttentionLabelCallback", "PendingBatch"]


class PendingBatch(NamedTuple):
    """The batch being trained on, as the attention hooks need it."""

    mixed: MixedBatch
    base_targets: torch.Tensor  # dense targets before mixing
    batch_targets: torch.Tensor  # the tensor placed in the batch, relabelled in place
    sources: torch.Tensor  # mixed probe (B, 1, H, W): where each pixel came from
    is_mask: torch.Tensor  # (B,) bool: mixed by a mask (CutMix), not interpolated (Mixup)


def _uses_pixel_dependent_draws(mixer: Any) -> bool:
    if isinstance(mixer, SaliencyMix):
        return True
    if isinstance(mixer, RandomChoice):
        return any(_uses_pixel_dependent_draws(m) for m in mixer.mixers)
    return False


class AttentionLabelCallback(MixingCallback):
    """A MixingCallback whose targets are rewritten, during the training forward, from attention maps.

    In ``on_train_batch_start`` the batch is mixed as :class:`MixingCallback` mixes it, and a probe
    image holding each sample's index is mixed with the same draws (the generator state is
    restored in between), which tells which pixels were pasted. Attention hooks
    (:class:`~lightning_mix.mixing.attention.AttentionCapture`) call :meth:`consume` for each
    captured map during ``training_step``'s forward; when it returns a lam (B,), the batch's target
    tensor is overwritten in place with ``lam * t + (1 - lam) * t[index]`` (interpolated samples
    keep their mixer lam) and :attr:`last_mixed` gets the new lam. A mixed step whose hooks did not
    complete raises an error in ``on_train_batch_end``.

    Subclasses set ``rows`` and ``last_only`` and implement :meth:`consume`.
    """

    rows: Rows = "cls"
    last_only: bool = True

    def __init__(
        self,
        mixer: Callable[..., MixedBatch],
        attention_modules: list[str] | None = None,
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
        super().__init__(mixer, num_classes, label_smoothing, p, stop_epoch, input_key, target_key, seed)
        name = type(self).__name__
        if _uses_pixel_dependent_draws(mixer):
            raise ValueError(
                f"{name} re-draws the mixer's masks on a probe image, so the draws must not depend on the pixels; "
                "SaliencyMix does. Use CutMix, PatchCutMix, FMix or ResizeMix (or a RandomChoice of them and Mixup)."
            )
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}.")
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer, got {patch_size}.")
        if attention_fn is not None and not attention_modules:
            raise ValueError(f"{name}: attention_fn is given; name the modules it reads with attention_modules.")
        self.attention_modules = list(attention_modules) if attention_modules is not None else None
        self.attention_fn = attention_fn
        self.patch_size = patch_size
        self.num_prefix_tokens = num_prefix_tokens
        self._capture: AttentionCapture | None = None
        self._pending: PendingBatch | None = None

    # -- hooks on the model -------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self._capture is not None:
            return
        chosen = resolve_attention_modules(pl_module, self.attention_modules, self.attention_fn is not None)
        if self.last_only:
            chosen = chosen[-1:]
        self._capture = AttentionCapture(
            [m for _, m in chosen], rows=self.rows, attention_fn=self.attention_fn, on_capture=self._on_attention
        ).attach()
        self._capture.enabled = False

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._capture is not None:
            self._capture.remove()
            self._capture = None
            self._pending = None

    @property
    def num_hooked_modules(self) -> int:
        return 0 if self._capture is None else len(self._capture.modules)

    # -- the batch ----------------------------------------------------------------------------
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
            raise ValueError(f"{type(self).__name__} needs image batches (B, C, H, W), got {tuple(inputs.shape)}.")
        generator = self.generator(inputs.device)
        state = generator.get_state()
        mixed = self.mixer(inputs, targets, generator=generator)
        generator.set_state(state)  # the same draws again, on a probe that records where pixels come from
        b = inputs.shape[0]
        sources = self.mixer(probe_sources(b, inputs.shape[2:], inputs.device), targets, generator).inputs
        own = torch.arange(b, device=inputs.device, dtype=sources.dtype).view(b, 1, 1, 1)
        partner = mixed.index.to(sources.dtype).view(b, 1, 1, 1)
        is_mask = ((sources == own) | (sources == partner)).flatten(1).all(1)
        self._pending = PendingBatch(mixed, targets, mixed.targets, sources, is_mask)
        self.start(self._pending)
        self.last_mixed = mixed
        set_entry(batch, self.input_key, mixed.inputs)
        set_entry(batch, self.target_key, mixed.targets)  # a fresh tensor: the hooks write into it
        self._capture.enabled = True
        self.advance()

    def patch_grid(self, num_tokens: int) -> list[int]:
        """(gh, gw) of the pending batch's images for a map over ``num_tokens`` tokens (prefix included)."""
        return infer_patch_grid(num_tokens - self.num_prefix_tokens, self._pending.sources.shape[-2:], self.patch_size)

    def start(self, pending: PendingBatch) -> None:
        """Called once a batch is mixed, before its forward (subclasses reset their state here)."""

    def consume(self, position: int, attention: torch.Tensor, pending: PendingBatch) -> torch.Tensor | None:
        """Called with each captured map; returns the new lam (B,) when the labels are settled, else None."""
        raise NotImplementedError

    def _on_attention(self, position: int, attention: torch.Tensor) -> None:
        pending = self._pending
        if pending is None:
            return
        lam = self.consume(position, attention, pending)
        if lam is None:
            return
        self._pending = None
        self._capture.enabled = False
        lam = torch.where(pending.is_mask, lam, pending.mixed.lam.float())
        pending.batch_targets.copy_(mix_targets(pending.base_targets, pending.mixed.index, lam))
        self.last_mixed = pending.mixed._replace(lam=lam)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            self._pending = None
            self._capture.enabled = False
            raise RuntimeError(
                f"{type(self).__name__} mixed the batch but its attention hooks did not all run during training_step, "
                "so the targets kept the mixer's lam. Check that training_step calls the model on batch[input_key] "
                "and that the attention modules are used in that forward pass."
            )
