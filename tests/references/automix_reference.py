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
