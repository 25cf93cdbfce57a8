"""C-Mixup as its authors run it (torch only): partners drawn from the whole training set by a label kernel.

Yao et al. (2022) draw the partner ``j`` of every training sample ``i`` from the *whole* training
set with probability ``P(j | i)`` proportional to ``exp(-|y_i - y_j|^2 / (2 bandwidth^2))`` (a
Gaussian kernel density over labels, ``j = i`` included), and mix each batch with *one* lam from
Beta(alpha, alpha). The in-batch pairing ``make_pairing(..., "label_kernel")`` is the cheaper
variant that looks for partners among the other samples of the batch only.

Two pieces:

- :class:`CMixupBatchSampler`, a batch sampler for ``DataLoader(dataset, batch_sampler=...)``: each
  batch is ``2 B`` dataset indices, ``B`` anchors (a seeded random permutation of the training set,
  cut into batches) followed by their ``B`` partners, so the DataLoader fetches and collates the
  partners with the anchors (in its workers, with the dataset's own transforms).
- :class:`PartnerMixup`, a mixer ``mixer(inputs, targets, generator) -> MixedBatch`` for such
  batches: rows ``B + i`` are mixed into rows ``i`` with one lam per batch, returning ``B`` rows.

Memory: the sampler keeps the labels (N x d) and builds, per batch, the B x N block of kernel rows
of that batch's anchors (float64), never the N x N kernel of the authors' ``get_mixup_sample_rate``
(4 N^2 bytes in float32: 10 GB at N = 50 000). Each batch costs O(B N d) time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

from lightning_mix.mixing.batch import MixedBatch
from lightning_mix.mixing.sampling import sample_lam

__all__ = ["CMixupBatchSampler", "EpochPermutation", "PartnerMixup", "label_kernel_rows"]

_MASK64 = (1 << 64) - 1


def _mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 chained), so (seed, epoch) streams do not overlap."""
    state = 0
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & _MASK64
        state ^= state >> 31
    return state >> 1


def _kernel_weights(
    anchor_labels: torch.Tensor, labels: torch.Tensor, bandwidth: float, anchor_index: torch.Tensor | None
) -> torch.Tensor:
    """Unnormalised kernel rows (B, N) in float64, each row's maximum scaled to 1."""
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}.")
    y_all = labels.reshape(labels.shape[0], -1).double()
    y_anchor = anchor_labels.reshape(anchor_labels.shape[0], -1).to(y_all)
    if y_anchor.shape[1] != y_all.shape[1]:
        raise ValueError(
            f"anchor labels have {y_anchor.shape[1]} values per row, the training labels {y_all.shape[1]}."
        )
    if y_all.shape[1] == 1:  # scalar labels: a broadcast difference is cheaper than cdist
        logits = (y_anchor - y_all.T).square_()
    else:
        logits = torch.cdist(y_anchor, y_all).square_()
    logits.mul_(-0.5 / (bandwidth * bandwidth))
    if anchor_index is not None:
        if y_all.shape[0] < 2:
            raise ValueError("excluding the anchor itself needs at least two training samples.")
        logits.scatter_(1, anchor_index.view(-1, 1).to(logits.device), float("-inf"))
    return logits.sub_(logits.amax(dim=1, keepdim=True)).exp_()


def label_kernel_rows(
    anchor_labels: torch.Tensor, labels: torch.Tensor, bandwidth: float, anchor_index: torch.Tensor | None = None
) -> torch.Tensor:
    """Partner probabilities (B, N): ``P(j | i)`` proportional to ``exp(-|y_i - y_j|^2 / (2 bandwidth^2))``.

    ``anchor_labels`` (B,) or (B, d) are the labels of the anchors, ``labels`` (N,) or (N, d) those
    of the whole training set. Every ``j`` is a candidate, the anchor itself included, as in the
    authors' ``get_mixup_sample_rate``; pass ``anchor_index`` (B,) (the anchors' rows in
    ``labels``) to exclude ``j = i`` instead. Computed in float64 with the row maximum subtracted,
    so a tiny bandwidth tends to the nearest label(s) and no row underflows to all zeros.
    """
    weights = _kernel_weights(anchor_labels, labels, bandwidth, anchor_index)
    return weights / weights.sum(dim=1, keepdim=True)


class EpochPermutation(Sampler[int]):
    """A random permutation of ``range(n)`` seeded by ``(seed, epoch)`` (no shuffle: ``range(n)``).

    The anchor order of :class:`CMixupBatchSampler`, exposed as its ``sampler`` so Lightning's
    ``set_epoch`` call (made on ``dataloader.batch_sampler.sampler`` at every epoch) reaches it.
    """

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, 0))
        return torch.randperm(self.n, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        return self.n


class CMixupBatchSampler(Sampler[list[int]]):
    """Batches of ``2 B`` dataset indices: ``B`` anchors, then the partner of each drawn by C-Mixup's label kernel.

    Example::

        sampler = CMixupBatchSampler(train_labels, batch_size=32, bandwidth=1.0, seed=0)
        loader = DataLoader(train_set, batch_sampler=sampler)   # batches of 64 rows
        mixed = PartnerMixup(alpha=2.0)(x, y)                  # 32 mixed rows

    Per epoch the anchors are a random permutation of the ``N`` training samples (seeded by
    ``(seed, epoch)``) cut into batches of ``batch_size``; the last incomplete batch is dropped
    by default (``drop_last=True``: the authors' loop runs ``N // batch_size`` iterations). The
    partner ``j`` of anchor ``i`` is drawn from all ``N`` samples with probability
    :func:`label_kernel_rows` (``j = i`` included, as in the authors' code; ``exclude_self=True``
    leaves it out), by inverse-CDF sampling of one uniform per anchor.

    Reproducible and resumable: batch ``k`` of epoch ``e`` depends only on ``(seed, e, k)``.
    Lightning calls ``set_epoch`` on ``batch_sampler.sampler`` (an :class:`EpochPermutation`)
    at every epoch, so a run resumed at an epoch boundary draws what an uninterrupted one draws;
    :meth:`state_dict` / :meth:`load_state_dict` (epoch and batches already yielded) let a
    stateful loader resume inside an epoch.

    Distributed: with ``num_replicas`` ``W`` > 1 (default: the ``torch.distributed`` world size
    when initialised) rank ``r`` takes batches ``r, r + W, ...`` of the shared epoch order,
    ``n_batches // W`` each, so ranks never share an anchor. Give the Trainer
    ``use_distributed_sampler=False`` so Lightning does not try to replace this sampler.

    Memory: the labels (N x d) plus one float64 B x N block of kernel rows per batch.

    Args:
        labels: training labels (N,) or (N, d), in the order of the dataset's indices.
        batch_size: anchors per batch ``B`` (the loader's batches have ``2 B`` rows).
        bandwidth: the kernel width (in label units; the authors tune it per data set).
        seed: seed of the anchor order and of the partner draws.
        shuffle: False keeps the anchors in dataset order (partners are still drawn at random).
        drop_last: drop the last incomplete batch (the authors' loop does).
        exclude_self: never pick the anchor as its own partner (the authors allow it).
        num_replicas: number of ranks sharing the epoch; None reads torch.distributed (else 1).
        rank: this rank; None reads torch.distributed (else 0).
    """

    def __init__(
        self,
        labels: torch.Tensor | Sequence[float],
        batch_size: int,
        bandwidth: float = 1.0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        exclude_self: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if isinstance(labels, Sampler):  # Lightning re-creating the batch sampler around a DistributedSampler
            raise TypeError(
                "CMixupBatchSampler was given a sampler instead of the training labels: under DDP, Lightning tries to "
                "inject a DistributedSampler into the batch sampler. Pass Trainer(use_distributed_sampler=False); "
                "CMixupBatchSampler shards each epoch across ranks itself."
            )
        labels = torch.as_tensor(labels)
        if labels.dim() == 0 or labels.shape[0] == 0:
            raise ValueError("labels must hold one label (or one row of labels) per training sample; got none.")
        if not labels.is_floating_point():
            raise ValueError(
                f"C-Mixup's kernel is over regression labels; got {labels.dtype} labels. Pass float labels."
            )
        if not torch.isfinite(labels).all():
            raise ValueError("labels contain NaN or infinite values; the label kernel needs finite labels.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if not (bandwidth > 0 and math.isfinite(bandwidth)):
            raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth}.")
        if exclude_self and labels.shape[0] < 2:
            raise ValueError("exclude_self=True needs at least two training samples.")
        if num_replicas is None or rank is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            num_replicas = (
                num_replicas if num_replicas is not None else (torch.distributed.get_world_size() if distributed else 1)
            )
            rank = rank if rank is not None else (torch.distributed.get_rank() if distributed else 0)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas={num_replicas}), got {rank}.")
        self.labels = labels.detach().cpu().reshape(labels.shape[0], -1).double()
        self.batch_size = int(batch_size)
        self.bandwidth = float(bandwidth)
        self.drop_last = bool(drop_last)
        self.exclude_self = bool(exclude_self)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.sampler = EpochPermutation(self.labels.shape[0], seed, shuffle)
        if self._batches_per_epoch() == 0:
            raise ValueError(
                f"{self.labels.shape[0]} training samples give no batch of {batch_size} per rank "
                f"({self.num_replicas} rank(s), drop_last={drop_last}); lower batch_size or set drop_last=False."
            )
        self._skip = 0  # batches of the current epoch to skip at the next iter() (resume inside an epoch)
        self._yielded = 0  # batches of the current epoch yielded so far

    @property
    def seed(self) -> int:
        return self.sampler.seed

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def _batches_per_epoch(self) -> int:
        n = self.labels.shape[0]
        total = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return total // self.num_replicas

    def __len__(self) -> int:
        return self._batches_per_epoch()

    def partners(self, anchors: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Partner indices (B,) of ``anchors`` (B,): inverse CDF of their kernel rows at ``uniforms`` (B,) in [0, 1)."""
        weights = _kernel_weights(
            self.labels[anchors], self.labels, self.bandwidth, anchors if self.exclude_self else None
        )
        cdf = weights.cumsum_(dim=1)  # unnormalised: the uniforms are scaled by each row's total
        picks = torch.searchsorted(cdf, (uniforms.double() * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        return picks.clamp_max(self.labels.shape[0] - 1)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.sampler.order()
        n = order.shape[0]
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, 1))
        uniforms = torch.rand(n, generator=generator, dtype=torch.float64)  # one per anchor position
        start, self._skip = self._skip, 0
        self._yielded = start
        for local in range(start, self._batches_per_epoch()):
            k = local * self.num_replicas + self.rank  # this rank's share of the epoch's batches
            lo, hi = k * self.batch_size, min((k + 1) * self.batch_size, n)
            anchors = order[lo:hi]
            partners = self.partners(anchors, uniforms[lo:hi])
            self._yielded = local + 1
            yield torch.cat([anchors, partners]).tolist()

    def state_dict(self) -> dict[str, Any]:
        """Seed, epoch and the number of this epoch's batches already yielded."""
        return {"seed": self.seed, "epoch": self.epoch, "batches_yielded": self._yielded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after ``batches_yielded`` batches of ``epoch`` at the next ``iter()``."""
        self.sampler.seed = int(state_dict["seed"])
        self.sampler.set_epoch(int(state_dict["epoch"]))
        self._skip = int(state_dict["batches_yielded"])
        self._yielded = self._skip


class PartnerMixup:
    """Mix a batch of ``2 B`` rows, anchors then partners (a :class:`CMixupBatchSampler` batch), into ``B`` rows.

    ``mixer(inputs, targets, generator=None) -> MixedBatch``: ``lam ~ Beta(alpha, alpha)`` once per
    batch (the authors' rule), ``inputs[i] = lam * x[i] + (1 - lam) * x[B + i]``, same for the
    targets (regression values, any trailing shape). The result has ``B`` rows, and
    ``index[i] = B + i`` names the partner's row *in the batch that was given* (the one departure
    from the general mixer contract, where the result keeps the batch size). An odd row count is
    an error: the batch did not come from a :class:`CMixupBatchSampler`.

    Args:
        alpha: Beta concentration; the authors use 2 (1.5 for exchange-rate).
    """

    def __init__(self, alpha: float = 2.0) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}.")
        self.alpha = float(alpha)

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> MixedBatch:
        rows = inputs.shape[0]
        if rows % 2 or targets.shape[0] != rows:
            raise ValueError(
                f"PartnerMixup expects 2B rows (B anchors then their B partners, as CMixupBatchSampler yields), "
                f"got {rows} input rows and {targets.shape[0]} target rows; build the training loader with "
                "DataLoader(dataset, batch_sampler=CMixupBatchSampler(...))."
            )
        b = rows // 2
        index = torch.arange(b, 2 * b, device=inputs.device)
        lam = sample_lam(self.alpha, b, "batch", index, generator, inputs.device)
        lam_x = lam.to(inputs.dtype).view(-1, *([1] * (inputs.dim() - 1)))
        lam_t = lam.to(targets.dtype).view(-1, *([1] * (targets.dim() - 1)))
        mixed_inputs = lam_x * inputs[:b] + (1 - lam_x) * inputs[b:]
        mixed_targets = lam_t * targets[:b] + (1 - lam_t) * targets[b:]
        return MixedBatch(mixed_inputs, mixed_targets, index, lam)
