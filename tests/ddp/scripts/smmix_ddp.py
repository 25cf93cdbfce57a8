"""Two CPU ranks fit SMMixTinyViT (SMMix and Mixup steps); each saves its weights and its draws."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from ddp_run import ddp_trainer, save_and_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.demos import SMMixTinyViT


class RecordingSMMix(SMMixTinyViT):
    def __init__(self) -> None:
        super().__init__(num_classes=5, dim=32, depth=2, num_heads=2, mix_seed=0)
        self.modes: list[str] = []

    def smmix_losses(self, inputs, labels):
        out = super().smmix_losses(inputs, labels)
        self.modes.append(out["mode"])
        return out


if __name__ == "__main__":
    out, strategy = Path(sys.argv[1]), sys.argv[2]
    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 5, (64,), generator=g))
    model = RecordingSMMix()
    trainer = ddp_trainer(max_steps=6, strategy=strategy)
    trainer.fit(model, DataLoader(data, batch_size=8))
    results = {"modes": model.modes, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    save_and_close(results, out, trainer.global_rank)
