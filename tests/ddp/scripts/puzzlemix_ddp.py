"""Two CPU ranks fit TinyCNN with PuzzleMix (a saliency pass before every step); each saves its
final parameters, the block grids it drew and the mixes' lam."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from ddp_run import ddp_trainer, save_and_close
from puzzlemix_helpers import TinyCNN, image_data
from torch.utils.data import DataLoader

from lightning_mix.callbacks import PuzzleMix


class Record(pl.Callback):
    def __init__(self, puzzle: PuzzleMix) -> None:
        self.puzzle = puzzle
        self.lams: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lams.append(self.puzzle.last_mixed.lam.detach().clone())


if __name__ == "__main__":
    out = Path(sys.argv[1])
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    puzzle = PuzzleMix(block_nums=[2, 4], solver="torch")
    record = Record(puzzle)
    trainer = ddp_trainer(max_steps=3, limit_val_batches=0, callbacks=[puzzle, record])
    trainer.fit(model, DataLoader(image_data(96), batch_size=16))
    save_and_close(
        {
            "params": [p.detach().clone() for p in model.parameters()],
            "steps": trainer.global_step,
            "lams": record.lams,
        },
        out,
        trainer.global_rank,
    )
