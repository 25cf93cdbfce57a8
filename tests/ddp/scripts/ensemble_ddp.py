"""DDP (2 CPU processes): Ensemble's validate (learned weights and temperature), test and predict.

The validation set has an odd size, so Lightning's DistributedSampler repeats one sample to give
both ranks the same count; the test set has an even size (its logged metrics are means over the
samples each rank saw). Saves rank{r}.pt with the fitted weights and temperature, the test metrics
and this rank's predictions with their dataset indices, and the weights and temperature fitted again
through a custom batch sampler, so the test can compare with one process.
With the argument ``uneven``, ranks validate on shards of different sizes (no distributed sampler),
which the fit refuses.
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import torch
from ddp_run import ddp_trainer, save_and_close
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from lightning_mix.modules import Ensemble

N_VAL, N_TEST, D, C = 201, 200, 6, 4


class FixedLinear(nn.Module):
    """A trained member: a fixed linear map to logits."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def make_problem() -> dict[str, torch.Tensor | list[nn.Module]]:
    """Members, validation and test data (labels drawn from a true linear model)."""
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(C, D, generator=g)
    x = torch.randn(N_VAL + N_TEST, D, generator=g)
    y = torch.multinomial((2.0 * x @ w_true.T).softmax(-1), 1, generator=g).squeeze(1)
    members = [
        FixedLinear(4.0 * w_true),
        FixedLinear(w_true + 0.8 * torch.randn(C, D, generator=g)),
        FixedLinear(torch.randn(C, D, generator=g)),
    ]
    return {
        "members": members,
        "x_val": x[:N_VAL],
        "y_val": y[:N_VAL],
        "x_test": x[N_VAL:],
        "y_test": y[N_VAL:],
    }


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 32) -> DataLoader:
    """Batches ``(inputs, labels, dataset indices)``."""
    return DataLoader(TensorDataset(x, y, torch.arange(len(x))), batch_size=batch_size)


class EvenBatches(BatchSampler):
    """A batch sampler of the user's own class: Lightning puts its DistributedSampler inside it."""


def batch_sampler_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 32) -> DataLoader:
    """``loader``'s batches, drawn by a custom batch sampler."""
    dataset = TensorDataset(x, y, torch.arange(len(x)))
    return DataLoader(dataset, batch_sampler=EvenBatches(SequentialSampler(dataset), batch_size, drop_last=False))


class KeepPredictions(pl.Callback):
    """Keeps this rank's predictions with the dataset indices of their samples."""

    def __init__(self) -> None:
        self.probs: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.probs.append(outputs.detach().cpu())
        self.indices.append(batch[2].cpu())


def uneven_shards(out_dir: str) -> None:
    """Without Lightning's sampler, rank r validates on its own shard of 100 + r samples: refused."""
    problem = make_problem()
    ensemble = Ensemble(members=problem["members"], weighting="nll")
    trainer = ddp_trainer(use_distributed_sampler=False)
    size = 100 + trainer.global_rank
    trainer.validate(ensemble, dataloaders=loader(problem["x_val"][:size], problem["y_val"][:size]), verbose=False)


def main(out_dir: str) -> None:
    problem = make_problem()
    ensemble = Ensemble(members=problem["members"], weighting="nll", temperature_scaling=True)
    keep = KeepPredictions()
    trainer = ddp_trainer(callbacks=[keep])
    val = trainer.validate(ensemble, dataloaders=loader(problem["x_val"], problem["y_val"]), verbose=False)[0]
    test = trainer.test(ensemble, dataloaders=loader(problem["x_test"], problem["y_test"]), verbose=False)[0]
    trainer.predict(ensemble, dataloaders=loader(problem["x_val"], problem["y_val"]), return_predictions=False)
    refit = Ensemble(members=problem["members"], weighting="nll", temperature_scaling=True)
    trainer.validate(refit, dataloaders=batch_sampler_loader(problem["x_val"], problem["y_val"]), verbose=False)
    save_and_close(
        {
            "batch_sampler_weights": refit.weights.clone(),
            "batch_sampler_temperature": refit.temperature.clone(),
            "weights": ensemble.weights.clone(),
            "temperature": ensemble.temperature.clone(),
            "val": val,
            "test": test,
            "probs": torch.cat(keep.probs),
            "indices": torch.cat(keep.indices),
        },
        out_dir,
        trainer.global_rank,
    )


if __name__ == "__main__":
    if sys.argv[2:] == ["uneven"]:
        uneven_shards(sys.argv[1])
    else:
        main(sys.argv[1])
