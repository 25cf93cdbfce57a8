"""ModelSoup under DDP with unequal validation shards (rank 0: 64 samples, rank 1: 32): the score of
every candidate must be the accuracy over all 96 samples (sum and count over ranks), not the mean of
the two ranks' means. Each rank saves the scores, the ingredients and the weights it ends with."""

import os
import sys

import lightning.pytorch as pl
from ddp_run import ddp_trainer, save_and_close
from soup_common import SoupData, SoupNet
from torch.utils.data import DataLoader, Subset

from lightning_mix.callbacks.model_soup import ModelSoup


class UnevenValData(SoupData):
    """Every rank trains on all the data; validation is split 64 / 32 between the ranks by hand."""

    def val_dataloader(self):
        rank = self.trainer.global_rank
        indices = range(64) if rank == 0 else range(64, 96)
        return DataLoader(Subset(self.val_set, list(indices)), batch_size=self.batch_size, shuffle=False)


if __name__ == "__main__":
    out = sys.argv[1]
    pl.seed_everything(0)
    soup = ModelSoup(storage="memory", dirpath=os.path.join(out, "soups"), keep="uniform", recalibrate_bn=False)
    trainer = ddp_trainer(max_epochs=3, default_root_dir=out, callbacks=[soup], use_distributed_sampler=False)
    model = SoupNet()
    trainer.fit(model, UnevenValData())
    save_and_close(
        {
            "results": soup.results,
            "ingredients": [dict(sd) for sd in soup.ingredient_state_dicts()],
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        },
        out,
        trainer.global_rank,
    )
