"""SUMix's rule (Qin et al., ECCV 2024): the semantic mixing-ratio correction and the uncertainty regulariser.

"SUMix: Mixup with Semantic and Uncertain Information" (arXiv 2407.07805) corrects the mixing ratio
of a cut-based mix (CutMix, FMix, ResizeMix, SaliencyMix) from how much the mixed sample's prediction
still looks like each source's, and adds a regulariser on a small "uncertainty" head. The formulas
below follow the authors' code, ``ClsUncertainMixupHead.IN_loss`` in
``openmixup/models/heads/cls_mixup_head.py`` of JinXins/SUMix (commit 0469ec2), read, not copied;
the paper's text was not available to us beyond its abstract, so where the two could differ the code
decides. Notation: ``B`` samples, ``C`` classes, sample ``i`` is mixed with ``j = index[i]``, keeps
the share ``lam_i`` of its own pixels, ``y_i`` is its class.

1. **Semantic distances** (:func:`semantic_distances`), from the softmax predictions ``p`` of the
   clean batch and ``q`` of the mixed batch, both without gradient:

   * own reference ``r_i = p_i`` with the entry of the partner's class ``y_j`` set to 0;
     partner reference ``s_i = p_j`` with the entry of the own class ``y_i`` set to 0;
   * ``d_i = B * normalize(softmax(q_i - r_i))`` and ``e_i = B * normalize(softmax(q_i - s_i))``
     (``normalize``: divide by the Euclidean norm over classes; ``B`` is the batch size on this
     process, the authors' ``avg_factor``).

2. **Corrected ratio** (:func:`corrected_lam`)::

       a_i = lam_i exp(-d_i[y_i]),  b_i = (1 - lam_i) exp(-e_i[y_j]),  lam_hat_i = a_i / (a_i + b_i)

   computed as ``sigmoid(log lam_i - log(1 - lam_i) + e_i[y_j] - d_i[y_i])``, the same number
   without the underflow of ``exp(-d)`` when ``B / sqrt(C)`` is large (``d`` grows with the batch).
   Limits: ``lam_hat = lam`` when ``d_i[y_i] = e_i[y_j]``, which holds whenever all clean and mixed
   predictions are the same distribution ``p`` with ``p[y_i] = p[y_j]``, the uniform one included
   (a model that predicts uniformly gets the plain cut-based mix); ``lam`` of 0 or 1 is kept.
   For a confident model the correction works against the pixels: with one-hot clean predictions
   and a mixed prediction one-hot at the own class, ``d_i[y_i] = B / sqrt(C)`` exceeds
   ``e_i[y_j] = B e^-1 / sqrt(e^2 + e^-2 + C - 2)`` and ``lam_hat`` tends to 0; a mixed prediction
   that splits as the pixels do gives ``lam_hat < 1/2`` for every ``lam > 1/2``. This is the
   authors' rule as written, kept as such.

3. **Uncertainty regulariser** (:func:`uncertainty_loss`), from the uncertainty head's logits ``g``
   on the clean and on the mixed batch (with gradient): ``u = normalize(softmax(g))``,
   ``beta_i = u_clean_i + u_mixed_i``, ``beta'_i = u_clean_j + u_mixed_i``, and::

       R = mean_i [ lam_i CE(exp(-(beta_i + d_i)), y_i) + (1 - lam_i) CE(exp(-(beta'_i + e_i)), y_j) ]

   where ``CE(z, y)`` is the cross-entropy of the logits ``z`` and ``lam`` is the mixer's ratio
   (not the corrected one), as in the authors' code. With one ``lam`` per batch (the authors'
   mixers) this is exactly their ``lam CE_a + (1 - lam) CE_b`` of batch means.

The training loss (:class:`~lightning_mix.mixins.SUMixMixin`) is the cross-entropy of the mixed
logits against the targets mixed with ``lam_hat`` plus ``gamma * R``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_mix.mixing.batch import MixedBatch
from lightning_mix.mixing.targets import mix_targets

__all__ = ["corrected_lam", "semantic_distances", "sumix_batch", "uncertainty_loss", "uncertainty_scores"]


def _check_pairs(logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"SUMix expects logits of shape (B, C), got {tuple(logits.shape)}.")
    b = logits.shape[0]
    if labels.shape != (b,) or index.shape != (b,):
        raise ValueError(
            f"SUMix expects class labels (B,) and a partner index (B,) for B={b}, "
            f"got labels {tuple(labels.shape)} and index {tuple(index.shape)}."
        )
    if labels.is_floating_point():
        raise ValueError("SUMix expects integer class labels; take the argmax of dense targets first.")


def semantic_distances(
    clean_logits: torch.Tensor, mixed_logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distances ``(d, e)`` of step 1 in the module docstring, each (B, C) in float32, no gradient.

    Args:
        clean_logits: logits (B, C) of the clean batch.
        mixed_logits: logits (B, C) of the mixed batch.
        labels: class indices (B,).
        index: the partner of each sample (B,), as in :class:`~lightning_mix.mixing.MixedBatch`.
    """
    _check_pairs(clean_logits, labels, index)
    if mixed_logits.shape != clean_logits.shape:
        raise ValueError(
            f"clean and mixed logits must have one shape, got {tuple(clean_logits.shape)} and "
            f"{tuple(mixed_logits.shape)}."
        )
    with torch.no_grad():
        clean = clean_logits.detach().float().softmax(-1)
        mixed = mixed_logits.detach().float().softmax(-1)
        labels = labels.long()
        own_reference = clean.scatter(1, labels.index_select(0, index).view(-1, 1), 0.0)
        partner_reference = clean.index_select(0, index).scatter(1, labels.view(-1, 1), 0.0)
        scale = float(clean.shape[0])
        own = F.normalize((mixed - own_reference).softmax(-1), dim=-1) * scale
        partner = F.normalize((mixed - partner_reference).softmax(-1), dim=-1) * scale
    return own, partner


def corrected_lam(
    lam: torch.Tensor, own: torch.Tensor, partner: torch.Tensor, labels: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """``lam_hat`` (B,) of step 2 in the module docstring, float32, from the mixer's ``lam`` (B,) and
    the distances of :func:`semantic_distances`.
    """
    _check_pairs(own, labels, index)
    labels = labels.long()
    own_distance = own.gather(1, labels.view(-1, 1)).squeeze(1)
    partner_distance = partner.gather(1, labels.index_select(0, index).view(-1, 1)).squeeze(1)
    lam = lam.detach().float()
    log_odds = torch.log(lam) - torch.log1p(-lam)  # +-inf at lam = 1 or 0: sigmoid keeps those
    return torch.sigmoid(log_odds + partner_distance - own_distance)


def uncertainty_scores(uncertainty_logits: torch.Tensor) -> torch.Tensor:
    """``u = normalize(softmax(g))`` (B, C) in float32: the uncertainty head's output, unit norm per sample."""
    return F.normalize(uncertainty_logits.float().softmax(-1), dim=-1)


def uncertainty_loss(
    own: torch.Tensor,
    partner: torch.Tensor,
    clean_uncertainty_logits: torch.Tensor,
    mixed_uncertainty_logits: torch.Tensor,
    labels: torch.Tensor,
    index: torch.Tensor,
    lam: torch.Tensor,
) -> torch.Tensor:
    """The regulariser ``R`` of step 3 in the module docstring (a float32 scalar).

    Gradients reach the uncertainty logits of both batches (and what produced them); the distances
    ``own`` and ``partner`` (from :func:`semantic_distances`) and ``lam`` (B,) carry none.
    """
    _check_pairs(own, labels, index)
    labels = labels.long()
    clean = uncertainty_scores(clean_uncertainty_logits)
    mixed = uncertainty_scores(mixed_uncertainty_logits)
    own_logits = torch.exp(-(clean + mixed + own))
    partner_logits = torch.exp(-(clean.index_select(0, index) + mixed + partner))
    own_ce = F.cross_entropy(own_logits, labels, reduction="none")
    partner_ce = F.cross_entropy(partner_logits, labels.index_select(0, index), reduction="none")
    return torch.lerp(partner_ce, own_ce, lam.detach().float()).mean()


def sumix_batch(mixed: MixedBatch, targets: torch.Tensor, lam_hat: torch.Tensor) -> MixedBatch:
    """``mixed`` with its ratio replaced by ``lam_hat`` and the targets re-mixed with it.

    ``targets`` are the *unmixed* dense targets (B, ...) the mixer received; the result keeps the
    :class:`~lightning_mix.mixing.MixedBatch` contract: ``targets[i] = lam_hat[i] t[i] + (1 - lam_hat[i]) t[index[i]]``.
    """
    lam_hat = lam_hat.to(mixed.lam.dtype)
    return MixedBatch(mixed.inputs, mix_targets(targets, mixed.index, lam_hat), mixed.index, lam_hat)
