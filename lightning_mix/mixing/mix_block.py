"""AutoMix's Mix Block (torch only): a per-pixel mixing mask from two samples' feature maps.

Follows ``PixelMixBlock`` of Westlake-AI/openmixup (``openmixup/models/heads/pmix_block.py``) in the
configuration of its CIFAR AutoMix runs (``configs/classification/cifar100/automix/basic/
r18_l2_a2_near_L1_01_mlr5e_2.py``): embedded-Gaussian cross-attention with a shared 1x1 query/key
convolution (``reduction=2``, scaled by ``1/sqrt(C/r)``), a 1x1 value convolution to one channel
read from the *partner's* features (``mask_mode="none_v_"``), nearest upsampling, sigmoid, and the
L1 mask regulariser with margin 0.1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PixelMixBlock", "automix_mask_loss", "automix_momentum", "mix_with_mask"]

UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")
LAM_EMBEDDINGS = ("none", "concat")


class PixelMixBlock(nn.Module):
    """Cross-attention between a sample's and its partner's feature maps, giving the partner's pixel share.

    ``forward(features, index, lam, size)`` takes the feature maps ``z`` (N, C, h, w) of the batch,
    the partners ``index`` (N,) and the mixing ratios ``lam`` (N,) (the share of each sample
    itself), and returns ``m`` (N, 1, H, W) in [0, 1], the share of the partner at each input pixel
    (``size = (H, W)``)::

        q = W_q z,  k = W_q z[index],  v = W_v z[index]                 (1x1 convolutions)
        P = softmax(q^T k / sqrt(C/r))                                   (N, hw, hw), rows sum to 1
        m = sigmoid(upsample(P v))

    The mixed image is ``x * (1 - m) + x[index] * m`` (:func:`mix_with_mask`). The attention and the
    mask are computed in float32 with autocast off (as the authors force fp32), whatever the
    block's own dtype. With ``lam_embedding="concat"`` a constant channel ``lam`` is appended to
    ``z`` and ``1 - lam`` to ``z[index]`` (the authors' ``lam_concat`` option); the default
    ``"none"`` is their CIFAR setting, where only :func:`automix_mask_loss` ties the mask to lam.
    Weights start as N(0, 0.01), biases 0 (the authors' ``init_weights``).

    Args:
        in_channels: channels C of the feature map.
        reduction: r, the query/key width is ``max(C // r, 1)`` (authors: 2).
        upsample_mode: ``"nearest"`` (authors' CIFAR setting), ``"bilinear"`` or ``"bicubic"``.
        lam_embedding: ``"none"`` (authors' CIFAR setting) or ``"concat"``.
    """

    def __init__(
        self, in_channels: int, reduction: int = 2, upsample_mode: str = "nearest", lam_embedding: str = "none"
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        if reduction < 1:
            raise ValueError(f"reduction must be at least 1, got {reduction}.")
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}.")
        if lam_embedding not in LAM_EMBEDDINGS:
            raise ValueError(f"lam_embedding must be one of {LAM_EMBEDDINGS}, got {lam_embedding!r}.")
        self.in_channels = int(in_channels)
        self.inter_channels = max(in_channels // reduction, 1)
        self.upsample_mode = upsample_mode
        self.lam_embedding = lam_embedding
        width = in_channels + (1 if lam_embedding == "concat" else 0)
        self.query = nn.Conv2d(width, self.inter_channels, kernel_size=1)
        self.value = nn.Conv2d(width, 1, kernel_size=1)
        for conv in (self.query, self.value):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(
        self, features: torch.Tensor, index: torch.Tensor, lam: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"PixelMixBlock expects feature maps of shape (N, {self.in_channels}, h, w), "
                f"got {tuple(features.shape)}; "
                "check the feature layer and feature_channels."
            )
        n, _, h, w = features.shape
        with torch.autocast(device_type=features.device.type, enabled=False):
            own = features.float()
            partner = own.index_select(0, index)
            if self.lam_embedding == "concat":
                lam_map = lam.float().view(n, 1, 1, 1).expand(n, 1, h, w)
                own = torch.cat([own, lam_map], dim=1)
                partner = torch.cat([partner, 1 - lam_map], dim=1)
            wq, bq = self.query.weight.float(), self.query.bias.float()  # float32 even in a half-precision model
            wv, bv = self.value.weight.float(), self.value.bias.float()
            q = F.conv2d(own, wq, bq).flatten(2).transpose(1, 2)  # (n, hw, c)
            k = F.conv2d(partner, wq, bq).flatten(2)  # (n, c, hw)
            v = F.conv2d(partner, wv, bv).flatten(2).transpose(1, 2)  # (n, hw, 1)
            attention = torch.softmax(torch.bmm(q, k) / math.sqrt(self.inter_channels), dim=-1)
            logits = torch.bmm(attention, v).view(n, 1, h, w)
            logits = F.interpolate(logits, size=tuple(size), mode=self.upsample_mode)
            return torch.sigmoid(logits)


def mix_with_mask(inputs: torch.Tensor, index: torch.Tensor, partner_share: torch.Tensor) -> torch.Tensor:
    """``x * (1 - m) + x[index] * m`` with ``m`` (N, 1, H, W) broadcast over channels, in ``x``'s dtype."""
    weight = partner_share.to(inputs.dtype)
    return torch.lerp(inputs, inputs.index_select(0, index), weight)


def automix_mask_loss(partner_share: torch.Tensor, lam: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """The authors' ``"L1"`` mask regulariser: ``max(|1 - mean(m) - lam| - margin, 0)``.

    ``mean(m)`` is the partner's share averaged over the whole batch and all pixels, and ``lam``
    the batch's ratio (the mean of ``lam``; the authors draw one lam per batch), so the mask's
    mean own share ``1 - mean(m)`` is pulled to within ``margin`` of lam.
    """
    gap = (1 - partner_share.float().mean() - lam.float().mean()).abs()
    return torch.clamp(gap - margin, min=0.0)


def automix_momentum(
    step: int, total_steps: int, base: float = 0.999, end: float = 0.999999, start: float = 0.1
) -> float:
    """Momentum of the encoder copy after optimiser step ``step`` (0-based) of ``total_steps``.

    The authors' ``CosineScheduleHook(end_momentum=0.999999, adjust_scope=[0.1, 1.0],
    warming_up="constant")``: ``base`` for the first ``start`` fraction of training, then
    ``end - (end - base) * (cos(pi * step / total_steps) + 1) / 2``.
    """
    total = max(int(total_steps), 1)
    if step < int(total * start):
        return float(base)
    return float(end - (end - base) * (math.cos(math.pi * min(step, total) / total) + 1) / 2)
