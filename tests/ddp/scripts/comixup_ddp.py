"""Two CPU ranks fit TinyCNN with CoMixup (a train-mode saliency pass before every step); each saves
its final parameters and the mixing matrices it drew."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from ddp_run import ddp_trainer, save_and_close
from puzzlemix_helpers import TinyCNN, image_data
from torch.utils.data import DataLoader

from lightning_mix.callbacks import CoMixup


class Record(pl.Callback):
    def __init__(self, comix: CoMixup) -> None:
        self.comix = comix
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(self.comix.last_weights.detach().clone())


if __name__ == "__main__":
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    comix = CoMixup(block_num=4, part_size=8)
    record = Record(comix)
    trainer = ddp_trainer(max_steps=3, limit_val_batches=0, callbacks=[comix, record])
    trainer.fit(model, DataLoader(image_data(96), batch_size=16))
    save_and_close(
        {
            "params": [p.detach().clone() for p in model.parameters()],
            "steps": trainer.global_step,
            "weights": record.weights,
        },
        out,
        trainer.global_rank,
    )
