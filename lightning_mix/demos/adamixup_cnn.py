"""AdaMixUpSmallCNN: the SmallCNN demo trained with AdaMixUp's step (AdaMixUpMixin), buildable by LightningCLI."""

from __future__ import annotations

from torch import nn

from lightning_mix.demos.models import SmallCNN, _conv_trunk
from lightning_mix.mixins.adamixup import AdaMixUpMixin

__all__ = ["AdaMixUpSmallCNN"]


class AdaMixUpSmallCNN(AdaMixUpMixin, SmallCNN):
    """:class:`SmallCNN` whose training step is AdaMixUp's (:class:`~lightning_mix.mixins.AdaMixUpMixin`).

    It adds ``forward_features`` (the pooled output of ``block3``, (B, 4 * width)) and ``forward_head``
    (the linear head), and gives the policy region generator its own trunk of SmallCNN's architecture
    (three conv blocks and global pooling, fresh weights), as the authors give theirs a second copy of
    the classifier's network. The AdaMixUp options are the mixin's with the authors' defaults;
    evaluation, logging of validation and test, and the optimiser (over all parameters) are SmallCNN's.
    Use it from LightningCLI as ``model: class_path: lightning_mix.demos.AdaMixUpSmallCNN``
    (examples/mnist5k_adamixup.yaml), with no mixing callback (AdaMixUp mixes its own batches).
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
        policy_hidden: int = 100,
        discriminator_hidden: int = 10,
        intrusion_weight: float = 1.0,
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
        policy_trunk = nn.Sequential(
            *_conv_trunk(in_channels, width, kernel_size),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.configure_adamixup(
            feature_dim=4 * width,
            policy_trunk=policy_trunk,
            policy_hidden=policy_hidden,
            discriminator_hidden=discriminator_hidden,
            intrusion_weight=intrusion_weight,
            seed=mix_seed,
        )

    training_step = AdaMixUpMixin.training_step
