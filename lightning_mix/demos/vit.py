"""TinyViT: a small vision transformer with a class token for the MNIST5k demos (the ViT mixing methods)."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.demos.models import SmallCNN

__all__ = ["TinyViT", "ViTAttention", "ViTBlock", "patch_embedding", "warmup_cosine_factor"]

_STEMS = ("patch", "conv")


def patch_embedding(in_channels: int, dim: int, patch_size: int, stem: str, stem_channels: int) -> nn.Module:
    """The module that turns images (B, C, H, W) into a (B, dim, H / patch_size, W / patch_size) token grid.

    ``stem="patch"``: ViT's linear patch embedding, one convolution with kernel and stride ``patch_size``.
    ``stem="conv"``: a small convolutional stem first (two 3x3 convolutions, stride 1, ``stem_channels``
    channels, each followed by BatchNorm and GELU), then the same ``patch_size`` patchify convolution.
    The token grid is the patch grid either way (token ``(i, j)`` is the pixel patch ``(i, j)``; with
    the conv stem it also sees a 2-pixel border of its neighbours), so patch-level masks and the ViT
    mixing methods keep their meaning.
    """
    if stem not in _STEMS:
        raise ValueError(f"stem must be one of {_STEMS}, got {stem!r}.")
    if stem == "patch":
        return nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
    if stem_channels < 1:
        raise ValueError(f"stem_channels must be a positive number of channels, got {stem_channels}.")
    layers: list[nn.Module] = []
    width = in_channels
    for _ in range(2):
        layers += [
            nn.Conv2d(width, stem_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.GELU(),
        ]
        width = stem_channels
    layers.append(nn.Conv2d(width, dim, kernel_size=patch_size, stride=patch_size))
    return nn.Sequential(*layers)


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor at optimiser step ``step``: linear warmup from ``1 / (warmup_steps + 1)`` to 1 over
    ``warmup_steps`` steps, then a cosine decay to 0 at ``total_steps`` (DeiT's schedule, per step).
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class ViTAttention(nn.Module):
    """Multi-head self-attention laid out as timm's ``Attention``: one ``qkv`` linear, ``num_heads``, ``scale``.

    ``fused_attn=True`` (default) calls ``F.scaled_dot_product_attention`` (weights never
    materialised); ``False`` computes ``softmax(q k^T * scale)`` explicitly and passes it through
    ``attn_drop`` (the non-fused reference the attention-capture tests compare against).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = True
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attention = self.attn_drop((q * self.scale @ k.transpose(-2, -1)).softmax(dim=-1))
            x = attention @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ViTAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(pl.LightningModule):
    """A small ViT for 28x28 images: patch embedding, a class token, learned positions, pre-norm blocks.

    With the defaults (patch 4 -> 7x7 = 49 patches + 1 class token, dim 64, depth 4, 4 heads) it
    has about 140k parameters. Blocks are ``blocks.0`` ... ``blocks.{depth-1}``, their attention
    ``blocks.i.attn`` (timm's layout, so the ViT mixing callbacks find them); the head reads the
    class token after a final LayerNorm. ``stem`` picks the patch embedding (:func:`patch_embedding`:
    ``"patch"``, ViT's linear one, or ``"conv"``, a small convolutional stem before it); the token
    grid is the ``patch_size`` grid either way.

    Training, evaluation and logging are :class:`SmallCNN`'s: soft cross-entropy (class indices or
    the dense mixed targets of a mixing callback) or the module given as ``loss``; ``train/loss``,
    ``train/acc``, ``val/acc``, ``val/nll``, ``test/acc``, ``test/nll``; ``validation_step`` and
    ``test_step`` return ``{"logits", "loss"}``. The optimiser is AdamW with DeiT's decay rule (no
    weight decay on biases, norms, the class token and the positions); with ``cosine_schedule``, a
    per-step linear warmup over ``warmup_epochs`` epochs, then a cosine decay to 0
    (:func:`warmup_cosine_factor`).
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
        loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size ({patch_size}) must divide image_size ({image_size}).")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0 (0: no warmup), got {warmup_epochs}.")
        self.save_hyperparameters(ignore=["loss"])
        self.loss = loss
        self.patch_size = patch_size
        self.num_prefix_tokens = 1
        grid = image_size // patch_size
        self.patch_embed = patch_embedding(in_channels, dim, patch_size, stem, stem_channels)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])

    training_step = SmallCNN.training_step
    _evaluate = SmallCNN._evaluate
    validation_step = SmallCNN.validation_step
    test_step = SmallCNN.test_step
    predict_step = SmallCNN.predict_step

    def configure_optimizers(self):
        """AdamW without weight decay on biases, norms, the class token and the positions (DeiT's rule);
        with ``cosine_schedule``, a per-step linear warmup over ``warmup_epochs`` then a cosine decay to 0.
        """
        no_decay = [p for n, p in self.named_parameters() if p.ndim <= 1 or n in ("cls_token", "pos_embed")]
        decay = [p for n, p in self.named_parameters() if not (p.ndim <= 1 or n in ("cls_token", "pos_embed"))]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        if not self.hparams.cosine_schedule or self.trainer is None or not self.trainer.max_epochs:
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches  # loads the train loader when max_epochs is set
        if not math.isfinite(total_steps):  # infinite training: no schedule to follow
            return optimizer
        total_steps = max(1, int(total_steps))
        warmup_steps = 0
        if self.hparams.warmup_epochs:
            batches = self.trainer.num_training_batches
            if not math.isfinite(batches) or self.trainer.max_epochs == -1:
                raise ValueError(
                    f"warmup_epochs={self.hparams.warmup_epochs} needs the number of batches in an epoch, which "
                    "this Trainer does not know (a max_steps-only fit or an unsized train loader): set "
                    "Trainer(max_epochs=...) with a sized loader, or warmup_epochs=0."
                )
            steps_per_epoch = max(1, math.ceil(batches / self.trainer.accumulate_grad_batches))
            warmup_steps = min(self.hparams.warmup_epochs * steps_per_epoch, total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
