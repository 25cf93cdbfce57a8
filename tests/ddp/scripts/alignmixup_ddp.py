"""Two CPU ranks fit TinyCNN with AlignMixup on the feature branch (a Sinkhorn alignment inside every
training forward); each saves its final parameters and the lam it drew."""

import sys
from pathlib import Path

import lightning.pytorch as pl
from ddp_run import ddp_trainer, save_and_close
from puzzlemix_helpers import TinyCNN, image_data
from torch.utils.data import DataLoader

from lightning_mix.callbacks import AlignMixup


class Record(pl.Callback):
    def __init__(self, align: AlignMixup) -> None:
        self.align = align
        self.draws: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.draws.append((self.align.last_lam.detach().clone(), self.align.last_choice))


if __name__ == "__main__":
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    align = AlignMixup(layer="body", input_prob=0.0)
    record = Record(align)
    trainer = ddp_trainer(max_steps=3, limit_val_batches=0, callbacks=[align, record])
    trainer.fit(model, DataLoader(image_data(96), batch_size=16))
    save_and_close(
        {
            "params": [p.detach().clone() for p in model.parameters()],
            "steps": trainer.global_step,
            "draws": record.draws,
        },
        out,
        trainer.global_rank,
    )
