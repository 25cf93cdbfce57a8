"""DDP (2 CPU processes): ManifoldMixup, RegMixup and a RankMixupMixin module (M-NDCG), one fit each.

Each rank saves, per method, its mixing draws, the training batch sizes it saw and the final weights.
"""

import sys

import lightning.pytorch as pl
import torch
from ddp_run import ddp_trainer, save_and_close

from lightning_mix.callbacks.manifold_mixup import ManifoldMixup
from lightning_mix.callbacks.regmixup import RegMixup
from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.mixins import RankMixupMixin


class RankCNN(RankMixupMixin, SmallCNN):
    def __init__(self) -> None:
        super().__init__(width=4)
        self.configure_rank_mixup(loss="mndcg", seed=11)


class Recorder(pl.Callback):
    """Records lam[0] of the step's draw and the batch size the training step saw."""

    def __init__(self, mixer=None):
        self.mixer = mixer
        self.lams = []
        self.sizes = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        lam = self.mixer.last_lam if self.mixer is not None else pl_module.rank_mixup_lam
        self.lams.append(lam.reshape(-1)[0].detach().cpu())
        self.sizes.append(batch[0].shape[0])


def fit(model, callbacks, recorder):
    trainer = ddp_trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        callbacks=[*callbacks, recorder],
    )
    trainer.fit(model, MNIST5kDataModule(batch_size=8))
    return trainer.global_rank, {
        "lams": torch.stack(recorder.lams),
        "sizes": recorder.sizes,
        "params": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_epoch_metrics": {k: float(trainer.callback_metrics[k]) for k in ("train/loss_epoch", "train/acc")},
    }


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    results = {}
    pl.seed_everything(0)
    manifold = ManifoldMixup(layers=["input", "block1", "block2"], seed=7)
    rank, results["manifold"] = fit(SmallCNN(width=4), [manifold], Recorder(manifold))
    results["manifold"]["counter"] = manifold._stream.counter
    pl.seed_everything(0)
    regmixup = RegMixup(alpha=10.0, seed=7)
    rank, results["regmixup"] = fit(SmallCNN(width=4), [regmixup], Recorder(regmixup))
    pl.seed_everything(0)
    model = RankCNN()
    rank, results["rank_mixup"] = fit(model, [], Recorder())
    results["rank_mixup"]["counter"] = model._rank_mixup_rng.counter
    save_and_close(results, out_dir, rank)


if __name__ == "__main__":
    main(sys.argv[1])
