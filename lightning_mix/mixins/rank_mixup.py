"""RankMixupMixin: a training step with CE on clean logits plus a mixup ranking loss (Noh et al. 2023)."""

from __future__ import annotations

from typing import Any

import torch

from lightning_mix.callbacks._batch_access import BatchKey
from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.losses import mixup_ndcg_loss, mixup_ranking_loss, soft_cross_entropy
from lightning_mix.mixing import Mixup
from lightning_mix.mixins._mixin_state import StreamCheckpointMixin, lazy_stream

__all__ = ["RankMixupMixin"]

LOSSES = ("mrl", "mndcg")


class RankMixupMixin(StreamCheckpointMixin):
    """Adds RankMixup's training step to a LightningModule; you supply ``forward`` and the optimiser.

    RankMixup calibrates a classifier by asking mixed samples to be *ranked* below the clean ones
    they come from, instead of fitting mixed labels: the loss is cross-entropy on the clean batch
    only, plus ``weight`` times a ranking loss on K mixed copies of the batch:

    * ``"mrl"`` (:func:`~lightning_mix.losses.mixup_ranking_loss`): each mixed sample's max logit
      must sit ``margin`` below its clean sample's; same-class mixes are masked. K = 1.
    * ``"mndcg"`` (:func:`~lightning_mix.losses.mixup_ndcg_loss`): the max-softmax confidences of
      the clean sample and its K mixes must follow their relevances (1 and ``max(lam, 1 - lam)``),
      scored by NDCG. K = 3.

    Put the mixin *before* LightningModule (or your base module) so its ``training_step`` wins::

        import torch
        from lightning.pytorch import LightningModule, Trainer
        from lightning_mix.mixins import RankMixupMixin

        class Model(RankMixupMixin, LightningModule):
            def __init__(self, loss: str = "mrl", weight: float = 0.1):
                super().__init__()
                self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
                self.configure_rank_mixup(loss=loss, weight=weight)   # optional: defaults are the authors'

            def forward(self, x):
                return self.net(x)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        Trainer(max_epochs=5).fit(Model(), datamodule)

    Each training step (batch ``[inputs, labels]``, labels as class indices or dense targets):
    one forward of the clean batch, one forward of the K mixed copies stacked into a ``K * B``
    batch (``x_k = lam_k x + (1 - lam_k) x[index_k]``, a random permutation and a
    Beta(alpha, alpha) lam per copy and step). BatchNorm therefore sees clean and mixed batches
    separately, as in the authors' code, and its running statistics are updated by the mixed
    batch last; to test on statistics of clean data only, recompute them after training with
    :func:`lightning_mix.averaging.recalibrate_batchnorm` over the clean training loader.
    It logs ``train/loss``, ``train/ce``, ``train/rank_loss`` and ``train/acc`` and returns the
    loss; the last draw is kept in ``rank_mixup_index`` (K, B) and ``rank_mixup_lam`` (K, B).

    Randomness: a stream seeded by ``seed`` (or ``torch.initial_seed()`` at the first step), the
    global rank and a step counter; the seed and counter are saved in the checkpoint
    (``on_save_checkpoint``/``on_load_checkpoint`` call ``super()``, so keep calling ``super()``
    if you override them).
    """

    stream_name = "rank_mixup"  # the draw stream, saved under checkpoint["rank_mixup"]
    #: Tells the mixing callbacks that this module mixes its own batches (they refuse it at setup).
    mixes_own_batches = "mixes its own copies of the clean batch in training_step (RankMixup needs the clean batch)"

    rank_mixup_loss: str = "mrl"
    rank_mixup_weight: float = 0.1
    rank_mixup_margin: float = 2.0
    rank_mixup_alpha: float = 2.0
    rank_mixup_copies: int | None = None
    rank_mixup_mode: str = "batch"
    rank_mixup_seed: int | None = None
    rank_mixup_stop_epoch: int | None = None
    rank_mixup_input_key: BatchKey = 0
    rank_mixup_target_key: BatchKey = 1

    def configure_rank_mixup(
        self,
        loss: str = "mrl",
        weight: float = 0.1,
        margin: float = 2.0,
        alpha: float = 2.0,
        copies: int | None = None,
        mode: str = "batch",
        seed: int | None = None,
        input_key: BatchKey = 0,
        target_key: BatchKey = 1,
        stop_epoch: int | None = None,
    ) -> None:
        """Set RankMixup's options (call it in ``__init__``); the defaults are the authors' CIFAR settings.

        Args:
            loss: ``"mrl"`` (mixup ranking loss) or ``"mndcg"`` (mixup NDCG loss).
            weight: ``w`` in ``CE + w * ranking loss`` (authors: 0.1).
            margin: MRL's margin on max logits (authors: 2 on CIFAR, 1 on Tiny-ImageNet).
            alpha: Beta(alpha, alpha) concentration of lam (authors: 2 on CIFAR).
            copies: K mixed copies per step; None is 1 for MRL and 3 for M-NDCG.
            mode: ``"batch"`` (one lam per copy, as the authors) or ``"elem"`` (one per sample).
            seed: seed of the mixing stream; None takes ``torch.initial_seed()`` at the first step.
            input_key: index or key of the inputs in the batch.
            target_key: index or key of the labels in the batch.
            stop_epoch: from this epoch on the step is plain CE on the clean batch (no mixed
                forward; ``train/rank_loss`` logs 0); None mixes throughout.
        """
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
        if weight < 0:
            raise ValueError(f"weight must be non-negative, got {weight}.")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}.")
        if copies is not None and copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}.")
        if mode not in ("batch", "elem"):
            raise ValueError(f"mode must be 'batch' or 'elem', got {mode!r}.")
        if stop_epoch is not None and stop_epoch < 0:
            raise ValueError(f"stop_epoch must be a non-negative epoch number or None, got {stop_epoch}.")
        self.rank_mixup_loss = loss
        self.rank_mixup_weight = weight
        self.rank_mixup_margin = margin
        self.rank_mixup_alpha = alpha
        self.rank_mixup_copies = copies
        self.rank_mixup_mode = mode
        self.rank_mixup_seed = seed
        self.rank_mixup_input_key = input_key
        self.rank_mixup_target_key = target_key
        self.rank_mixup_stop_epoch = stop_epoch

    # -- the step --------------------------------------------------------------------------------

    @property
    def _rank_mixup_num_copies(self) -> int:
        if self.rank_mixup_copies is not None:
            return self.rank_mixup_copies
        return 1 if self.rank_mixup_loss == "mrl" else 3

    def _rank_mixup_stream(self) -> CounterStream:
        return lazy_stream(self, "rank_mixup", self.rank_mixup_seed)

    def rank_mixup_draw(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Partners (K, B) and lam (K, B) for this step's K mixed copies, from the seeded stream."""
        stream = self._rank_mixup_stream()
        generator = stream.generator(device)
        mixup = Mixup(alpha=self.rank_mixup_alpha, mode=self.rank_mixup_mode, pairing="random")
        # K is 1 to 3: a loop over copies, not over samples
        indices, lams = zip(*(mixup.draw(batch_size, generator, device) for _ in range(self._rank_mixup_num_copies)))
        stream.advance()
        return torch.stack(indices), torch.stack(lams)

    def rank_mixup_losses(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the clean and mixed forwards; return ``loss``, ``ce``, ``rank_loss`` and the clean ``logits``."""
        batch_size = inputs.shape[0]
        logits = self(inputs)
        ce = soft_cross_entropy(logits, labels)
        stopped = self.rank_mixup_stop_epoch is not None and self.current_epoch >= self.rank_mixup_stop_epoch
        if stopped:
            self.rank_mixup_index, self.rank_mixup_lam = None, None
            return {"loss": ce, "ce": ce, "rank_loss": ce.new_zeros(()), "logits": logits}
        index, lam = self.rank_mixup_draw(batch_size, inputs.device)
        self.rank_mixup_index, self.rank_mixup_lam = index, lam
        copies = index.shape[0]
        if self.rank_mixup_weight == 0:
            zero = ce.new_zeros(())
            return {"loss": ce, "ce": ce, "rank_loss": zero, "logits": logits}
        weight = lam.to(inputs.dtype).view(copies, batch_size, *([1] * (inputs.dim() - 1)))
        partners = inputs.index_select(0, index.reshape(-1)).view(copies, *inputs.shape)
        mixed = torch.lerp(partners, inputs.unsqueeze(0), weight)
        mixed_logits = self(mixed.reshape(copies * batch_size, *inputs.shape[1:])).view(copies, batch_size, -1)
        if self.rank_mixup_loss == "mrl":
            rank = mixup_ranking_loss(logits, mixed_logits, index, labels, margin=self.rank_mixup_margin)
        else:
            rank = mixup_ndcg_loss(logits, mixed_logits, lam, index, labels)
        return {"loss": ce + self.rank_mixup_weight * rank, "ce": ce, "rank_loss": rank, "logits": logits}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        # read only (tuples are fine here: the mixin changes the step, not the batch)
        inputs, labels = batch[self.rank_mixup_input_key], batch[self.rank_mixup_target_key]
        out = self.rank_mixup_losses(inputs, labels)
        main_label = labels.argmax(-1) if labels.is_floating_point() else labels
        acc = (out["logits"].argmax(-1) == main_label).float().mean()
        self.log("train/loss", out["loss"], prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/ce", out["ce"], on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/rank_loss", out["rank_loss"], on_step=False, on_epoch=True, sync_dist=True)
        self.log("train/acc", acc, on_step=False, on_epoch=True, sync_dist=True)
        return out["loss"]
