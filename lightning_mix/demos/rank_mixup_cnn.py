"""RankMixupSmallCNN: the SmallCNN demo trained with RankMixup's step (RankMixupMixin), buildable by LightningCLI."""

from __future__ import annotations

from lightning_mix.demos.models import SmallCNN
from lightning_mix.mixins.rank_mixup import RankMixupMixin

__all__ = ["RankMixupSmallCNN"]


class RankMixupSmallCNN(RankMixupMixin, SmallCNN):
    """:class:`SmallCNN` whose training step is RankMixup's (:class:`~lightning_mix.mixins.RankMixupMixin`).

    The options are the mixin's with the authors' CIFAR defaults: ``rank_loss="mrl"`` (mixup
    ranking loss, K = 1 mixed copy) or ``"mndcg"`` (mixup NDCG loss, K = 3), weight 0.1, margin 2,
    alpha 2; ``copies`` None takes K from the loss. (``rank_loss`` is the mixin's ``loss``, renamed
    because SmallCNN's ``loss`` is the training loss module; the clean batch's loss here is
    always cross-entropy, as in the authors' code.) Evaluation, logging and the optimiser are SmallCNN's.
    Use it from LightningCLI as ``model: class_path: lightning_mix.demos.RankMixupSmallCNN``
    (examples/mnist5k_rankmixup.yaml; add examples/rankmixup_mndcg.yaml for M-NDCG), with no
    mixing callback (RankMixup mixes its own copies of the clean batch; a mixing callback is
    refused at setup).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
        cosine_schedule: bool = True,
        kernel_size: int = 5,
        rank_loss: str = "mrl",
        weight: float = 0.1,
        margin: float = 2.0,
        alpha: float = 2.0,
        copies: int | None = None,
        mix_seed: int | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            width=width,
            lr=lr,
            weight_decay=weight_decay,
            cosine_schedule=cosine_schedule,
            kernel_size=kernel_size,
        )
        self.save_hyperparameters()
        self.configure_rank_mixup(
            loss=rank_loss, weight=weight, margin=margin, alpha=alpha, copies=copies, seed=mix_seed
        )

    training_step = RankMixupMixin.training_step
