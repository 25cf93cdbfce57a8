"""ModelSoup under DDP (2 CPU processes): every rank ends with identical weights, only rank 0 writes files."""

import os
import sys

import lightning.pytorch as pl
from ddp_run import ddp_trainer, save_and_close
from soup_common import SoupData, SoupNet

from lightning_mix.callbacks.model_soup import ModelSoup

if __name__ == "__main__":
    out = sys.argv[1]
    pl.seed_everything(0)
    storage = os.path.join(out, "ing")
    soup = ModelSoup(storage=storage, keep="best")
    trainer = ddp_trainer(
        max_epochs=3,
        default_root_dir=out,
        callbacks=[soup],
    )
    model = SoupNet()
    trainer.fit(model, SoupData())
    save_and_close(
        {
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "results": soup.results,
            "greedy_epochs": soup.greedy_epochs,
            "files": sorted(f for f in os.listdir(storage)),
        },
        out,
        trainer.global_rank,
    )
