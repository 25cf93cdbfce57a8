"""Minimal per-sample re-implementation of AutoMix's rules, as the authors wrote them (for tests only).

Follows Westlake-AI/openmixup:
- ``openmixup/models/heads/pmix_block.py`` @ 120b4a5cc5937b8ec2548abb2b180ddb5954b43e
  (``PixelMixBlock.forward`` with attention_mode="embedded_gaussian", mask_mode="none_v_", no lam
  embedding; ``PixelMixBlock.mask_loss`` with mask_loss_mode="L1");
- ``openmixup/models/classifiers/automix.py`` @ dd292a2ec80838c8475db4cfb09c5e1bf3bc49b5
  (``pixel_mixup``: ``x * mask[:, 0] + x[index] * mask[:, 1]``; ``lam_margin``);
- ``openmixup/hooks/momentum_hook.py`` @ 625944fb8deac6974182bcaaed299cc009c84de4 (``CosineScheduleHook``).
Written as plain loops over samples and pixels, independent of the library's vectorised code.
"""

from __future__ import annotations

import math

import torch


def reference_partner_mask(query_w, query_b, value_w, value_b, features, index, scale):
    """Partner's share (N, 1, h*scale, w*scale): sigmoid(nearest-upsample(P @ v_)), one sample at a time."""
    n, c, h, w = features.shape
    out = []
    for i in range(n):
        own = features[i].reshape(c, h * w)  # (C, hw)
        partner = features[index[i]].reshape(c, h * w)
        q = query_w @ own + query_b[:, None]  # (C', hw)
        k = query_w @ partner + query_b[:, None]
        v_ = value_w @ partner + value_b[:, None]  # (1, hw)
        logits = torch.empty(h * w)
        for p in range(h * w):
            scores = torch.tensor([float(q[:, p] @ k[:, r]) / math.sqrt(q.shape[0]) for r in range(h * w)])
            weights = torch.softmax(scores, dim=0)
            logits[p] = float(weights @ v_[0])
        grid = logits.view(h, w)
        up = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1)  # nearest upsampling
        out.append(torch.sigmoid(up)[None])
    return torch.stack(out)


def reference_mask_loss(partner_share, lam, margin):
    """``max(|1 - mean(m) - lam| - margin, 0)`` with m the partner's mask and lam a float."""
    m_mean = float(partner_share.sum()) / partner_share.numel()
    return max(abs(1 - m_mean - lam) - margin, 0.0)


def reference_momentum(cur_iter, max_iters, base=0.999, end=0.999999, scope=(0.1, 1.0)):
    """``CosineScheduleHook(warming_up="constant")``: the momentum set before iteration ``cur_iter``."""
    min_iter = int(max_iters * scope[0])
    if cur_iter < min_iter:
        return base
    return end - (end - base) * (math.cos(math.pi * cur_iter / float(max_iters)) + 1) / 2


# --- SAMix: same files; PixelMixBlock with lam_mul=True, lam_residual=True, lam_mul_k=0.25, x_qk_concat=True,
# value_neck_cfg=ConvNeck(num_layers=2, kernel_size=1, norm BN, act ELU, no bias, no residual)
# (openmixup/models/necks/conv_necks.py @ 625944fb8deac6974182bcaaed299cc009c84de4),
# mask_loss_mode="L1+Variance", and AutoMixup.pixel_mixup's mask_adjust branch.


def reference_rescale_lam_mult(lam, k):
    """``PixelMixBlock.rescale_lam_mult``: k += 1; 1 / (k - 2/3) * (4/3 lam^3 - 2 lam^2 + k lam)."""
    k += 1
    return 1 / (k - 2 / 3) * (4 / 3 * math.pow(lam, 3) - 2 * lam**2 + k * lam)


def reference_samix_partner_mask(block, features, index, lam, size):
    """SAMix's partner mask, bilinear upsampling; the value network's BatchNorm in train mode (batch statistics)."""
    n, c, h, w = features.shape
    r = reference_rescale_lam_mult(lam, block.lam_mul_k)
    own_all = features * (1 + r)
    partner_all = features[index] * (1 + (1 - r))
    conv1, bn, _, conv2 = block.value
    hidden = torch.stack([conv1.weight[:, :, 0, 0] @ partner_all[i].reshape(c, h * w) for i in range(n)])
    mean = hidden.mean(dim=(0, 2), keepdim=True)
    var = hidden.var(dim=(0, 2), unbiased=False, keepdim=True)
    hidden = (hidden - mean) / torch.sqrt(var + bn.eps) * bn.weight[None, :, None] + bn.bias[None, :, None]
    hidden = torch.where(hidden > 0, hidden, torch.exp(hidden) - 1)  # ELU(alpha=1)
    out = []
    for i in range(n):
        v_ = conv2.weight[:, :, 0, 0] @ hidden[i]  # (1, hw)
        pair = torch.cat([own_all[i], partner_all[i]]).reshape(2 * c, h * w)
        q = block.query.weight[:, :, 0, 0] @ pair + block.query.bias[:, None]
        k = block.key.weight[:, :, 0, 0] @ pair + block.key.bias[:, None]
        logits = torch.empty(h * w)
        for p in range(h * w):
            scores = torch.stack([q[:, p] @ k[:, s] for s in range(h * w)]) / math.sqrt(q.shape[0])
            logits[p] = torch.softmax(scores, dim=0) @ v_[0]
        up = torch.nn.functional.interpolate(logits.view(1, 1, h, w), size=size, mode="bilinear")
        out.append(torch.sigmoid(up)[0])
    return torch.stack(out)


def reference_mask_loss_l1_variance(partner_share, lam, margin):
    """``mask_loss`` with mode "L1+Variance": L1 - 2 * max(sum((m - mean)^2) / (n h w), 0)."""
    n, _, h, w = partner_share.shape
    m_mean = float(partner_share.sum()) / (n * h * w)
    variance = float(((partner_share - m_mean) ** 2).sum()) / (n * h * w)
    return max(abs(1 - m_mean - lam) - margin, 0.0) - 2 * max(variance, 0.0)


def reference_mask_adjust(partner_share, lam, epsilon=1e-8):
    """The ``mask_adjust`` branch of ``AutoMixup.pixel_mixup`` on the mask [own, partner], sample by sample."""
    mask = torch.cat([1 - partner_share, partner_share], dim=1).clone()
    for i in range(mask.shape[0]):
        own = mask[i, 0].clamp(min=epsilon, max=1 - epsilon)
        mean = float(own.mean())
        if mean > lam + epsilon:
            mask[i, 0] = own * (lam / mean)
            mask[i, 1] = 1 - mask[i, 0]
        elif mean < lam - epsilon:
            mask[i, 1] = (1 - own) * ((1 - lam) / (1 - mean))
            mask[i, 0] = 1 - mask[i, 1]
    return mask[:, 1:2]
