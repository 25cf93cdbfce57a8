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

__all__ = [
    "AdaptiveMaskGenerator",
    "PixelMixBlock",
    "SAMixBlock",
    "adjust_mask_to_lam",
    "automix_mask_loss",
    "automix_momentum",
    "mix_with_mask",
    "mix_with_masks",
    "rescale_lam",
]

UPSAMPLE_MODES = ("nearest", "bilinear", "bicubic")
LAM_EMBEDDINGS = ("none", "concat")


def _set_block_options(
    block: nn.Module, in_channels: int, reduction: int, upsample_mode: str, lam_embedding: str
) -> int:
    """Check a mask network's shared options, store them on ``block`` and return its input width
    (the feature channels, plus one when lam is appended as a channel).
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be positive, got {in_channels}.")
    if reduction < 1:
        raise ValueError(f"reduction must be at least 1, got {reduction}.")
    if upsample_mode not in UPSAMPLE_MODES:
        raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}.")
    if lam_embedding not in LAM_EMBEDDINGS:
        raise ValueError(f"lam_embedding must be one of {LAM_EMBEDDINGS}, got {lam_embedding!r}.")
    block.in_channels = int(in_channels)
    block.inter_channels = max(in_channels // reduction, 1)
    block.upsample_mode = upsample_mode
    block.lam_embedding = lam_embedding
    return in_channels + (1 if lam_embedding == "concat" else 0)


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
        width = _set_block_options(self, in_channels, reduction, upsample_mode, lam_embedding)
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


class SAMixBlock(nn.Module):
    """SAMix's Mix Block: :class:`PixelMixBlock` with a lam-aware input and a non-linear value network.

    The configuration of the authors' SAMix CIFAR runs (``configs/classification/cifar100/samix/
    basic/r18/.../r18_l2_a2_bili_val_dp0_mul_x_cat_L1_var_01_mlr5e_2_lam_mul_k0_25_mask_adjust0_25_ep800.py``,
    ``PixelMixBlock`` with ``lam_mul=True, lam_residual=True, lam_mul_k=0.25, x_qk_concat=True``
    and a ``ConvNeck`` value network)::

        r = rescale_lam(lam, k)                          (a smooth, symmetric reshaping of lam)
        a = z * (1 + r),  b = z[index] * (2 - r)         (lam embedded by residual multiplication)
        q = W_q [a, b],  k = W_k [a, b]                  (1x1 convolutions of the concatenation)
        v = conv(ELU(BN(conv(b))))                       (the value network, 1x1 convs without bias)
        m = sigmoid(upsample(softmax(q^T k / sqrt(C/r)) v))

    ``forward(features, index, lam, size)`` returns the partner's share ``m`` (N, 1, H, W) like
    :class:`PixelMixBlock`. The attention runs in float32 with autocast off. Convolutions start as
    N(0, 0.01) with zero biases, BatchNorm as (1, 0) (the authors' ``init_weights``).

    Args:
        in_channels: channels C of the feature map.
        reduction: query/key width ``max(C // reduction, 1)`` (authors: 2).
        value_hidden: hidden width of the value network; None is ``C // 2`` (authors: 128 for C = 256).
        upsample_mode: mask upsampling (authors' SAMix: ``"bilinear"``).
        lam_mul_k: k of :func:`rescale_lam` (authors: 0.25 on CIFAR).
    """

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        value_hidden: int | None = None,
        upsample_mode: str = "bilinear",
        lam_mul_k: float = 0.25,
    ) -> None:
        super().__init__()
        if in_channels < 1 or reduction < 1:
            raise ValueError(f"in_channels and reduction must be positive, got {in_channels} and {reduction}.")
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}.")
        if lam_mul_k < 0:
            raise ValueError(f"lam_mul_k must be non-negative, got {lam_mul_k}.")
        hidden = value_hidden if value_hidden is not None else max(in_channels // 2, 1)
        if hidden < 1:
            raise ValueError(f"value_hidden must be positive, got {value_hidden}.")
        self.in_channels = int(in_channels)
        self.inter_channels = max(in_channels // reduction, 1)
        self.upsample_mode = upsample_mode
        self.lam_mul_k = float(lam_mul_k)
        self.query = nn.Conv2d(2 * in_channels, self.inter_channels, kernel_size=1)
        self.key = nn.Conv2d(2 * in_channels, self.inter_channels, kernel_size=1)
        self.value = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ELU(),
            nn.Conv2d(hidden, 1, kernel_size=1, bias=False),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self, features: torch.Tensor, index: torch.Tensor, lam: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"SAMixBlock expects feature maps of shape (N, {self.in_channels}, h, w), "
                f"got {tuple(features.shape)}; check the feature layer and feature_channels."
            )
        n, _, h, w = features.shape
        with torch.autocast(device_type=features.device.type, enabled=False):
            r = rescale_lam(lam.float(), self.lam_mul_k).view(n, 1, 1, 1)
            own = features.float() * (1 + r)
            partner = features.float().index_select(0, index) * (2 - r)
            value_dtype = self.value[0].weight.dtype
            v = self.value(partner.to(value_dtype)).float().flatten(2).transpose(1, 2)  # (n, hw, 1)
            pair = torch.cat([own, partner], dim=1)
            q = F.conv2d(pair, self.query.weight.float(), self.query.bias.float()).flatten(2).transpose(1, 2)
            k = F.conv2d(pair, self.key.weight.float(), self.key.bias.float()).flatten(2)
            attention = torch.softmax(torch.bmm(q, k) / math.sqrt(self.inter_channels), dim=-1)
            logits = torch.bmm(attention, v).view(n, 1, h, w)
            logits = F.interpolate(logits, size=tuple(size), mode=self.upsample_mode)
            return torch.sigmoid(logits)


def rescale_lam(lam: torch.Tensor, k: float) -> torch.Tensor:
    """The authors' ``rescale_lam_mult``: ``(4/3 lam^3 - 2 lam^2 + (k+1) lam) / (k + 1 - 2/3)``.

    Fixes 0, 1/2 and 1 and is symmetric (``r(1 - lam) = 1 - r(lam)``); a small k flattens it around 1/2.
    """
    kk = k + 1.0
    return (4.0 / 3.0 * lam**3 - 2.0 * lam**2 + kk * lam) / (kk - 2.0 / 3.0)


def adjust_mask_to_lam(partner_share: torch.Tensor, lam: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Rescale each sample's mask so that its own mean share is exactly ``lam`` (the authors' ``mask_adjust``).

    With ``o = clamp(1 - m, eps, 1 - eps)`` and its per-sample mean ``mu``: where ``mu > lam`` the own
    share becomes ``o * lam / mu``; where ``mu < lam`` the partner's share becomes
    ``(1 - o) * (1 - lam) / (1 - mu)``; otherwise the mask is kept. Returns the partner's share.
    """
    n = partner_share.shape[0]
    lam = lam.to(partner_share.dtype).view(n, 1, 1, 1)
    own = (1 - partner_share).clamp(eps, 1 - eps)
    mean = own.mean(dim=(1, 2, 3), keepdim=True)
    shrink_own = 1 - own * (lam / mean)
    shrink_partner = (1 - own) * ((1 - lam) / (1 - mean))
    adjusted = torch.where(mean > lam + eps, shrink_own, partner_share)
    return torch.where(mean < lam - eps, shrink_partner, adjusted)


def mix_with_mask(inputs: torch.Tensor, index: torch.Tensor, partner_share: torch.Tensor) -> torch.Tensor:
    """``x * (1 - m) + x[index] * m`` with ``m`` (N, 1, H, W) broadcast over channels, in ``x``'s dtype."""
    weight = partner_share.to(inputs.dtype)
    return torch.lerp(inputs, inputs.index_select(0, index), weight)


def automix_mask_loss(
    partner_share: torch.Tensor, lam: torch.Tensor, margin: float = 0.1, variance_weight: float = 0.0
) -> torch.Tensor:
    """The authors' mask regulariser: ``max(|1 - mean(m) - lam| - margin, 0) - variance_weight * var(m)``.

    ``mean(m)`` is the partner's share averaged over the whole batch and all pixels, and ``lam``
    the batch's ratio (the mean of ``lam``; the authors draw one lam per batch), so the mask's
    mean own share ``1 - mean(m)`` is pulled to within ``margin`` of lam. ``var(m)`` is the
    variance of the mask's entries around that mean; AutoMix uses ``"L1"`` (``variance_weight=0``),
    SAMix ``"L1+Variance"`` (``variance_weight=2``), which rewards masks that commit to one sample.
    """
    m = partner_share.float()
    m_mean = m.mean()
    loss = torch.clamp((1 - m_mean - lam.float().mean()).abs() - margin, min=0.0)
    if variance_weight:
        loss = loss - variance_weight * (m - m_mean).square().mean()
    return loss


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


class AdaptiveMaskGenerator(nn.Module):
    """AdAutoMix's mixed-sample generator: per-pixel shares of ``N`` images from their feature maps.

    Follows ``AdaptiveMask`` of JinXins/Adversarial-AutoMixup (``openmixup/models/heads/Ada_mix_pine.py``)
    in the configuration of the authors' CIFAR ResNet-18 run (``configs/classification/cifar100/basic/
    r18_adautomix_bilinear.py``: ``reduction=2, lam_concat=False, use_scale=True``, bilinear upsampling).
    ``forward(features, lam, size)`` takes the feature maps of the ``N`` images mixed into each
    output, stacked as (N, B, C, h, w) (slot ``i`` holds image ``i``'s features for every output
    sample), the slots' ratios ``lam`` (N,) and the input size ``(H, W)``; it returns the shares
    ``m`` (B, N, H, W), in (0, 1) and summing to 1 over the N slots at every pixel::

        q_i = W_q z_i,  k_i = W_k z_i,  v_i = W_v z_i                 (1x1 convolutions)
        P_i = softmax(sum_{j != i} q_i^T k_j / sqrt(C/r))           (B, hw, hw), rows sum to 1
        m = softmax_over_i(upsample(P_i v_i))

    The mixed image is ``sum_i x_i * m_i`` (:func:`mix_with_masks`). The attention and the masks are
    computed in float32 with autocast off. With ``lam_embedding="concat"`` a constant channel
    ``lam_i`` is appended to ``z_i`` (the authors' ``lam_concat`` option; their CIFAR runs leave it
    off, so only the labels carry lam there). Convolutions start as N(0, 0.01), biases 0 (the
    authors' ``init_weights(init_linear="normal")``).

    Args:
        in_channels: channels C of the feature map.
        reduction: r, the query/key width is ``max(C // r, 1)`` (authors: 2).
        upsample_mode: ``"bilinear"`` (authors' CIFAR ResNet runs), ``"nearest"`` or ``"bicubic"``.
        lam_embedding: ``"none"`` (authors' CIFAR setting) or ``"concat"``.
    """

    def __init__(
        self, in_channels: int, reduction: int = 2, upsample_mode: str = "bilinear", lam_embedding: str = "none"
    ) -> None:
        super().__init__()
        width = _set_block_options(self, in_channels, reduction, upsample_mode, lam_embedding)
        self.query = nn.Conv2d(width, self.inter_channels, kernel_size=1)
        self.key = nn.Conv2d(width, self.inter_channels, kernel_size=1)
        self.value = nn.Conv2d(width, 1, kernel_size=1)
        for conv in (self.query, self.key, self.value):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor, lam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if features.dim() != 5 or features.shape[2] != self.in_channels or features.shape[0] < 2:
            raise ValueError(
                f"AdaptiveMaskGenerator expects feature maps of shape (N >= 2, B, {self.in_channels}, h, w), "
                f"got {tuple(features.shape)}; check the feature layer and feature_channels."
            )
        slots, n, _, h, w = features.shape
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = features.float().flatten(0, 1)  # (N * B, C, h, w), slot-major
            if self.lam_embedding == "concat":
                lam_map = lam.float().view(slots, 1, 1, 1, 1).expand(slots, n, 1, h, w).flatten(0, 1)
                z = torch.cat([z, lam_map], dim=1)

            def conv(layer: nn.Conv2d) -> torch.Tensor:  # float32 even in a half-precision model
                return F.conv2d(z, layer.weight.float(), layer.bias.float())

            q = conv(self.query).flatten(2).transpose(1, 2).view(slots, n, h * w, -1)  # (N, B, hw, c)
            k = conv(self.key).flatten(2).view(slots, n, -1, h * w)  # (N, B, c, hw)
            v = conv(self.value).flatten(2).transpose(1, 2).view(slots, n, h * w, 1)  # (N, B, hw, 1)
            others = k.sum(dim=0, keepdim=True) - k  # sum over j != i of k_j
            attention = torch.softmax(torch.matmul(q, others) / math.sqrt(self.inter_channels), dim=-1)
            logits = torch.matmul(attention, v).view(slots, n, h, w).transpose(0, 1)  # (B, N, h, w)
            logits = F.interpolate(logits, size=tuple(size), mode=self.upsample_mode)
            return torch.softmax(logits, dim=1)


def mix_with_masks(inputs: torch.Tensor, indices: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    """``sum_i x[indices[i]] * m[:, i]``: the images of ``N`` slots mixed with per-pixel shares, in ``x``'s dtype.

    ``indices`` (N, B) gives each slot's image for every output sample; ``shares`` (B, N, H, W) or
    (B, N, 1, 1) (constant shares: plain multi-sample Mixup) is broadcast over channels.
    """
    slots = indices.shape[0]
    gathered = inputs.index_select(0, indices.flatten()).view(slots, *inputs.shape)  # (N, B, C, H, W)
    weights = shares.to(inputs.dtype).transpose(0, 1).unsqueeze(2)  # (N, B, 1, H, W)
    return (gathered * weights).sum(dim=0)
