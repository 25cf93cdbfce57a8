"""SUMixSmallCNN: the SmallCNN demo trained with SUMix's step (SUMixMixin), buildable by LightningCLI."""

from __future__ import annotations

from lightning_mix.demos.models import SmallCNN
from lightning_mix.mixing import BatchMixer, RandomChoice
from lightning_mix.mixins.sumix import SUMixMixin

__all__ = ["SUMixSmallCNN"]


class SUMixSmallCNN(SUMixMixin, SmallCNN):
    """:class:`SmallCNN` whose training step is SUMix's (:class:`~lightning_mix.mixins.SUMixMixin`).

    It adds ``forward_features`` (the pooled output of ``block3``, 4 * width wide) and
    ``forward_head`` (the linear head), which SUMix needs, and the uncertainty head. The SUMix
    options are the mixin's with the authors' defaults (CutMix with alpha 0.2 and a random
    partner, gamma 0.1); evaluation, logging and the optimiser are SmallCNN's. Use it from
    LightningCLI as ``model: class_path: lightning_mix.demos.SUMixSmallCNN`` (examples/mnist5k_sumix.yaml),
    with no mixing callback (SUMix mixes its own batches). The ``mixer`` is not saved in
    ``hparams`` (it is an object; resuming a fit reloads hyperparameters as plain values only), so
    :meth:`load_from_checkpoint` builds the default mixer unless you pass one; evaluation never uses it.
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
        mixer: BatchMixer | RandomChoice | None = None,
        gamma: float = 0.1,
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
        # the mixer object stays out of the checkpoint's hyperparameters, which Lightning loads with
        # weights_only=True when fit resumes (plain values only); LightningCLI's config.yaml records it
        self.save_hyperparameters(ignore=["mixer"])
        self.configure_sumix(num_classes=num_classes, feature_dim=4 * width, mixer=mixer, gamma=gamma, seed=mix_seed)

    training_step = SUMixMixin.training_step
