"""The MixupMP recipe: members trained with RegMixup(alpha=1, mode="elem") from several seeds, averaged by Ensemble."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from references.mixupmp_authors import authors_mixupmp_loss
from tiny_trainer import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import RegMixup
from lightning_mix.demos import SmallCNN
from lightning_mix.modules import Ensemble


def _data(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


class _Recording(SmallCNN):
    """SmallCNN that keeps the weights, batch and loss of its (single) training step."""

    def training_step(self, batch, batch_idx):
        self.seen_state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        self.seen_batch = [t.detach().clone() for t in batch]
        loss = super().training_step(batch, batch_idx)
        self.seen_loss = loss.detach()
        return loss


def test_member_loss_is_the_authors_mixupmp_objective():
    pl.seed_everything(0)
    model = _Recording(width=4)
    regmixup = RegMixup(alpha=1.0, mode="elem", num_classes=10, seed=5)
    data = _data(16)
    trainer = tiny_trainer(max_steps=1, callbacks=[regmixup])
    trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=16))
    inputs, labels = data.tensors
    assert model.seen_batch[0].shape[0] == 32  # observed + one mixup copy (npl_prop = 1)
    mixed = regmixup.last_index != torch.arange(16)  # a sample paired with itself is reported with lam = 1
    assert regmixup.last_lam.shape == (16,) and len(set(regmixup.last_lam[mixed].tolist())) == int(mixed.sum())

    reference = SmallCNN(width=4)
    reference.load_state_dict(model.seen_state)
    reference.train()  # BatchNorm sees observed and mixed samples together, as in the authors' single forward
    with torch.no_grad():
        expected = authors_mixupmp_loss(
            reference, inputs, labels, torch.arange(16), regmixup.last_index, regmixup.last_lam, npl_weight=1.0
        )
    torch.testing.assert_close(model.seen_loss, expected, rtol=1e-5, atol=1e-6)


def _member(seed: int, data: TensorDataset) -> SmallCNN:
    pl.seed_everything(seed)
    member = SmallCNN(width=4)
    trainer = tiny_trainer(limit_train_batches=2, callbacks=[RegMixup(alpha=1.0, mode="elem", num_classes=10)])
    trainer.fit(member, train_dataloaders=DataLoader(data, batch_size=16, shuffle=True))
    return member


def test_recipe_ensemble_predicts_the_mean_of_the_members_probabilities():
    data = _data()
    members = [_member(seed, data) for seed in (0, 1, 2)]
    ensemble = Ensemble(members=members)
    inputs = torch.randn(20, 1, 28, 28, generator=torch.Generator().manual_seed(9))
    loader = DataLoader(TensorDataset(inputs, torch.zeros(20, dtype=torch.long)), batch_size=8)
    probs = torch.cat(tiny_trainer().predict(ensemble, dataloaders=loader))
    with torch.no_grad():
        member_probs = torch.stack([m.eval()(inputs).softmax(-1) for m in members])
    assert not torch.allclose(member_probs[0], member_probs[1], atol=1e-3)  # seeds give different members
    torch.testing.assert_close(probs, member_probs.mean(0), rtol=1e-5, atol=1e-6)
