"""AutoMixSmallCNN and SAMixSmallCNN: the demo SmallCNN with AutoMix's or SAMix's step, built by LightningCLI."""

from __future__ import annotations

from lightning_mix.demos.models import SmallCNN
from lightning_mix.mixins.automix import AutoMixMixin, SAMixMixin

__all__ = ["AutoMixSmallCNN", "SAMixSmallCNN"]


def _feature_channels(feature_layer: str, feature_channels: int | None, width: int) -> int:
    """``feature_channels`` or, when None, the channel count of one of SmallCNN's blocks."""
    if feature_channels is not None:
        return feature_channels
    known = {"block1": width, "block2": 2 * width, "block3": 4 * width}
    if feature_layer not in known:
        raise ValueError(
            f"feature_channels is needed for feature_layer {feature_layer!r}; it is inferred only for "
            f"SmallCNN's blocks {sorted(known)}."
        )
    return known[feature_layer]


class AutoMixSmallCNN(AutoMixMixin, SmallCNN):
    """:class:`SmallCNN` whose training step is AutoMix's (:class:`~lightning_mix.mixins.AutoMixMixin`).

    The same module as the documented subclass pattern
    ``class AutoMixCNN(AutoMixMixin, SmallCNN)`` with ``configure_automix(feature_layer="block2",
    feature_channels=2 * width)``, with every option of :class:`SmallCNN` (network, kernel
    size, AdamW optimiser, cosine schedule; not ``loss``, the training step being AutoMix's) and
    of :meth:`~lightning_mix.mixins.AutoMixMixin.configure_automix` (defaults: the authors' CIFAR
    ResNet-18 config) as typed ``__init__`` arguments, so LightningCLI
    builds it from YAML (examples/mnist5k_automix.yaml). ``feature_channels=None`` takes the
    channel count of ``feature_layer`` when it is one of SmallCNN's blocks (``block2``: ``2 * width``).
    The Mix Block reads ``forward`` and batches ``(inputs, labels)``. Evaluation, logging and
    ``predict_step`` (class probabilities) are SmallCNN's. Use it with no mixing callback: AutoMix
    mixes its own batches (a mixing callback refuses the module at setup).
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
        feature_layer: str = "block2",
        feature_channels: int | None = None,
        alpha: float = 2.0,
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        momentum_start: float = 0.1,
        mask_weight: float = 0.1,
        mask_margin: float = 0.1,
        lam_margin: float = 0.08,
        clean_weight: float = 1.0,
        block_weight: float = 1.0,
        reduction: int = 2,
        upsample_mode: str = "nearest",
        lam_embedding: str = "none",
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
        self.configure_automix(
            feature_layer=feature_layer,
            feature_channels=_feature_channels(feature_layer, feature_channels, width),
            alpha=alpha,
            momentum=momentum,
            end_momentum=end_momentum,
            momentum_start=momentum_start,
            mask_weight=mask_weight,
            mask_margin=mask_margin,
            lam_margin=lam_margin,
            clean_weight=clean_weight,
            block_weight=block_weight,
            reduction=reduction,
            upsample_mode=upsample_mode,
            lam_embedding=lam_embedding,
            seed=mix_seed,
        )


class SAMixSmallCNN(SAMixMixin, SmallCNN):
    """:class:`SmallCNN` whose training step is SAMix's (:class:`~lightning_mix.mixins.SAMixMixin`).

    The same module as the documented subclass pattern ``class SAMixCNN(SAMixMixin, SmallCNN)`` with
    ``configure_samix(feature_layer="block2", feature_channels=2 * width)``, with every option of
    :class:`SmallCNN` and of :meth:`~lightning_mix.mixins.SAMixMixin.configure_samix` (defaults:
    the authors' SAMix CIFAR ResNet-18 config) as typed ``__init__`` arguments, so LightningCLI
    builds it from YAML (examples/mnist5k_samix.yaml). ``feature_channels`` and the rest behave as
    in :class:`AutoMixSmallCNN`.
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
        feature_layer: str = "block2",
        feature_channels: int | None = None,
        alpha: float = 2.0,
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        momentum_start: float = 0.1,
        mask_weight: float = 0.1,
        mask_margin: float = 0.1,
        variance_weight: float = 2.0,
        mask_adjust: float = 0.25,
        lam_margin: float = 0.08,
        clean_weight: float = 1.0,
        block_weight: float = 1.0,
        reduction: int = 2,
        value_hidden: int | None = None,
        upsample_mode: str = "bilinear",
        lam_mul_k: float = 0.25,
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
        self.configure_samix(
            feature_layer=feature_layer,
            feature_channels=_feature_channels(feature_layer, feature_channels, width),
            alpha=alpha,
            momentum=momentum,
            end_momentum=end_momentum,
            momentum_start=momentum_start,
            mask_weight=mask_weight,
            mask_margin=mask_margin,
            variance_weight=variance_weight,
            mask_adjust=mask_adjust,
            lam_margin=lam_margin,
            clean_weight=clean_weight,
            block_weight=block_weight,
            reduction=reduction,
            value_hidden=value_hidden,
            upsample_mode=upsample_mode,
            lam_mul_k=lam_mul_k,
            seed=mix_seed,
        )
