"""CMixup + CMixupDataModule in a Trainer: partners from the whole training set, one lam per batch, clear refusals."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import CMixup, MixingCallback
from lightning_mix.data import CMixupDataModule
from lightning_mix.mixing import CMixupBatchSampler, Mixup

N = 40


def _labels_of(index: torch.Tensor) -> torch.Tensor:
    return torch.sin(index)  # a label that is a known function of the sample's index


class IndexData(pl.LightningDataModule):
    """Feature = the sample's own index, label = sin(index): a mixed row reveals both partners' indices."""

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.batch_size = batch_size
        index = torch.arange(N, dtype=torch.float32)
        self.train_set = TensorDataset(index.view(-1, 1), _labels_of(index))

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size)


class Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(1, 1)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((x.detach().clone(), y.detach().clone()))
        return torch.nn.functional.mse_loss(self.net(x).view(-1), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _trainer(callbacks, **kw):
    args = dict(
        max_epochs=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    args.update(kw)
    return pl.Trainer(callbacks=callbacks, **args)


def test_each_step_sees_b_rows_mixed_with_the_sampled_partners_and_one_lam():
    data = CMixupDataModule(IndexData(batch_size=8), bandwidth=0.5, seed=0)
    model, callback = Recorder(), CMixup(alpha=2.0, seed=0)
    _trainer([callback]).fit(model, datamodule=data)
    assert len(model.seen) == 2 * (N // 8)
    # replay the sampler's draws: the same batches, epoch by epoch
    replay = CMixupBatchSampler(data.datamodule.train_set.tensors[1], 8, bandwidth=0.5, seed=0)
    batches = []
    for epoch in range(2):
        replay.set_epoch(epoch)
        batches += list(replay)
    lams = []
    for (x, y), batch in zip(model.seen, batches):
        anchors, partners = torch.tensor(batch[:8]).float(), torch.tensor(batch[8:]).float()
        assert x.shape == (8, 1) and y.shape == (8,)
        # x = lam * anchor + (1 - lam) * partner for one lam per batch
        lam = (x.view(-1) - partners) / (anchors - partners)
        lam = lam[anchors != partners]
        torch.testing.assert_close(lam, lam[:1].expand_as(lam), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            y, lam[0] * _labels_of(anchors) + (1 - lam[0]) * _labels_of(partners), atol=1e-5, rtol=0
        )
        lams.append(lam[0])
    assert len(set(round(float(v), 6) for v in lams)) == len(lams)  # a new lam every batch
    assert data.batch_sampler.epoch == 1  # Lightning set the epoch on batch_sampler.sampler


def test_stop_epoch_trains_on_the_anchors_alone():
    data = CMixupDataModule(IndexData(batch_size=8), bandwidth=0.5, seed=0)
    model = Recorder()
    _trainer([CMixup(seed=0, stop_epoch=0)], max_epochs=1).fit(model, datamodule=data)
    x, y = model.seen[0]
    assert x.shape == (8, 1)
    torch.testing.assert_close(y, _labels_of(x.view(-1)))  # unmixed rows


def test_a_loader_without_the_batch_sampler_is_refused_before_any_step():
    model = Recorder()
    with pytest.raises(ValueError, match="CMixupBatchSampler.*CMixupDataModule"):
        _trainer([CMixup(seed=0)]).fit(model, datamodule=IndexData())
    assert model.seen == []


def test_cmixup_counts_as_a_mixing_callback():
    data = CMixupDataModule(IndexData(), bandwidth=0.5)
    second = MixingCallback(Mixup(alpha=2.0), regression=True)
    with pytest.raises(ValueError, match="2 mixing callbacks"):
        _trainer([CMixup(seed=0), second]).fit(Recorder(), datamodule=data)


def test_lam_stream_resumes_from_the_checkpointed_counter():
    first = CMixup(seed=3)
    data = CMixupDataModule(IndexData(batch_size=8), bandwidth=0.5, seed=0)
    _trainer([first], max_epochs=1).fit(Recorder(), datamodule=data)
    state = first.state_dict()
    assert state == {"seed": 3, "counter": N // 8}
    resumed = CMixup(seed=0)
    resumed.load_state_dict(state)
    uninterrupted = CMixup(seed=3)
    for cb in (resumed, uninterrupted):
        cb.on_fit_start(_trainer([]), Recorder())
    for _ in range(N // 8):
        uninterrupted.advance()
    x = torch.arange(8.0).view(-1, 1)
    lam_resumed = resumed.mixer(x, x.view(-1), resumed.generator(x.device)).lam
    lam_uninterrupted = uninterrupted.mixer(x, x.view(-1), uninterrupted.generator(x.device)).lam
    assert torch.equal(lam_resumed, lam_uninterrupted)


def test_the_wrapper_delegates_evaluation_loaders_and_reads_labels_in_dataset_order():
    inner = IndexData(batch_size=8)
    data = CMixupDataModule(inner, bandwidth=0.5, batch_size=4)
    loader = data.train_dataloader()
    assert isinstance(loader.batch_sampler, CMixupBatchSampler) and loader.batch_sampler.batch_size == 4
    torch.testing.assert_close(loader.batch_sampler.labels.view(-1).float(), inner.train_set.tensors[1])
    assert data.val_dataloader().dataset is inner.train_set
    with pytest.raises(TypeError, match="LightningDataModule"):
        CMixupDataModule(object())
