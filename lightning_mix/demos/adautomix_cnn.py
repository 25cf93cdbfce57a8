"""AdAutoMixSmallCNN: the demo CNN trained with AdAutoMix's step (AdAutoMixMixin), buildable by LightningCLI."""

from __future__ import annotations

import torch

from lightning_mix.demos.models import SmallCNN
from lightning_mix.mixins.adautomix import AdAutoMixMixin

__all__ = ["AdAutoMixSmallCNN"]


class AdAutoMixSmallCNN(AdAutoMixMixin, SmallCNN):
    """:class:`SmallCNN` whose training step is AdAutoMix's (:class:`~lightning_mix.mixins.AdAutoMixMixin`).

    The generator reads ``block2`` (2 * width channels, 7x7 on 28x28 MNIST). Two AdamW optimisers:
    the classifier's with SmallCNN's ``lr`` and ``weight_decay`` (and its per-epoch cosine schedule),
    the generator's with ``generator_lr`` (None: ``lr``) and the same weight decay, so by default both
    take the steps one optimiser over all parameters would, as in the authors' single-optimiser
    runs. The AdAutoMix options are the mixin's with the authors' defaults. Use it from LightningCLI
    as ``model: class_path: lightning_mix.demos.AdAutoMixSmallCNN`` (examples/mnist5k_adautomix.yaml),
    with no mixing callback (AdAutoMix mixes its own batches). Gradient accumulation is its own
    ``accumulate_grad_batches`` (Lightning refuses the Trainer's under manual optimisation).
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
        generator_lr: float | None = None,
        mix_samples: int = 3,
        alpha: float = 1.0,
        momentum: float = 0.999,
        end_momentum: float = 0.999999,
        lam_margin: float = 0.03,
        mixup_ratio: float = 0.5,
        beta: float = 0.3,
        upsample_mode: str = "bilinear",
        accumulate_grad_batches: int = 1,
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
        if generator_lr is not None and not generator_lr > 0:
            raise ValueError(f"generator_lr must be positive (or None for lr), got {generator_lr}.")
        self.generator_lr = generator_lr
        self.configure_adautomix(
            feature_layer="block2",
            feature_channels=2 * width,
            mix_samples=mix_samples,
            alpha=alpha,
            momentum=momentum,
            end_momentum=end_momentum,
            lam_margin=lam_margin,
            mixup_ratio=mixup_ratio,
            beta=beta,
            upsample_mode=upsample_mode,
            accumulate_grad_batches=accumulate_grad_batches,
            seed=mix_seed,
        )

    def configure_optimizers(self):
        generator = list(self.adautomix_generator.parameters())
        owned = {id(p) for p in generator}
        classifier = [p for p in self.parameters() if id(p) not in owned]
        decay = self.hparams.weight_decay
        classifier_opt = torch.optim.AdamW(classifier, lr=self.hparams.lr, weight_decay=decay)
        generator_lr = self.generator_lr if self.generator_lr is not None else self.hparams.lr
        generator_opt = torch.optim.AdamW(generator, lr=generator_lr, weight_decay=decay)
        if not self.hparams.cosine_schedule or self.trainer is None or not self.trainer.max_epochs:
            return [classifier_opt, generator_opt]
        epochs = max(1, self.trainer.max_epochs)
        schedulers = [
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) for opt in (classifier_opt, generator_opt)
        ]
        return [classifier_opt, generator_opt], schedulers
