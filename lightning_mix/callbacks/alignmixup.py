"""AlignMixup callback: each step mixes either the inputs or the Sinkhorn-aligned feature maps of a named layer."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks._hidden_hook import HiddenMixingBase
from lightning_mix.callbacks.manifold_mixup import mix_hidden
from lightning_mix.mixing import make_pairing, mix_targets, sample_beta
from lightning_mix.mixing.alignment import align_and_mix

_CHOICE_SALT = 1


class AlignMixup(HiddenMixingBase):
    """AlignMixup (Venkataramanan et al., CVPR 2022) with the authors' defaults (shashankvkt/AlignMixup_CVPR22).

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import AlignMixup
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        align = AlignMixup(layer="block3", num_classes=10)   # the last feature map of SmallCNN
        Trainer(max_epochs=10, callbacks=[align]).fit(SmallCNN(), MNIST5kDataModule())

    Each training batch, in ``on_train_batch_start``: partners by a random permutation, one
    ``lam ~ Beta(alpha, alpha)`` for the batch, targets made dense and mixed with ``lam``; then, with
    probability ``input_prob`` (authors: one half), the inputs are mixed as in Mixup; otherwise a
    one-shot forward hook on ``layer`` (a module returning feature maps ``(B, C, *spatial)``; the
    authors use the last residual stage) replaces its output by the aligned mix of
    :func:`~lightning_mix.mixing.alignment.align_and_mix`, in a direction drawn uniformly (the
    authors' ``align_mix``). The hook mixes only the first training-mode forward through the layer
    and is removed by its handle at the end of the batch, on validation, on an exception and at
    teardown. The draws are exposed as :attr:`last_index`, :attr:`last_lam`, :attr:`last_choice`
    (``"input"``, or ``0``/``1`` for the alignment direction).

    Args:
        layer: dotted module name from ``model.named_modules()``.
        alpha: Beta concentration (authors: 2.0).
        eps: Sinkhorn entropic regularisation (0.1).
        max_iter: Sinkhorn iterations at most (100).
        threshold: Sinkhorn stopping threshold (0.1, one host read per iteration); None runs
            ``max_iter`` iterations without a host read.
        input_prob: probability of mixing the inputs instead of the aligned features (0.5).
        num_classes, label_smoothing, input_key, target_key, seed: as :class:`MixingCallback`.
    """

    def __init__(
        self,
        layer: str,
        alpha: float = 2.0,
        eps: float = 0.1,
        max_iter: int = 100,
        threshold: float | None = 0.1,
        input_prob: float = 0.5,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__(num_classes, label_smoothing, input_key, target_key, seed)
        if not alpha > 0:
            raise ValueError(f"AlignMixup: alpha must be positive, got {alpha}.")
        if not eps > 0 or max_iter < 1:
            raise ValueError(f"AlignMixup: eps must be positive and max_iter at least 1, got {eps} and {max_iter}.")
        if not 0.0 <= input_prob <= 1.0:
            raise ValueError(f"AlignMixup: input_prob is a probability in [0, 1], got {input_prob}.")
        self.layer = layer
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.max_iter = int(max_iter)
        self.threshold = threshold
        self.input_prob = float(input_prob)
        self.last_index: torch.Tensor | None = None
        self.last_lam: torch.Tensor | None = None
        self.last_choice: Any = None
        self._module: nn.Module | None = None
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layer=self.layer, input_key=self.input_key)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        named = {name: module for name, module in pl_module.named_modules() if name}
        if self.layer not in named:
            raise ValueError(
                f"AlignMixup: no module named {self.layer!r} in {type(pl_module).__name__}. "
                f"Valid layer names are {list(named)}."
            )
        self._module = named[self.layer]
        super().on_fit_start(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._remove_hook()
        inputs, targets = self.read_batch(batch)
        b, device = inputs.shape[0], inputs.device
        choices = torch.rand(2, generator=self.generator(torch.device("cpu"), _CHOICE_SALT))
        generator = self.generator(device)
        index = make_pairing(b, "random", generator=generator, device=device)
        lam = sample_beta(self.alpha, self.alpha, 1, generator, device).expand(b)
        self.advance()
        self.last_index, self.last_lam = index, lam
        set_entry(batch, self.target_key, mix_targets(targets, index, lam))
        if float(choices[0]) < self.input_prob:
            self.last_choice = "input"
            set_entry(batch, self.input_key, mix_hidden(inputs, index, lam))
        else:
            direction = int(float(choices[1]) >= 0.5)
            self.last_choice = direction
            self._handle = self._module.register_forward_hook(self._make_hook(index, lam, direction))

    def _make_hook(self, index: torch.Tensor, lam: torch.Tensor, direction: int):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not module.training:
                return None
            if not torch.is_tensor(output) or output.dim() < 3 or output.shape[0] != index.shape[0]:
                shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
                raise RuntimeError(
                    f"AlignMixup: layer {self.layer!r} must return feature maps (B, C, *spatial) with the batch first "
                    f"(B = {index.shape[0]}), got {shape}; choose a convolutional stage."
                )
            self._remove_hook()
            return align_and_mix(output, index, lam, direction, self.eps, self.max_iter, self.threshold)

        return hook


__all__ = ["AlignMixup"]
