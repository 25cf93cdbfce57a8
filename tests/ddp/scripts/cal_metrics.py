"""DDP (2 CPU processes): CalibrationMonitor metrics and TemperatureScaling's T on sharded data.

Saves rank{r}.pt with the logged test metrics, the fitted temperature and the data, so the test
can recompute everything in one process.
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import torch
from ddp_run import ddp_trainer, save_and_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks.calibration_monitor import AVAILABLE_METRICS, CalibrationMonitor
from lightning_mix.callbacks.temperature_scaling import TemperatureScaling

N, D, C = 400, 6, 5


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    weight = torch.randn(C, D, generator=g)
    y = torch.multinomial((x @ weight.T).softmax(-1), 1, generator=g).squeeze(1)
    return x, y, weight


class Fixed(pl.LightningModule):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(D, C, bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(weight * 2.5)  # over-confident: T should come out near 2.5

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        return (self.layer.weight * 0).sum()  # weights stay fixed

    def validation_step(self, batch, batch_idx):
        return {"logits": self(batch[0])}

    def test_step(self, batch, batch_idx):
        return None  # CalibrationMonitor runs the forward itself

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main(out_dir: str) -> None:
    x, y, weight = make_data()
    loader = DataLoader(TensorDataset(x, y), batch_size=50)
    model = Fixed(weight)
    ts = TemperatureScaling(verbose=False)
    trainer = ddp_trainer(
        max_epochs=1,
        limit_train_batches=1,
        num_sanity_val_steps=0,
        callbacks=[CalibrationMonitor(metrics=list(AVAILABLE_METRICS), plot=False, stages=["test"]), ts],
    )
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)
    temperature = ts.temperature
    ts.apply_to = ()  # measure the raw logits in the test run
    results = trainer.test(model, dataloaders=loader, verbose=False)[0]
    save_and_close(
        {"metrics": results, "temperature": temperature, "x": x, "y": y, "weight": model.layer.weight.detach().clone()},
        out_dir,
        trainer.global_rank,
    )


if __name__ == "__main__":
    main(sys.argv[1])
