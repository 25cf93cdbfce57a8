"""RankMixupMixin: the step's loss against separately computed CE + w * ranking loss, seeding, Trainer runs."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_mix.demos import MNIST5kDataModule, SmallCNN
from lightning_mix.losses import mixup_ndcg_loss, mixup_ranking_loss
from lightning_mix.mixins import RankMixupMixin


class Tiny(RankMixupMixin, pl.LightningModule):
    def __init__(self, **rank_options):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
        if rank_options:
            self.configure_rank_mixup(**rank_options)

    def forward(self, x):
        return self.net(x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 3, generator=g), torch.randint(0, 4, (n,), generator=g)


def _mixed_logits(model, x, index, lam):
    out = []
    for k in range(index.shape[0]):
        w = lam[k].view(-1, 1, 1)
        out.append(model(w * x + (1 - w) * x[index[k]]))
    return torch.stack(out)


def test_defaults_are_the_authors():
    model = Tiny()
    assert (model.rank_mixup_loss, model.rank_mixup_weight, model.rank_mixup_margin, model.rank_mixup_alpha) == (
        "mrl",
        0.1,
        2.0,
        2.0,
    )
    assert model._rank_mixup_num_copies == 1
    model.configure_rank_mixup(loss="mndcg")
    assert model._rank_mixup_num_copies == 3
    with pytest.raises(ValueError, match="loss must be one of"):
        model.configure_rank_mixup(loss="ndcg")


@pytest.mark.parametrize("loss", ["mrl", "mndcg"])
def test_step_loss_is_clean_ce_plus_weighted_ranking_loss(loss):
    torch.manual_seed(0)
    model = Tiny(loss=loss, weight=0.5, margin=1.0, seed=3)
    x, y = _data()
    out = model.rank_mixup_losses(x, y)
    index, lam = model.rank_mixup_index, model.rank_mixup_lam
    copies = 1 if loss == "mrl" else 3
    assert index.shape == lam.shape == (copies, 8)
    moved = index != torch.arange(8)  # a sample the permutation left in place keeps lam = 1
    row_lam = lam.masked_fill(~moved, 2.0).amin(1, keepdim=True)
    assert torch.equal(lam[moved], row_lam.expand_as(lam)[moved])  # mode="batch": one lam per copy
    assert (lam[~moved] == 1).all()
    clean = model(x)
    mixed = _mixed_logits(model, x, index, lam)
    if loss == "mrl":
        rank = mixup_ranking_loss(clean, mixed, index, y, margin=1.0)
    else:
        rank = mixup_ndcg_loss(clean, mixed, lam, index, y)
    torch.testing.assert_close(out["ce"], F.cross_entropy(clean, y))
    torch.testing.assert_close(out["rank_loss"], rank)
    torch.testing.assert_close(out["loss"], F.cross_entropy(clean, y) + 0.5 * rank)
    assert out["rank_loss"] > 0


def test_ranking_term_reaches_the_gradients_and_weight_zero_is_plain_ce():
    torch.manual_seed(1)
    model = Tiny(weight=0.0, seed=0)
    x, y = _data()
    out = model.rank_mixup_losses(x, y)
    torch.testing.assert_close(out["loss"], F.cross_entropy(model(x), y))
    grad_ce = torch.autograd.grad(out["loss"], model.net[1].weight)[0]
    model.configure_rank_mixup(weight=1.0, margin=5.0, seed=0)
    model._rank_mixup_rng = None
    out = model.rank_mixup_losses(x, y)
    assert out["rank_loss"] > 0
    grad_all = torch.autograd.grad(out["loss"], model.net[1].weight)[0]
    assert not torch.allclose(grad_ce, grad_all)


def test_stream_resumes_from_checkpoint():
    model = Tiny(seed=4, loss="mndcg")
    draws = [model.rank_mixup_draw(8, torch.device("cpu")) for _ in range(4)]
    first = Tiny(seed=4, loss="mndcg")
    for _ in range(2):
        first.rank_mixup_draw(8, torch.device("cpu"))
    checkpoint = {}
    first.on_save_checkpoint(checkpoint)
    resumed = Tiny(seed=4, loss="mndcg")
    resumed.on_load_checkpoint(checkpoint)
    for index, lam in draws[2:]:
        index2, lam2 = resumed.rank_mixup_draw(8, torch.device("cpu"))
        assert torch.equal(index, index2) and torch.equal(lam, lam2)


class RankCNN(RankMixupMixin, SmallCNN):
    def __init__(self, loss: str = "mrl", width: int = 4):
        super().__init__(width=width)
        self.configure_rank_mixup(loss=loss)


@pytest.mark.slow
@pytest.mark.parametrize(("loss", "precision"), [("mrl", "32-true"), ("mndcg", "bf16-mixed")])
def test_trainer_fit(loss, precision):
    pl.seed_everything(0)
    model = RankCNN(loss=loss)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, MNIST5kDataModule(batch_size=16))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/rank_loss"]) and metrics["train/rank_loss"] > 0
    torch.testing.assert_close(
        metrics["train/loss_epoch"], metrics["train/ce"] + 0.1 * metrics["train/rank_loss"], rtol=1e-4, atol=1e-4
    )
    assert model._rank_mixup_rng.counter == 3
    assert model.rank_mixup_lam.shape == ((1 if loss == "mrl" else 3), 16)


# The DDP run (2 CPU processes) of this method is shared with the other model-level methods:
# tests/test_manifold_mixup.py::test_ddp_manifold_regmixup_and_rank_mixup.
