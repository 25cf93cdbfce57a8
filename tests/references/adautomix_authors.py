"""Minimal re-implementation of AdAutoMix's rules as the authors wrote them (for tests only).

Follows JinXins/Adversarial-AutoMixup @ 9d6fd12f25e1cf21526843615d27cd5d2c6a0185:
- ``openmixup/models/heads/Ada_mix_pine.py`` (``AdaptiveMask``: ``normal_mix`` for two samples,
  ``co_mix`` / ``co_caculate_attention`` for more, ``lam_concat=False``, ``use_scale=True``; the
  masks are upsampled and soft-maxed over the samples);
- ``openmixup/models/classifiers/AdAutoMix.py`` (``forward_train``, ``forward_q``, ``forward_k``,
  ``mixup``, ``co_mixup``): the classifier's and the generator's losses, the images mixed with
  lists of index tensors, the target network run once per slot, the sign flip on even iterations;
- ``openmixup/models/heads/cls_mixup_head.py`` (``ClsMixupHead.loss`` / ``co_loss``: sum of
  lam-weighted cross-entropies).
Written with Python loops over the slots (and the pairs of slots), independent of the library's
vectorised code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def authors_masks(features, query, key, value, size, mode):
    """``AdaptiveMask.forward`` on a list of N feature maps (B, C, h, w): the shares (B, N, H, W)."""
    b, _, h, w = features[0].shape
    qs = [query(f).view(b, query.out_channels, -1).permute(0, 2, 1) for f in features]
    ks = [key(f).view(b, key.out_channels, -1) for f in features]
    vs = [value(f).view(b, 1, -1).permute(0, 2, 1) for f in features]
    masks = []
    for i in range(len(features)):
        attn = torch.zeros(b, h * w, h * w)
        for j in range(len(features)):
            if i != j:
                attn = attn + torch.matmul(qs[i], ks[j])
        attn = (attn / math.sqrt(query.out_channels)).softmax(dim=-1)
        masks.append(torch.matmul(attn, vs[i]).view(b, 1, h, w))
    mask = F.interpolate(torch.cat(masks, dim=1), size=size, mode=mode)
    return mask.softmax(dim=1)


def _ce(logits, labels):
    return F.cross_entropy(logits, labels)


def authors_losses(q, k, x, y, index_mb, index_bb, lam, mask_mb, mask_bb, iteration, mixup_radio, beta_radio):
    """The classifier's and the generator's loss of one ``forward_train`` call.

    ``index_mb``/``index_bb`` are the authors' lists of index tensors: for two samples one tensor
    each (the partner; the sample itself is slot 0), for N > 2 N tensors each; ``lam`` the authors'
    ``lam`` (two draws) or ``co_lam`` (N normalised draws); ``mask_*`` (B, N, H, W) the shares
    (``mask_bb`` already detached and margin-adjusted); ``q``/``k`` the classifier and the target
    network (callables giving logits). Returns ``(classifier_loss, generator_loss)``.
    """
    if len(lam) == 2 and not isinstance(index_mb, list):  # the two-sample branch (``mixup``)
        img_mb = x * mask_mb[:, 0:1] + x[index_mb] * mask_mb[:, 1:2]
        img_bb = x * mask_bb[:, 0:1] + x[index_bb] * mask_bb[:, 1:2]
        # forward_k: (y, y[index], lam[0])
        pred_mix_k = k(img_mb)
        loss_mix_k = lam[0] * _ce(pred_mix_k, y) + (1 - lam[0]) * _ce(pred_mix_k, y[index_mb])
        with torch.no_grad():
            pred_x, pred_x_ = k(x), k(x[index_mb])
        cos = torch.mean(
            F.cosine_similarity(pred_mix_k, pred_x, dim=-1) * lam[0]
            + F.cosine_similarity(pred_mix_k, pred_x_, dim=-1) * (1 - lam[0])
        )
        # forward_q
        loss_one_q = _ce(q(x), y)
        pred_mix_q = q(img_bb)
        loss_mix_q = lam[1] * _ce(pred_mix_q, y) + (1 - lam[1]) * _ce(pred_mix_q, y[index_bb])
        loss_re_q = loss_one_q
    else:  # co_mixup
        img_mb = sum(x[index_mb[i]] * mask_mb[:, i : i + 1] for i in range(len(lam)))
        img_bb = sum(x[index_bb[i]] * mask_bb[:, i : i + 1] for i in range(len(lam)))
        pred_mix_k = k(img_mb)
        loss_mix_k = sum(_ce(pred_mix_k, y[index_mb[i]]) * lam[i] for i in range(len(lam)))
        cos = 0.0
        for i in range(len(lam)):
            with torch.no_grad():
                pred_i = k(x[index_mb[i]])
            cos = cos + F.cosine_similarity(pred_mix_k, pred_i, dim=-1) * lam[i]
        cos = torch.mean(cos)
        loss_one_q = _ce(q(x), y)
        co_mixed_x = x[index_bb[0]] * lam[0]
        for i in range(1, len(lam)):
            co_mixed_x = co_mixed_x + x[index_bb[i]] * lam[i]
        pred_co = q(co_mixed_x)
        loss_co_mix_q = sum(_ce(pred_co, y[index_bb[i]]) * lam[i] for i in range(len(lam)))
        loss_re_q = loss_one_q * (1 - mixup_radio) + loss_co_mix_q * mixup_radio
        pred_mix_q = q(img_bb)
        loss_mix_q = sum(_ce(pred_mix_q, y[index_bb[i]]) * lam[i] for i in range(len(lam)))
    if iteration % 2 == 0:
        loss_mix_k = -1.0 * beta_radio * loss_mix_k + (1 - beta_radio) * cos
    return loss_mix_q + loss_re_q, loss_mix_k
