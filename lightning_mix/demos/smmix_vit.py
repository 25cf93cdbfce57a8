"""SMMixTinyViT: the TinyViT demo trained with SMMix's step (SMMixMixin), buildable by LightningCLI."""

from __future__ import annotations

import torch

from lightning_mix.demos.vit import TinyViT
from lightning_mix.mixins.smmix import SMMixMixin

__all__ = ["SMMixTinyViT"]


class SMMixTinyViT(SMMixMixin, TinyViT):
    """:class:`TinyViT` whose training step is SMMix's (:class:`~lightning_mix.mixins.SMMixMixin`).

    It adds ``forward_features`` (tokens after the final norm) and ``forward_head`` (class-token
    logits), which SMMix needs, and a token head. The SMMix options are the mixin's with the
    authors' defaults; evaluation, logging and the optimiser are TinyViT's. Use it from
    LightningCLI as ``model: class_path: lightning_mix.demos.SMMixTinyViT`` (examples/mnist5k_smmix_vit.yaml),
    with no mixing callback (SMMix mixes its own batches).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        lr: float = 2e-3,
        weight_decay: float = 5e-2,
        cosine_schedule: bool = True,
        stem: str = "patch",
        stem_channels: int = 32,
        warmup_epochs: int = 0,
        switch_prob: float = 0.5,
        alpha: float = 0.8,
        min_side_ratio: float = 0.25,
        max_side_ratio: float = 0.75,
        label_smoothing: float = 0.1,
        fine_weight: float = 1.0,
        consistency_weight: float = 1.0,
        mix_seed: int | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            image_size=image_size,
            patch_size=patch_size,
            dim=dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            lr=lr,
            weight_decay=weight_decay,
            cosine_schedule=cosine_schedule,
            stem=stem,
            stem_channels=stem_channels,
            warmup_epochs=warmup_epochs,
        )
        self.configure_smmix(
            num_classes=num_classes,
            embed_dim=dim,
            switch_prob=switch_prob,
            alpha=alpha,
            min_side_ratio=min_side_ratio,
            max_side_ratio=max_side_ratio,
            label_smoothing=label_smoothing,
            fine_weight=fine_weight,
            consistency_weight=consistency_weight,
            seed=mix_seed,
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the final LayerNorm, (B, 1 + P, dim)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.norm(self.blocks(tokens))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits from the class token of ``forward_features``' output."""
        return self.head(features[:, 0])

    training_step = SMMixMixin.training_step
