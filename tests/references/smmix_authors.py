"""SMMix's mixing and losses as the authors write them, re-implemented minimally (for comparison only).

Follows ``ChenMnZ/SMMix`` at commit 353a944e09dac5575230db5661b6d07c29539e4b:

* ``smmix.py`` (``SMMix.smmix``, ``SMMix.index_translate``, ``SMMix.__call__``): patches by
  ``F.unfold``; the partner is the flipped batch; window scores are ``F.unfold`` sums of the
  (B, P) attention (stride 1); the sample's ``argmin`` window receives, token by token in the
  unfolded order, the partner's ``argmax`` window; ``lam = (side^2 - s^2) / side^2``; targets
  ``y * lam + y_flip * (1 - lam)`` (timm's one-hot with smoothing), and the consistency reference
  ``lam * z + (1 - lam) * z_flip`` of the clean logits;
* ``deit.py`` (``VisionTransformer.forward``): attention score ``attn[:, :, 1:, 1:].mean((1, 2))``
  of the last block; token logits ``token_head`` of the masked mean of the final-norm image tokens;
* ``engine.py`` (``train_one_epoch``): ``loss_cls + (CE(target) + CE(source)) / 2 + KL(batchmean)``.

Written with a Python loop over the samples on purpose (a different route from the library's
batched gather/scatter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def authors_smmix(inputs: torch.Tensor, scores: torch.Tensor, side: int, patch_size: int):
    """inputs (B, C, H, W), scores (B, P) -> (mixed, source_mask (B, P) bool, lam)."""
    b, _, h, _ = inputs.shape
    grid = h // patch_size
    patches = F.unfold(inputs, patch_size, stride=patch_size).transpose(1, 2)  # (B, P, C*p*p)
    flipped = patches.flip(0)
    window_sums = F.unfold(scores.reshape(b, 1, grid, grid), side, stride=1).sum(dim=1)  # (B, W)
    positions = F.unfold(torch.arange(grid * grid, dtype=torch.float64).reshape(1, 1, grid, grid), side, stride=1)
    positions = positions[0].transpose(0, 1).long()  # (W, s*s)
    worst = window_sums.argmin(dim=1)
    best = window_sums.argmax(dim=1).flip(0)  # the partner's most attended window
    mixed = patches.clone()
    source_mask = torch.zeros(b, grid * grid, dtype=torch.bool)
    for i in range(b):
        for j in range(side * side):
            mixed[i, positions[worst[i], j]] = flipped[i, positions[best[i], j]]
            source_mask[i, positions[worst[i], j]] = True
    mixed = F.fold(mixed.transpose(1, 2), h, patch_size, stride=patch_size)
    lam = (grid**2 - side**2) / grid**2
    return mixed, source_mask, lam


def authors_losses(logits, tokens, token_head, source_mask, clean_logits, y_dense, lam):
    """The three loss terms of ``engine.py`` for one SMMix step (tokens: final-norm image tokens)."""
    target_mask = (~source_mask).float().unsqueeze(-1)
    source = source_mask.float().unsqueeze(-1)
    target_result = token_head((tokens * target_mask).sum(1) / target_mask.sum(1))
    source_result = token_head((tokens * source).sum(1) / source.sum(1))
    mixed_target = y_dense * lam + y_dense.flip(0) * (1 - lam)

    def soft_ce(z, t):
        return torch.sum(-t * F.log_softmax(z, dim=-1), dim=-1).mean()

    loss_cls = soft_ce(logits, mixed_target)
    loss_fine = 0.5 * (soft_ce(target_result, y_dense) + soft_ce(source_result, y_dense.flip(0)))
    reference = F.softmax(lam * clean_logits + (1 - lam) * clean_logits.flip(0), dim=1)
    loss_con = F.kl_div(F.log_softmax(logits, dim=1), reference, reduction="batchmean")
    return loss_cls, loss_fine, loss_con
