"""Losses that read how a batch was mixed (``index`` and ``lam`` of a :class:`~lightning_mix.mixing.MixedBatch`).

- :func:`decoupled_mixup_loss`: Decoupled Mixup (DM, Liu et al. 2022), mixup soft cross-entropy plus
  ``eta`` times a term that scores each of the two mixed classes under a softmax that leaves the
  *other* mixed class out, so a hard mixed sample can be confidently both classes at once.
- :func:`mixup_ranking_loss`: RankMixup's MRL (Noh et al. 2023), a margin ranking loss asking that a
  mixed sample's max logit sit at least ``margin`` below the clean sample's max logit.
- :func:`mixup_ndcg_loss`: RankMixup's M-NDCG, ``1 - NDCG`` of max-softmax confidences of the clean
  sample and its K mixed copies, ranked by how much of the sample each copy keeps.

All three are torch only, vectorised over the batch (and over the K copies), and run in float32
whatever the logits' dtype.
"""

from __future__ import annotations

import torch

from lightning_mix.losses._reduction import reduce_loss
from lightning_mix.mixing.targets import dense_targets, mix_targets

__all__ = ["decoupled_mixup_loss", "mixup_ndcg_loss", "mixup_ranking_loss"]


def _class_ids(labels: torch.Tensor) -> torch.Tensor:
    """Class indices from labels (B,) or dense/smoothed (unmixed) targets (B, C) via argmax."""
    if labels.is_floating_point():
        if labels.dim() != 2:
            raise ValueError(
                f"dense labels must have shape (B, C), got {tuple(labels.shape)}; pass class indices (B,) otherwise."
            )
        return labels.argmax(-1)
    if labels.dim() != 1:
        raise ValueError(f"class-index labels must have shape (B,), got {tuple(labels.shape)}.")
    return labels.long()


def _check_pair(batch: int, index: torch.Tensor, lam: torch.Tensor | None, what: str) -> None:
    if index.shape[-1] != batch:
        raise ValueError(f"{what}: index has {index.shape[-1]} entries per copy but the batch has {batch} samples.")
    if lam is not None and lam.shape[-1] != batch and lam.numel() != 1:
        raise ValueError(f"{what}: lam has {lam.shape[-1]} entries per copy but the batch has {batch} samples.")


def decoupled_mixup_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    index: torch.Tensor | None = None,
    lam: torch.Tensor | None = None,
    eta: float = 0.1,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Decoupled Mixup loss: ``soft_CE(z, lam*y_a + (1-lam)*y_b) + eta * (D_a + D_b)``.

    For a sample mixing classes ``a`` (its own, weight ``lam``) and ``b`` (its partner's),
    ``D_a = -log(exp(z_a) / sum_{c != b} exp(z_c))`` is the cross-entropy of class ``a`` under a
    softmax without class ``b``, and ``D_b`` the same with the roles swapped. Plain mixup CE
    pushes the mixed sample's probabilities towards ``(lam, 1-lam)``; the decoupled terms let both
    mixed classes be confident at once, which is what makes hard (mostly-occluded) mixes useful.
    Samples mixed with their own class get no decoupled term (their target is plain one-hot), as
    in the authors' implementation.

    Two ways to call it:

    * ``decoupled_mixup_loss(logits, labels, index, lam)`` with the *unmixed* labels and the pairs
      of a :class:`~lightning_mix.mixing.MixedBatch` (mixing in your own ``training_step``);
    * ``decoupled_mixup_loss(logits, mixed_targets)`` with the *mixed* dense targets a mixing
      callback (``MixingCallback``, ``ManifoldMixup``) put in the batch. The two mixed classes are
      then the two largest entries of each row, and a row with a single class above the others'
      (smoothing) level is a same-class mix. ``D_a + D_b`` is symmetric in ``a`` and ``b``, so this
      gives the same value without ``index`` and ``lam``.

    Args:
        logits: (B, C) logits of the *mixed* inputs.
        targets: with ``index``/``lam``: the unmixed labels, class indices (B,) or dense targets
            (B, C) whose argmax is the class. Without: the mixed dense targets (B, C).
        index: (B,) partner of each sample (``MixedBatch.index``).
        lam: (B,) or scalar weight of each sample's own label (``MixedBatch.lam``).
        eta: weight of the decoupled terms (authors: 0.1; 0.01 on some CIFAR-100 settings).
        label_smoothing: applied to class-index labels for the mixup CE part.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per sample).

    Example::

        mixed = Mixup(alpha=1.0)(x, dense_targets(y, 10), generator=generator)
        loss = decoupled_mixup_loss(model(mixed.inputs), y, mixed.index, mixed.lam, eta=0.1)
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, C), got {tuple(logits.shape)}.")
    batch, num_classes = logits.shape
    z = logits.float()
    if (index is None) != (lam is None):
        raise ValueError("decoupled_mixup_loss: pass both index and lam (unmixed labels) or neither (mixed targets).")
    if index is None:
        if not targets.is_floating_point() or targets.shape != logits.shape:
            raise ValueError(
                f"without index and lam, targets must be the mixed dense targets of shape {tuple(logits.shape)}, "
                f"got dtype {targets.dtype} and shape {tuple(targets.shape)}; pass the unmixed labels with "
                "index and lam (from MixedBatch) otherwise."
            )
        mixed_targets = targets.float()
        top = mixed_targets.topk(min(2, num_classes), dim=-1)
        a = top.indices[:, 0]
        floor = mixed_targets.amin(-1)
        if num_classes > 1:
            b = top.indices[:, 1]
            # a second class only if it stands above the smoothing floor (mix weights below 1e-6 count as none)
            b = torch.where(top.values[:, 1] > floor + 1e-6, b, a)
        else:
            b = a
    else:
        _check_pair(batch, index, lam, "decoupled_mixup_loss")
        lam = torch.as_tensor(lam, device=z.device, dtype=torch.float32).expand(batch)
        index = index.to(z.device)
        if targets.is_floating_point():
            own = targets.float()
        else:
            own = dense_targets(targets, num_classes, label_smoothing)
        mixed_targets = mix_targets(own, index, lam)
        a = _class_ids(targets).to(z.device)
        b = a.index_select(0, index)
    lse = torch.logsumexp(z, dim=-1)
    mixup_ce = lse * mixed_targets.sum(-1) - (mixed_targets * z).sum(-1)
    z_a = z.gather(1, a[:, None]).squeeze(1)
    z_b = z.gather(1, b[:, None]).squeeze(1)
    # log-sum-exp over all classes but the other mixed one, exact (no log(1 - p) cancellation)
    lse_without_b = z.scatter(1, b[:, None], float("-inf")).logsumexp(-1)
    lse_without_a = z.scatter(1, a[:, None], float("-inf")).logsumexp(-1)
    decoupled = (lse_without_b - z_a) + (lse_without_a - z_b)
    decoupled = torch.where(a != b, decoupled, torch.zeros_like(decoupled))
    return reduce_loss(mixup_ce + eta * decoupled, reduction)


def mixup_ranking_loss(
    logits: torch.Tensor,
    mixed_logits: torch.Tensor,
    index: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    margin: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """RankMixup's mixup ranking loss (MRL): ``mean(relu(max z(x_mix) - max z(x) + margin))``.

    A mixed sample carries less evidence for any one class than the clean sample it came from,
    so its top logit should rank at least ``margin`` below the clean sample's. Pairs mixed within
    the same class (``labels[i] == labels[index[i]]``) are still clean examples of that class and
    are masked out (they count as zero in the mean over all ``B`` samples, as in the authors'
    code). Without ``index`` and ``labels`` nothing is masked.

    Args:
        logits: (B, C) logits of the clean batch.
        mixed_logits: (B, C) logits of one mixed copy, or (K, B, C) of K copies (each row of a copy
            is compared with the same clean row; the K losses are averaged).
        index: (B,) or (K, B) partners used to mix each copy (``MixedBatch.index``).
        labels: (B,) class indices or (B, C) unmixed dense targets, for same-class masking.
        margin: the required gap between max logits (authors: 2 on CIFAR, 1 on Tiny-ImageNet).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per sample, averaged over copies).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, C), got {tuple(logits.shape)}.")
    mixed = mixed_logits if mixed_logits.dim() == 3 else mixed_logits.unsqueeze(0)
    if mixed.shape[1:] != logits.shape:
        raise ValueError(
            f"mixed_logits must have shape (B, C) or (K, B, C) with (B, C) = {tuple(logits.shape)}, "
            f"got {tuple(mixed_logits.shape)}."
        )
    gap = mixed.float().amax(-1) - logits.float().amax(-1).unsqueeze(0)  # (K, B)
    hinge = torch.relu(gap + margin)
    if labels is not None:
        if index is None:
            raise ValueError("mixup_ranking_loss needs index (the partners) to mask same-class pairs given labels.")
        index = index.to(logits.device).reshape(-1, logits.shape[0]).expand(mixed.shape[0], -1)
        classes = _class_ids(labels).to(logits.device)
        different = classes.unsqueeze(0) != classes[index]
        hinge = hinge * different
    return reduce_loss(hinge.mean(0), reduction)


def mixup_ndcg_loss(
    logits: torch.Tensor,
    mixed_logits: torch.Tensor,
    lam: torch.Tensor,
    index: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """RankMixup's M-NDCG loss: ``1 - NDCG`` of the max-softmax confidences of a sample and its K mixes.

    For each sample the clean input has relevance 1 and its k-th mixed copy relevance
    ``max(lam_k, 1 - lam_k)`` (1 when mixed with its own class). The items are put in ideal
    order (relevance descending, clean first) and

    - ``DCG = sum_r conf_r / log2(r + 1)`` over ranks ``r = 1..K+1`` with ``conf`` the max softmax
      probability of each item,
    - ``IDCG = sum_r rel_r / log2(r + 1)``,
    - ``NDCG = min(DCG / IDCG, IDCG / DCG)``, so it peaks at 1 when the confidences equal the
      relevances (the authors' symmetric form: confidences above the relevance are penalised too).

    Args:
        logits: (B, C) logits of the clean batch.
        mixed_logits: (K, B, C) logits of K mixed copies (or (B, C) for K = 1).
        lam: (K, B), (K,) or (B,) weight each copy gave the sample itself (``MixedBatch.lam``).
        index: (K, B) or (B,) partners, only needed with ``labels`` for same-class relevance 1.
        labels: (B,) class indices or (B, C) unmixed dense targets.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per sample).
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, C), got {tuple(logits.shape)}.")
    mixed = mixed_logits if mixed_logits.dim() == 3 else mixed_logits.unsqueeze(0)
    copies, batch = mixed.shape[0], logits.shape[0]
    if mixed.shape[1:] != logits.shape:
        raise ValueError(
            f"mixed_logits must have shape (K, B, C) or (B, C) with (B, C) = {tuple(logits.shape)}, "
            f"got {tuple(mixed_logits.shape)}."
        )
    lam = torch.as_tensor(lam, device=logits.device, dtype=torch.float32)
    if lam.dim() == 1 and not (copies == 1 and lam.shape[0] == batch):
        if lam.shape[0] != copies:
            raise ValueError(f"lam of shape {tuple(lam.shape)} fits neither (K,) = ({copies},) nor (K, B).")
        lam = lam[:, None]  # one lam per copy
    lam = lam.expand(copies, batch)
    relevance = torch.maximum(lam, 1.0 - lam)  # (K, B)
    if labels is not None:
        if index is None:
            raise ValueError("mixup_ndcg_loss needs index (the partners) to find same-class mixes given labels.")
        index = index.to(logits.device).reshape(-1, batch).expand(copies, batch)
        classes = _class_ids(labels).to(logits.device)
        relevance = torch.where(classes.unsqueeze(0) == classes[index], torch.ones_like(relevance), relevance)

    conf_clean = logits.float().softmax(-1).amax(-1)  # (B,)
    conf_mixed = mixed.float().softmax(-1).amax(-1)  # (K, B)
    order = relevance.argsort(dim=0, descending=True, stable=True)
    rel_sorted = torch.cat([torch.ones_like(conf_clean)[None], relevance.gather(0, order)], 0)  # (K+1, B)
    conf_sorted = torch.cat([conf_clean[None], conf_mixed.gather(0, order)], 0)
    discount = torch.log2(torch.arange(2, copies + 3, device=logits.device, dtype=torch.float32))[:, None]
    dcg = (conf_sorted / discount).sum(0)
    idcg = (rel_sorted / discount).sum(0)
    ndcg = torch.minimum(dcg / idcg, idcg / dcg)
    return reduce_loss(1.0 - ndcg, reduction)
