"""RankMixup on the embedded MNIST5k digits: a LightningModule that only writes ``forward`` and the optimiser.

    python examples/rank_mixup.py                 # MRL (mixup ranking loss), K = 1
    python examples/rank_mixup.py --loss mndcg    # M-NDCG, K = 3 mixed copies per step
    python examples/rank_mixup.py --weight 0      # plain cross-entropy, for comparison

:class:`~lightning_mix.mixins.RankMixupMixin` supplies the training step (cross-entropy on the
clean batch plus ``weight`` times the ranking loss on mixed copies). The model below adds
validation and test steps that report accuracy, NLL and 15-bin ECE. About 20 CPU seconds with the
defaults (test accuracy about 0.93 with MRL).
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.demos import MNIST5kDataModule
from lightning_mix.metrics import CalibrationError
from lightning_mix.mixins import RankMixupMixin


class RankMixupNet(RankMixupMixin, pl.LightningModule):
    """A small MLP trained with RankMixup: the mixin goes first so its ``training_step`` is used."""

    def __init__(
        self, loss: str = "mrl", weight: float = 0.1, margin: float = 2.0, alpha: float = 2.0, lr: float = 1e-3
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
        )
        self.ece = nn.ModuleDict({stage: CalibrationError(n_bins=15) for stage in ("val", "test")})
        # The authors' defaults: w = 0.1, margin 2, alpha 2, K = 1 (MRL) or 3 (M-NDCG).
        self.configure_rank_mixup(loss=loss, weight=weight, margin=margin, alpha=alpha, seed=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=5e-4)

    def _evaluate(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True)
        self.log(f"{stage}/nll", F.cross_entropy(logits, y))
        self.ece[stage].update(logits, y)  # 15-bin top-label ECE over the whole epoch
        self.log(f"{stage}/ece", self.ece[stage])

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loss", choices=["mrl", "mndcg"], default="mrl")
    parser.add_argument("--weight", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--label-noise", type=float, default=0.0)
    args = parser.parse_args()
    pl.seed_everything(0)
    model = RankMixupNet(loss=args.loss, weight=args.weight)
    data = MNIST5kDataModule(batch_size=128, label_noise=args.label_noise)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    trainer.test(model, data)


if __name__ == "__main__":
    main()
