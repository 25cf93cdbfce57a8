"""``Ensemble``: a LightningModule that averages the predicted probabilities of several trained models."""

from __future__ import annotations

import importlib

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from lightning_mix.evaluation.ensembling import combine_log_probs, fit_ensemble_weights
from lightning_mix.metrics.temperature import fit_temperature

__all__ = ["Ensemble"]

_WEIGHTINGS = ("uniform", "nll")


def _import_class(path: str) -> type:
    module_name, _, name = path.rpartition(".")
    if not module_name:
        raise ValueError(
            f"member_class must be a dotted import path like 'lightning_mix.demos.SmallCNN', got {path!r}."
        )
    return getattr(importlib.import_module(module_name), name)


class Ensemble(pl.LightningModule):
    """Prediction ensemble of M trained classifiers: ``p = sum_m w_m softmax(member_m(x))``, optionally
    temperature-scaled.

    Members come as modules (``members``) or as Lightning checkpoints (``checkpoints`` with the
    ``member_class`` that wrote them, loaded with ``load_from_checkpoint`` on the CPU). They are
    frozen and kept in eval mode. The ensemble holds all M members, so its memory is M times one
    member's parameters and buffers, and each forward runs the M members one after another.

    ``weighting="uniform"`` averages the probabilities. ``weighting="nll"`` learns the weights on
    the validation set by minimising the NLL of the average (as AWARE-NET learns its weights), and
    ``temperature_scaling=True`` then fits one temperature on the log of the averaged
    probabilities (Guo et al. 2017). Both are fitted by ``trainer.validate(ensemble, ...)``, which
    stores the members' validation log-probabilities (M x N_val x C floats) and fits at the end of
    the epoch; under DDP they are gathered from all ranks, each sample once (the samples Lightning's
    DistributedSampler repeats to even out the ranks are dropped), so every rank fits one process's
    values; ranks with different numbers of validation samples (no distributed sampler) raise a
    ``ValueError``. ``trainer.test`` and ``trainer.predict`` then use them (under DDP, each rank predicts
    its own share of the samples, as Lightning's predict loop does). ``val/*`` metrics are logged
    with the values fitted on that same data, so they are optimistic; use the test split to judge.

    The fitted ``weights`` and ``temperature`` are buffers, so they travel in the ensemble's own
    checkpoint (which holds all members' weights too). An ensemble built from ``checkpoints``
    reloads with ``Ensemble.load_from_checkpoint(path)``; one built from ``members`` needs them
    again: ``Ensemble.load_from_checkpoint(path, members=[...])``.

    Batches are ``(inputs, labels, ...)`` like the demos'. ``test_step``/``validation_step``
    return ``{"logits": ..., "loss": ...}`` where ``logits`` are the (scaled) log-probabilities of
    the ensemble, so calibration callbacks read them; ``predict_step`` returns probabilities.

    Example::

        ensemble = Ensemble(checkpoints=["a.ckpt", "b.ckpt"], member_class="lightning_mix.demos.SmallCNN",
                            weighting="nll", temperature_scaling=True)
        trainer = Trainer(logger=False)
        trainer.validate(ensemble, datamodule=dm)   # fits the weights and the temperature
        trainer.test(ensemble, datamodule=dm)
    """

    def __init__(
        self,
        checkpoints: list[str] | None = None,
        member_class: str | None = None,
        members: list[nn.Module] | None = None,
        weighting: str = "uniform",
        temperature_scaling: bool = False,
    ) -> None:
        super().__init__()
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}.")
        if (checkpoints is None) == (members is None):
            raise ValueError(
                "Give the members either as `members` (modules) or as `checkpoints` (with `member_class`)."
            )
        if checkpoints is not None:
            if member_class is None:
                raise ValueError("`checkpoints` need `member_class`, the LightningModule class that wrote them.")
            cls = _import_class(member_class)
            members = [cls.load_from_checkpoint(path, map_location="cpu") for path in checkpoints]
        if len(members) < 2:
            raise ValueError(f"An ensemble needs at least 2 members, got {len(members)}.")
        self.save_hyperparameters(ignore=["members"])
        self.members = nn.ModuleList(members)
        self.members.requires_grad_(False)
        self.weighting = weighting
        self.temperature_scaling = temperature_scaling
        self.register_buffer("weights", torch.full((len(members),), 1.0 / len(members), dtype=torch.float64))
        self.register_buffer("temperature", torch.ones((), dtype=torch.float64))
        self._val_log_probs: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []

    def train(self, mode: bool = True) -> Ensemble:
        """Members stay in eval mode (BatchNorm statistics and dropout are never changed)."""
        super().train(mode)
        self.members.eval()
        return self

    @property
    def _fits(self) -> bool:
        return self.weighting == "nll" or self.temperature_scaling

    def member_log_probs(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(M, B, C)`` log-probabilities of every member."""
        return torch.stack([F.log_softmax(member(inputs).float(), -1) for member in self.members])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the (weighted, temperature-scaled) ensemble, ``(B, C)``."""
        return self._combine(self.member_log_probs(inputs))

    def _combine(self, member_log_probs: torch.Tensor) -> torch.Tensor:
        log_p = combine_log_probs(member_log_probs, self.weights.to(member_log_probs))
        if self.temperature_scaling:
            log_p = F.log_softmax(log_p / self.temperature.to(log_p), -1)
        return log_p

    def _evaluate(self, log_p: torch.Tensor, labels: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        nll = F.nll_loss(log_p, labels)
        acc = (log_p.argmax(-1) == labels).float().mean()
        self.log(f"{stage}/acc", acc, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/nll", nll, sync_dist=True)
        return {"logits": log_p, "loss": nll}

    def on_validation_epoch_start(self) -> None:
        self._val_log_probs, self._val_targets = [], []

    def validation_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        inputs, labels = batch[0], batch[1]
        member_log_probs = self.member_log_probs(inputs)
        if self._fits:
            self._val_log_probs.append(member_log_probs.detach())
            self._val_targets.append(labels.detach())
        return self._evaluate(self._combine(member_log_probs), labels, "val")

    def on_validation_epoch_end(self) -> None:
        if not self._fits or not self._val_targets or (self.trainer is not None and self.trainer.sanity_checking):
            return
        log_probs = torch.cat(self._val_log_probs, dim=1)
        targets = torch.cat(self._val_targets)
        if self.trainer is not None and self.trainer.world_size > 1:
            log_probs, targets = self._gather_validation_set(log_probs, targets)
        self.fit_combination(log_probs, targets)
        self._val_log_probs, self._val_targets = [], []

    def _gather_validation_set(
        self, log_probs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' ``(M, n, C)`` log-probabilities and ``(n,)`` labels as one validation set, each sample once.

        Lightning's DistributedSampler gives rank r the samples at positions r, r + world, ... of its
        index list, padded at the end with repeats so that every rank has as many; interleaving the
        ranks restores that list, and cutting it at the data set's size drops the repeats.
        """
        counts = self.all_gather(torch.tensor(targets.numel(), device=targets.device)).tolist()
        if len(set(counts)) > 1:
            raise ValueError(
                f"Ensemble fits on the validation samples of all ranks and needs as many on each; got {counts}. "
                "Keep Lightning's distributed sampler (Trainer(use_distributed_sampler=True), the default), "
                "or give every rank a shard of the same size."
            )
        world = self.trainer.world_size
        log_probs = self.all_gather(log_probs).permute(1, 2, 0, 3).flatten(1, 2)  # (world, M, n, C) -> (M, n*world, C)
        targets = self.all_gather(targets).transpose(0, 1).flatten()  # (world, n) -> (n*world,)
        loader = self.trainer.val_dataloaders
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, DistributedSampler):  # a batch sampler holds it
            sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        if isinstance(sampler, DistributedSampler) and sampler.num_replicas == world:
            size = len(sampler.dataset)
            log_probs, targets = log_probs[:, :size], targets[:size]
        return log_probs, targets

    def fit_combination(self, member_log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        """Fit the weights (``weighting="nll"``) and then the temperature (``temperature_scaling``) on
        held-out ``(M, N, C)`` member log-probabilities and ``(N,)`` labels.
        """
        # validate runs under inference mode; the fits need autograd, and clones of inference tensors
        with torch.inference_mode(False), torch.enable_grad():
            self._fit(member_log_probs.clone(), targets.clone())

    def _fit(self, member_log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        if self.weighting == "nll":
            weights = fit_ensemble_weights(member_log_probs, targets)
            with torch.no_grad():
                self.weights.copy_(weights)
        if self.temperature_scaling:
            combined = combine_log_probs(member_log_probs.double(), self.weights.to(member_log_probs.device))
            temperature = fit_temperature(combined, targets)
            with torch.no_grad():
                self.temperature.fill_(temperature)

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._evaluate(self(batch[0]), batch[1], "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).exp()

    def configure_optimizers(self):
        raise RuntimeError(
            "Ensemble is not trained with trainer.fit: its members are trained models. Use trainer.validate to fit "
            "the weights and temperature, then trainer.test / trainer.predict."
        )
