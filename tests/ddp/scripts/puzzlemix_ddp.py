"""Two CPU ranks fit TinyCNN with PuzzleMix (a saliency pass before every step); each saves its
final parameters, the gradients each optimizer step saw, the block grids it drew and the mixes' lam.

``sys.argv[2]`` (optional): ``adversarial`` turns on the adversarial step (adv_p=1) and the clean
loss (clean_lam=0.5), whose graph comes from a forward of the bare module outside DDP's."""

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from ddp_run import ddp_trainer, save_and_close
from puzzlemix_helpers import TinyCNN, image_data
from torch.utils.data import DataLoader

from lightning_mix.callbacks import PuzzleMix


class CleanBatch(pl.Callback):
    """Placed before PuzzleMix: the first clean batch and the parameters it met."""

    def __init__(self) -> None:
        self.first: tuple | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first is None:
            state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            self.first = (batch[0].clone(), batch[1].clone(), state)


class Record(pl.Callback):
    def __init__(self, puzzle: PuzzleMix) -> None:
        self.puzzle = puzzle
        self.lams: list[torch.Tensor] = []
        self.grads: list[list[torch.Tensor]] = []
        self.adversarial: list[bool] = []
        self.first_start: torch.Tensor | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append([p.grad.detach().clone() for p in pl_module.parameters()])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lams.append(self.puzzle.last_mixed.lam.detach().clone())
        self.adversarial.append(self.puzzle.last_adversarial is not None)
        if self.first_start is None and self.puzzle.last_adversarial is not None:
            self.first_start = self.puzzle.last_adversarial.start.clone()


if __name__ == "__main__":
    out = Path(sys.argv[1])
    variant = sys.argv[2] if len(sys.argv) > 2 else "plain"
    options = {"adv_p": 1.0, "clean_lam": 0.5} if variant == "adversarial" else {}
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    puzzle = PuzzleMix(block_nums=[2, 4], solver="torch", **options)
    record, clean = Record(puzzle), CleanBatch()
    trainer = ddp_trainer(max_steps=3, limit_val_batches=0, callbacks=[clean, puzzle, record])
    trainer.fit(model, DataLoader(image_data(96), batch_size=16))
    save_and_close(
        {
            "params": [p.detach().clone() for p in model.parameters()],
            "steps": trainer.global_step,
            "lams": record.lams,
            "grads": record.grads,
            "adversarial": record.adversarial,
            "first_clean": clean.first,
            "first_mixed": model.train_seen[0],
            "first_start": record.first_start,
        },
        out,
        trainer.global_rank,
    )
