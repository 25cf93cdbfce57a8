"""The authors' label rules for ViT mixing, re-implemented minimally on full label tensors (for comparison only).

TL-Align: ``Euphoria16/TL-Align`` at commit 2a3f35c1f4cf066b9b850ecd02bc1932a1ae3ed6, ``tla.py``
(``mixup_target``, ``token_label``: the class token starts with the area-mixed label, patch
tokens with their own image's label) and ``timm/models/vision_transformer.py``
(``Attention.forward``: ``label_aligned = mean(attn_softmax, dim=1) @ label_embed``;
``Block.forward``: ``label_embed = (label_embed + label_embed0) / 2``).

TransMix: ``Beckschen/TransMix`` at commit 7e313ca46a7bf6b9683814c230c579adb4186f66, ``transmix.py``
(``Mixup_transmix.transmix_label``: nearest ``nn.Upsample`` of the pixel box mask to the patch
grid, ``lam1 = w2 / (w1 + w2)`` for the pasted patches, ``lam = (lam0 + lam1) / 2``, target
``y1 * (1 - lam) + y2 * lam``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def tl_align_class_label(
    own: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor, pasted: torch.Tensor, attentions: list[torch.Tensor]
) -> torch.Tensor:
    """own, partner: (B, C) labels; lam: (B,) area lam; pasted: (B, P) 0/1; attentions: per block (B, H, N, N)."""
    cls_target = own * lam.view(-1, 1) + partner * (1 - lam.view(-1, 1))
    token_target = torch.where(pasted.unsqueeze(-1).bool(), partner.unsqueeze(1), own.unsqueeze(1))
    label_embed = torch.cat([cls_target.unsqueeze(1), token_target], dim=1)
    for attn in attentions:
        label_embed0 = label_embed
        label_aligned = torch.mean(attn, dim=1) @ label_embed
        label_embed = (label_aligned + label_embed0) / 2.0
    return label_embed[:, 0]


def transmix_target(
    own: torch.Tensor,
    partner: torch.Tensor,
    box: tuple[int, int, int, int],
    image_hw: tuple[int, int],
    attn: torch.Tensor,
) -> torch.Tensor:
    """One pixel box (yl, yh, xl, xh) for the batch; attn: (B, P) class attention over the patches."""
    h, w = image_hw
    lam0 = (box[1] - box[0]) * (box[3] - box[2]) / (h * w)
    mask = torch.zeros((h, w))
    mask[box[0] : box[1], box[2] : box[3]] = 1
    mask = nn.Upsample(size=int(math.sqrt(attn.shape[1])))(mask.unsqueeze(0).unsqueeze(0)).int()
    mask = mask.view(1, -1).repeat(len(attn), 1)
    w1, w2 = torch.sum((1 - mask) * attn, dim=1), torch.sum(mask * attn, dim=1)
    lam1 = w2 / (w1 + w2)
    lam = (lam0 + lam1) / 2
    return own * (1.0 - lam).unsqueeze(1) + partner * lam.unsqueeze(1)
