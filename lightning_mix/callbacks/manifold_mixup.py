"""ManifoldMixup: mixes the hidden states of a randomly chosen layer through a one-shot forward hook."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_mix.callbacks._batch_access import BatchKey, set_entry
from lightning_mix.callbacks._hidden_hook import HiddenMixingBase
from lightning_mix.mixing import Mixup, mix_targets

__all__ = ["ManifoldMixup", "mix_hidden"]

INPUT = "input"
_LAYER_SALT = 1


def mix_hidden(hidden: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam[i] * h[i] + (1 - lam[i]) * h[index[i]]`` over the first (batch) dimension, in ``h``'s dtype."""
    weight = lam.to(device=hidden.device, dtype=hidden.dtype).view(-1, *([1] * (hidden.dim() - 1)))
    return torch.lerp(hidden.index_select(0, index.to(hidden.device)), hidden, weight)


class ManifoldMixup(HiddenMixingBase):
    """Manifold Mixup (Verma et al. 2019): mix hidden states at a layer drawn at random each step.

    Example::

        from lightning.pytorch import Trainer
        from lightning_mix.callbacks import ManifoldMixup
        from lightning_mix.demos import MNIST5kDataModule, SmallCNN

        model = SmallCNN()      # a training_step that accepts dense targets (soft_cross_entropy)
        mixup = ManifoldMixup(layers=["input", "block1", "block2"], alpha=2.0, num_classes=10)
        Trainer(max_epochs=10, callbacks=[mixup]).fit(model, MNIST5kDataModule())

    Each training batch, in ``on_train_batch_start``:

    * one name is drawn uniformly from ``layers`` (dotted names from ``model.named_modules()``,
      plus ``"input"`` for the inputs themselves), a partner ``index`` from ``pairing`` and ``lam``
      from Beta(alpha, alpha);
    * the targets are made dense (class indices with ``num_classes`` and ``label_smoothing``) and
      mixed in place: ``t = lam * t + (1 - lam) * t[index]``;
    * for ``"input"`` the inputs are mixed in place; for a module, a forward hook replaces that
      module's output ``h`` with ``lam * h + (1 - lam) * h[index]`` in the *first* training-mode
      forward through it, then removes itself. A forward that never reaches the layer leaves the
      hook to be removed at ``on_train_batch_end``. Validation, test and predict forwards, and
      any forward with the module in eval mode, are never mixed.

    The module must return a tensor whose first dimension is the batch. The training step must
    use a loss that takes dense targets (e.g. :func:`lightning_mix.losses.soft_cross_entropy`).
    The draw of the current step is exposed as :attr:`last_layer`, :attr:`last_index` and
    :attr:`last_lam` (for pair-aware losses such as :func:`~lightning_mix.losses.decoupled_mixup_loss`).

    The batch must be a list or a dict (``default_collate`` makes one); tuples cannot be changed
    in place and raise an error. Randomness follows ``MixingCallback``: a stream seeded by
    ``seed`` (or ``torch.initial_seed()``), the global rank and a batch counter, saved in the
    checkpoint, so DDP ranks draw differently and a resumed run continues the same sequence.

    Args:
        layers: candidate layers; ``"input"`` and module names such as ``"block1"`` or ``"encoder.layer.3"``.
            The authors mix at {input, block1, block2} of a ResNet.
        alpha: Beta(alpha, alpha) concentration of lam (authors: 2.0).
        num_classes: needed for class-index targets; None reads the module's or datamodule's ``num_classes``.
        label_smoothing: smoothing applied when class indices are made dense.
        mode: ``"batch"`` (one lam per step, as the authors), ``"elem"`` (one per sample) or
            ``"pair"`` (one per pair, with ``pairing="random"`` or ``"flip"``).
        pairing: partner rule of :class:`~lightning_mix.mixing.Mixup`: ``"random"`` (a permutation),
            ``"flip"``, ``"roll"``, or by class ``"different_class"``/``"same_class"``.
        input_key: index or key of the inputs in the batch.
        target_key: index or key of the targets in the batch.
        seed: seed of the mixing stream; None takes ``torch.initial_seed()``.
        stop_epoch: no mixing from this epoch on (targets are still made dense); None mixes throughout.
        regression: the targets are regression values (float, (B,) or (B, d)), mixed as they are.
    """

    def __init__(
        self,
        layers: list[str] = ["input"],  # noqa: B006  (jsonargparse shows the default; never mutated)
        alpha: float = 2.0,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        mode: str = "batch",
        pairing: str = "random",
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        seed: int | None = None,
        stop_epoch: int | None = None,
        regression: bool = False,
    ) -> None:
        super().__init__(num_classes, label_smoothing, input_key, target_key, seed, stop_epoch, regression)
        if isinstance(layers, str):
            layers = [layers]
        if not layers:
            raise ValueError('layers must name at least one layer, e.g. ["input", "block1"].')
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}.")
        self._mixup = Mixup(alpha=alpha, mode=mode, pairing=pairing)  # validates; draws (index, lam)
        self.layers = list(layers)
        self.alpha = alpha
        self.mode = mode
        self.pairing = pairing
        self.last_layer: str | None = None
        self.last_index: torch.Tensor | None = None
        self.last_lam: torch.Tensor | None = None
        self._modules: dict[str, nn.Module | None] = {}
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(layers=tuple(self.layers), input_key=self.input_key)

    # -- setup ---------------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        named = {name: module for name, module in pl_module.named_modules() if name}
        missing = [name for name in self.layers if name != INPUT and name not in named]
        if missing:
            raise ValueError(
                f"ManifoldMixup: no module named {missing} in {type(pl_module).__name__}. "
                f"Valid layer names are {[INPUT, *named]}."
            )
        self._modules = {name: (None if name == INPUT else named[name]) for name in self.layers}
        super().on_fit_start(trainer, pl_module)

    # -- per batch -----------------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._remove_hook()
        inputs, targets = self.read_batch(batch)
        if not self.mixing_active(trainer):
            self.last_layer, self.last_index, self.last_lam = None, None, None
            set_entry(batch, self.target_key, targets)
            return
        choice = torch.randint(len(self.layers), (), generator=self.generator(torch.device("cpu"), _LAYER_SALT))
        layer = self.layers[int(choice)]
        batch_size = inputs.shape[0]
        index, lam = self._mixup.draw(batch_size, self.generator(inputs.device), inputs.device, labels=targets)
        self.advance()
        self.last_layer, self.last_index, self.last_lam = layer, index, lam
        set_entry(batch, self.target_key, mix_targets(targets, index, lam))
        if layer == INPUT:
            set_entry(batch, self.input_key, mix_hidden(inputs, index, lam))
        else:
            self._handle = self._modules[layer].register_forward_hook(self._make_hook(layer, index, lam))

    def _make_hook(self, layer: str, index: torch.Tensor, lam: torch.Tensor):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not module.training:  # an eval-mode forward inside the step: leave it alone
                return None
            if not torch.is_tensor(output):
                raise TypeError(
                    f"ManifoldMixup: layer {layer!r} returned {type(output).__name__}, not a tensor; "
                    "choose a layer whose output is one tensor with the batch first."
                )
            if output.shape[0] != index.shape[0]:
                raise RuntimeError(
                    f"ManifoldMixup: layer {layer!r} output has {output.shape[0]} rows in its first dimension "
                    f"but the batch has {index.shape[0]} samples; choose a layer whose output is batch-first."
                )
            self._remove_hook()  # one shot: only the first training forward of this step is mixed
            return mix_hidden(output, index, lam)

        return hook
