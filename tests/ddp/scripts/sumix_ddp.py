"""Two CPU ranks fit SUMixSmallCNN under plain DDP; each saves its parameters and the ratios it drew."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from ddp_run import ddp_trainer, save_and_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.demos import SUMixSmallCNN
from lightning_mix.mixing import CutMix


class RecordingSUMix(SUMixSmallCNN):
    def __init__(self) -> None:
        super().__init__(num_classes=5, width=4, mix_seed=0, mixer=CutMix(alpha=1.0, pairing="random"))
        self.lams: list[torch.Tensor] = []
        self.corrected: list[torch.Tensor] = []

    def sumix_losses(self, inputs, labels):
        out = super().sumix_losses(inputs, labels)
        self.lams.append(out["lam"].detach().clone())
        self.corrected.append(out["batch"].lam.detach().clone())
        return out


if __name__ == "__main__":
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 5, (64,), generator=g))
    model = RecordingSUMix()
    trainer = ddp_trainer(max_steps=4)
    trainer.fit(model, DataLoader(data, batch_size=8))
    results = {
        "lams": model.lams,
        "corrected": model.corrected,
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
    }
    save_and_close(results, out, trainer.global_rank)
