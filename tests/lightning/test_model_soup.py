"""ModelSoup callback: soups from epoch-end snapshots, checkpoints that reproduce the logged metric, exact resume."""

from __future__ import annotations

import math
import os

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from soup_common import SoupData, SoupNet
from tiny_trainer import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.averaging import load_ingredient, recalibrate_batchnorm, uniform_soup
from lightning_mix.callbacks._ownership import WeightOwner
from lightning_mix.callbacks.model_soup import ModelSoup

pytestmark = pytest.mark.slow


def _trainer(tmp_path, callbacks, max_epochs=4, **kwargs):
    checkpointing = any(isinstance(c, ModelCheckpoint) for c in callbacks)
    options = {"num_sanity_val_steps": 2, "enable_checkpointing": checkpointing, **kwargs}
    return tiny_trainer(max_epochs=max_epochs, callbacks=callbacks, default_root_dir=str(tmp_path), **options)


def _validate(model, tmp_path, **kwargs):
    trainer = pl.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
        **kwargs,
    )
    return trainer.validate(model, datamodule=SoupData(), verbose=False)[0]


def test_soups_are_the_recalibrated_means_and_checkpoints_reproduce_the_logged_metrics(tmp_path):
    torch.manual_seed(0)
    storage = tmp_path / "ingredients"
    soup = ModelSoup(storage=str(storage), keep="uniform")
    trainer = _trainer(tmp_path, [soup])
    trainer.fit(SoupNet(), SoupData())

    assert soup.ingredient_epochs == [0, 1, 2, 3]
    names = sorted(os.listdir(storage))
    assert names == [f"ingredient-epoch={e:04d}.pt" for e in range(4)] + ["soup-greedy.ckpt", "soup-uniform.ckpt"]
    ingredients = [load_ingredient(storage / n) for n in names[:4]]

    # uniform soup = mean of the ingredients, with BatchNorm statistics recomputed on the training data
    reference = SoupNet()
    reference.load_state_dict(uniform_soup(ingredients))
    data = SoupData()
    data.setup()
    recalibrate_batchnorm(reference, data.train_dataloader())
    loaded = SoupNet.load_from_checkpoint(soup.soup_paths["uniform"])
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    for key in ("net.0.weight", "net.3.bias"):
        mean = torch.stack([i[key].double() for i in ingredients]).mean(0)
        torch.testing.assert_close(loaded.state_dict()[key].double(), mean, rtol=0, atol=1e-6)

    # each soup checkpoint reproduces the metric the callback logged
    for name in ("uniform", "greedy"):
        model = SoupNet.load_from_checkpoint(soup.soup_paths[name])
        assert _validate(model, tmp_path)["val/acc"] == pytest.approx(soup.results[name], abs=1e-6)
        assert float(trainer.callback_metrics[f"soup/{name}/acc"]) == pytest.approx(soup.results[name])
    # each ingredient's metric is that of its own weights
    model = SoupNet()
    model.load_state_dict(ingredients[1])
    assert _validate(model, tmp_path)["val/acc"] == pytest.approx(soup.results["epoch=1"], abs=1e-6)

    # the greedy soup is the (recalibrated) mean of the epochs it kept, best first, never worse than its start
    kept = soup.greedy_epochs
    assert soup.results[f"epoch={kept[0]}"] == max(soup.results[f"epoch={e}"] for e in range(4))
    assert soup.results["greedy"] >= soup.results[f"epoch={kept[0]}"] - 1e-6 or len(kept) > 1
    greedy = SoupNet.load_from_checkpoint(soup.soup_paths["greedy"])
    mean = torch.stack([ingredients[e]["net.0.weight"] for e in kept]).mean(0)
    torch.testing.assert_close(greedy.net[0].weight, mean, rtol=1e-5, atol=1e-6)

    # the module keeps what was asked, and fit's state is left as fit leaves it
    trained = trainer.lightning_module
    torch.testing.assert_close(trained.state_dict()["net.0.weight"], loaded.state_dict()["net.0.weight"])
    assert soup.kept == "uniform"
    assert trainer.state.fn == "fit" and trainer.state.finished
    assert "val/acc" in trainer.callback_metrics  # fit's own metrics are not lost


def _ingredients_after(tmp_path, storage, resume: bool):
    soup = ModelSoup(storage=storage, recipes=(), keep="last")
    if not resume:
        torch.manual_seed(0)
        _trainer(tmp_path, [soup]).fit(SoupNet(), SoupData())
        return [dict(sd) for sd in soup.ingredient_state_dicts()], soup
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, save_top_k=0)
    first = ModelSoup(storage=storage, recipes=(), keep="last")
    _trainer(tmp_path, [first, ckpt], max_epochs=2).fit(SoupNet(), SoupData())
    resumed = _trainer(tmp_path, [soup, ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"))])
    resumed.fit(SoupNet(), SoupData(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    return [dict(sd) for sd in soup.ingredient_state_dicts()], soup


@pytest.mark.parametrize("on_disk", [False, True])
def test_resume_gives_identical_ingredients(tmp_path, on_disk):
    full_storage = str(tmp_path / "full") if on_disk else "memory"
    part_storage = str(tmp_path / "part") if on_disk else "memory"
    full, full_soup = _ingredients_after(tmp_path / "a", full_storage, resume=False)
    part, part_soup = _ingredients_after(tmp_path / "b", part_storage, resume=True)
    assert full_soup.ingredient_epochs == part_soup.ingredient_epochs == [0, 1, 2, 3]
    for a, b in zip(full, part):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_max_ingredients_every_n_epochs_start_epoch_and_mode_min(tmp_path):
    storage = tmp_path / "ing"
    soup = ModelSoup(
        every_n_epochs=2,
        start_epoch=1,
        max_ingredients=2,
        storage=str(storage),
        score="nll",
        recipes=("greedy",),
        recalibrate_bn=False,
        keep="best",
        save_soups=False,
    )
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, [soup], max_epochs=6)
    trainer.fit(SoupNet(), SoupData())
    assert soup.ingredient_epochs == [3, 5]  # epochs 1, 3, 5 taken, the oldest dropped (and its file deleted)
    assert sorted(os.listdir(storage)) == ["ingredient-epoch=0003.pt", "ingredient-epoch=0005.pt"]
    assert soup.soup_paths == {} and "uniform" not in soup.results
    best = min(soup.results[n] for n in ("greedy", "last"))
    assert soup.results[soup.kept] == best
    assert soup.results["greedy"] <= min(soup.results["epoch=3"], soup.results["epoch=5"]) + 1e-6


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_precisions(tmp_path, precision):
    torch.manual_seed(0)
    soup = ModelSoup(storage="memory", dirpath=str(tmp_path / "soups"), keep="uniform")
    trainer = _trainer(tmp_path, [soup], max_epochs=3, precision=precision)
    model = SoupNet()
    trainer.fit(model, SoupData())
    ingredients = soup.ingredient_state_dicts()
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert ingredients[0]["net.0.weight"].dtype == dtype and model.net[0].weight.dtype == dtype
    mean = torch.stack([i["net.0.weight"].double() for i in ingredients]).mean(0)
    tolerance = 2.0**-8 if dtype == torch.bfloat16 else 1e-6  # one bf16 rounding step
    torch.testing.assert_close(model.net[0].weight.detach().double(), mean, rtol=tolerance, atol=1e-6)
    loaded = SoupNet.load_from_checkpoint(soup.soup_paths["uniform"])
    got = _validate(loaded, tmp_path, precision=precision)["val/acc"]
    assert got == pytest.approx(soup.results["uniform"], abs=1e-6)


def test_errors_and_no_ingredient_warning(tmp_path):
    with pytest.raises(ValueError, match="recipes"):
        ModelSoup(recipes=("uniform", "soupy"))
    with pytest.raises(ValueError, match="needs 'greedy'"):
        ModelSoup(recipes=("uniform",), keep="greedy")
    with pytest.raises(ValueError, match="bn_samples=0"):
        ModelSoup(bn_samples=0)
    soup = ModelSoup(start_epoch=5)
    with pytest.warns(UserWarning, match="no ingredient"):
        _trainer(tmp_path, [soup], max_epochs=1).fit(SoupNet(), SoupData())
    with pytest.raises(ValueError, match="needs mode="):
        ModelSoup(score=lambda module, batch: module(batch[0]).sum(-1))
    with pytest.raises(ValueError, match="score='f1'"):
        ModelSoup(score="f1")
    with pytest.raises(ValueError, match="cannot import"):
        ModelSoup(score="soup_common.no_such_score", mode="max")


def test_greedy_soup_in_the_callback_leaves_out_a_harmful_ingredient(tmp_path):
    torch.manual_seed(0)
    soup = ModelSoup(storage="memory", recipes=("greedy",), save_soups=False, keep="greedy")
    trainer = _trainer(tmp_path, [soup], max_epochs=3)
    model = SoupNet()
    trainer.fit(model, SoupData())
    # replace the epoch-1 ingredient by a far-away model: any average with it is worse
    harmful = {k: v.clone() for k, v in soup._ingredients[1]["state_dict"].items()}
    g = torch.Generator().manual_seed(1)
    for key in ("net.0.weight", "net.3.weight"):
        harmful[key] = torch.randn(harmful[key].shape, generator=g) * 20.0
    soup._ingredients[1]["state_dict"] = harmful
    soup._ingredients[1].pop("score", None)  # the score from the fit's validation was for the old weights
    soup.on_train_end(trainer, model)
    assert 1 not in soup.greedy_epochs and len(soup.greedy_epochs) >= 1
    assert soup.results["epoch=1"] < min(soup.results["epoch=0"], soup.results["epoch=2"])
    kept = [soup._ingredients[e]["state_dict"]["net.0.weight"] for e in soup.greedy_epochs]
    torch.testing.assert_close(model.net[0].weight.detach(), torch.stack(kept).mean(0), rtol=1e-5, atol=1e-6)


class ShuffledSoupData(SoupData):
    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)


def test_batchnorm_passes_reuse_the_same_whole_batches_covering_bn_samples(tmp_path):
    torch.manual_seed(3)
    passes: list[list[torch.Tensor]] = []

    def bn_forward(module, batch):
        if not passes or len(passes[-1]) == 2:
            passes.append([])
        passes[-1].append(batch[0].clone())
        return module(batch[0])

    # 40 samples at batch size 32: two whole batches; the loader shuffles, so fresh draws would differ
    soup = ModelSoup(bn_samples=40, bn_forward=bn_forward, keep="uniform", save_soups=False)
    trainer = _trainer(tmp_path, [soup])
    trainer.fit(SoupNet(), ShuffledSoupData())

    candidates = 1 + (len(soup.ingredient_epochs) - 1)  # the uniform soup and each greedy candidate
    assert len(passes) == candidates and all(len(p) == 2 for p in passes)
    for later in passes[1:]:
        for a, b in zip(passes[0], later):
            assert torch.equal(a, b)
    # the uniform soup's statistics are those of exactly these 64 samples
    reference = SoupNet()
    reference.load_state_dict(uniform_soup(soup.ingredient_state_dicts()))
    hidden = reference.net[0](torch.cat(passes[0])).detach().double()
    bn = trainer.lightning_module.net[1]
    torch.testing.assert_close(bn.running_mean.double(), hidden.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(bn.running_var.double(), hidden.var(0), rtol=1e-4, atol=1e-5)


def test_batchnorm_feed_picks_the_input_or_explains_how_to():
    net = torch.nn.Linear(8, 3)
    x = torch.randn(5, 8)
    soup = ModelSoup(input_key="image")
    torch.testing.assert_close(soup._bn_feed(net, {"image": x, "label": torch.zeros(5)}), net(x))
    assert soup._batch_size({"image": x, "label": torch.zeros(5)}) == 5
    with pytest.raises(KeyError, match="no entry 'image'.*input_key"):
        soup._bn_feed(net, [x, torch.zeros(5)])
    assert soup._batch_size([x, torch.zeros(5)]) == 5  # counted from the first tensor instead
    # input_key=None: a dict's one tensor entry, batch[0] of a list; a dict of several tensors is an error
    default = ModelSoup()
    torch.testing.assert_close(default._bn_feed(net, {"x": x, "id": "a"}), net(x))
    torch.testing.assert_close(default._bn_feed(net, [x, torch.zeros(5)]), net(x))
    with pytest.raises(KeyError, match=r"tensor entries \['x', 'y'\]; set input_key"):
        default._bn_feed(net, {"x": x, "y": torch.zeros(5)})


# ------------------------------------------------------------------- issue 10: composition and misconfiguration


class CountingNet(SoupNet):
    """Counts training steps (misconfiguration must be caught before the first one); logs nothing in validation."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps = 0

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self(batch[0])  # logs nothing: ModelSoup must not depend on what the module logs


def _independent_scores(state_dict, data):
    model = SoupNet()
    model.load_state_dict(state_dict)
    model.eval()
    x, y = data.val_set.tensors
    with torch.no_grad():
        logits = model(x)
    return (logits.argmax(-1) == y).double().mean().item(), F.cross_entropy(logits.double(), y).item()


@pytest.mark.parametrize("score", ["accuracy", "nll"])
def test_scores_with_its_own_loop_whatever_the_module_logs(tmp_path, score):
    """Today: KeyError after all training when the module does not log `monitor`; no nested trainer.validate."""
    torch.manual_seed(0)
    soup = ModelSoup(score=score, recipes=("uniform",), recalibrate_bn=False, save_soups=False, keep="uniform")
    trainer = _trainer(tmp_path, [soup], max_epochs=3)
    trainer.validate = None  # ModelSoup must not run a nested validation
    trainer.fit(CountingNet(), SoupData())
    data = SoupData()
    data.setup()
    which = 0 if score == "accuracy" else 1
    for epoch, ingredient in zip(soup.ingredient_epochs, soup.ingredient_state_dicts()):
        expected = _independent_scores(ingredient, data)[which]
        assert soup.results[f"epoch={epoch}"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    expected = _independent_scores(uniform_soup(soup.ingredient_state_dicts()), data)[which]
    assert soup.results["uniform"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    name = "acc" if score == "accuracy" else "nll"
    assert float(trainer.callback_metrics[f"soup/uniform/{name}"]) == pytest.approx(soup.results["uniform"])


def _mean_confidence(module, batch):  # a custom score by import path: tests/lightning is on sys.path
    return module(batch[0]).softmax(-1).amax(-1)


def test_custom_score_callable_and_import_path(tmp_path):
    data = SoupData()
    data.setup()
    x, _ = data.val_set.tensors
    for score in (_mean_confidence, "test_model_soup._mean_confidence"):
        torch.manual_seed(0)
        soup = ModelSoup(score=score, mode="max", recipes=(), save_soups=False, keep="last")
        _trainer(tmp_path, [soup], max_epochs=2).fit(SoupNet(), SoupData())
        model = SoupNet()
        model.load_state_dict(soup.ingredient_state_dicts()[-1])
        model.eval()
        with torch.no_grad():
            expected = model(x).softmax(-1).amax(-1).double().mean().item()
        assert soup.results["epoch=1"] == pytest.approx(expected, rel=1e-6)
        assert soup.score_name == "_mean_confidence"


class ScaledInputs(SoupNet):
    """Stored inputs are 1000x too large; on_before_batch_transfer undoes it (as a normalisation hook would)."""

    def on_before_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return [x / 1000.0, y]


class ScaledData(SoupData):
    def setup(self, stage=None):
        super().setup(stage)
        self.train_set = TensorDataset(self.train_set.tensors[0] * 1000.0, self.train_set.tensors[1])
        self.val_set = TensorDataset(self.val_set.tensors[0] * 1000.0, self.val_set.tensors[1])


def test_batches_go_through_the_modules_transfer_hooks(tmp_path):
    torch.manual_seed(0)
    soup = ModelSoup(recipes=("uniform",), keep="uniform", dirpath=str(tmp_path / "soups"))
    trainer = _trainer(tmp_path, [soup], max_epochs=3)
    trainer.fit(ScaledInputs(), ScaledData())
    data = SoupData()
    data.setup()  # the unscaled data the module effectively sees
    reference = SoupNet()
    reference.load_state_dict(uniform_soup(soup.ingredient_state_dicts()))
    recalibrate_batchnorm(reference, data.train_dataloader(), forward=lambda m, b: m(b[0][:32]))  # bn_samples=256
    bn = trainer.lightning_module.net[1]
    torch.testing.assert_close(bn.running_mean, reference.net[1].running_mean, rtol=1e-4, atol=1e-4)
    assert soup.results["uniform"] == pytest.approx(_independent_scores(reference.state_dict(), data)[0], abs=1e-9)
    assert soup.results["uniform"] > 0.5  # raw inputs (1000x) would give a near-chance score


class NoValData(SoupData):
    val_dataloader = pl.LightningDataModule.val_dataloader


class EmptyValData(SoupData):
    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)), batch_size=8)


class DictData(SoupData):
    def _dicts(self, dataset, shuffle=False):
        x, y = dataset.tensors
        return DataLoader([{"x": a, "y": b} for a, b in zip(x, y)], batch_size=self.batch_size, shuffle=shuffle)

    def train_dataloader(self):
        return self._dicts(self.train_set)

    def val_dataloader(self):
        return self._dicts(self.val_set)


class DictNet(CountingNet):
    def training_step(self, batch, batch_idx):
        return super().training_step([batch["x"], batch["y"]], batch_idx)

    def validation_step(self, batch, batch_idx):
        self(batch["x"])


@pytest.mark.parametrize(
    "data, options, error, match",
    [
        (NoValData(), {}, RuntimeError, "no(ne)?.*val_dataloader"),
        (SoupData(), {"limit_val_batches": 0}, RuntimeError, "limit_val_batches > 0"),
        (EmptyValData(), {}, RuntimeError, "yields no batch|is empty"),
        (EmptyValData(), {"num_sanity_val_steps": 0}, RuntimeError, "yields no batch|is empty"),
        (DictData(), {}, KeyError, "set input_key"),
        (DictData(), {"num_sanity_val_steps": 0}, KeyError, "set input_key"),
    ],
)
def test_misconfiguration_fails_before_any_training_step(tmp_path, data, options, error, match):
    model = DictNet() if isinstance(data, DictData) else CountingNet()
    soup = ModelSoup()
    with pytest.raises(error, match=match):
        _trainer(tmp_path, [soup], max_epochs=2, **options).fit(model, data)
    assert model.steps == 0
    if isinstance(data, DictData):  # with the input named, the labels are what is missing
        with pytest.raises(KeyError, match="set target_key"):
            _trainer(tmp_path, [ModelSoup(input_key="x")], max_epochs=2, **options).fit(model, data)
        assert model.steps == 0


def test_dict_batches_with_keys_and_the_batchnorm_input_checked_at_the_first_batch(tmp_path):
    torch.manual_seed(0)
    soup = ModelSoup(input_key="x", target_key="y", recipes=("uniform",), keep="uniform", save_soups=False)
    _trainer(tmp_path, [soup], max_epochs=2).fit(DictNet(), DictData())
    data = SoupData()
    data.setup()
    assert soup.results["epoch=1"] == pytest.approx(_independent_scores(soup.ingredient_state_dicts()[1], data)[0])
    # the BatchNorm pass needs the model input of a training batch: several tensors, no input_key -> error at once
    model = DictNet()
    bad = ModelSoup(score=lambda module, batch: module(batch["x"]).argmax(-1).float(), mode="max")
    with pytest.raises(KeyError, match="BatchNorm pass.*set input_key"):
        _trainer(tmp_path, [bad], max_epochs=2).fit(model, DictData())
    assert model.steps == 0


def test_a_failure_while_cooking_leaves_the_trained_weights_in_the_module(tmp_path):
    calls = []

    def failing(module, batch):
        calls.append(1)
        if len(calls) > 12:  # the check at the first validation batch and 3 ingredient passes; then fail
            raise RuntimeError("scorer broke")
        return (module(batch[0]).argmax(-1) == batch[1]).float()

    torch.manual_seed(0)
    soup = ModelSoup(score=failing, mode="max", save_soups=False)
    model = SoupNet()
    with pytest.raises(RuntimeError, match="scorer broke"):
        _trainer(tmp_path, [soup], max_epochs=3).fit(model, SoupData())
    trained = soup._ingredients[-1]["state_dict"]  # the last snapshot is the end of training
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]), key


def test_storage_refuses_an_earlier_runs_files_unless_overwrite(tmp_path):
    storage = tmp_path / "ing"
    torch.manual_seed(0)
    _trainer(tmp_path, [ModelSoup(storage=str(storage))], max_epochs=3).fit(SoupNet(), SoupData())
    before = {p.name: p.stat().st_mtime_ns for p in storage.iterdir()}
    model = CountingNet()
    with pytest.raises(FileExistsError, match=r"ingredient-epoch=0000.pt.*overwrite=True"):
        _trainer(tmp_path, [ModelSoup(storage=str(storage))], max_epochs=2).fit(model, SoupData())
    assert model.steps == 0 and {p.name: p.stat().st_mtime_ns for p in storage.iterdir()} == before
    # soups of an in-memory run land in the same default directory: refused as well
    with pytest.raises(FileExistsError):
        _trainer(tmp_path, [ModelSoup(dirpath=str(storage))], max_epochs=2).fit(SoupNet(), SoupData())
    soup = ModelSoup(storage=str(storage), overwrite=True)
    _trainer(tmp_path, [soup], max_epochs=2).fit(SoupNet(), SoupData())
    assert sorted(p.name for p in storage.iterdir()) == [
        "ingredient-epoch=0000.pt",
        "ingredient-epoch=0001.pt",
        "soup-greedy.ckpt",
        "soup-uniform.ckpt",
    ]


def test_stale_tmp_files_are_removed_and_a_failed_soup_write_leaves_none(tmp_path, monkeypatch):
    storage = tmp_path / "ing"
    storage.mkdir()
    stale = [storage / ".ingredient-epoch=0001.pt.k2j3h4.tmp", storage / ".soup-greedy.ckpt.tmp"]
    for path in stale:
        path.write_bytes(b"half written")
    torch.manual_seed(0)
    soup = ModelSoup(storage=str(storage), recipes=("uniform",), keep="uniform")
    trainer = _trainer(tmp_path, [soup], max_epochs=2)
    original = trainer.save_checkpoint

    def crash(path, *args, **kwargs):
        original(path, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(trainer, "save_checkpoint", crash)
    model = SoupNet()
    with pytest.raises(OSError, match="disk full"):
        trainer.fit(model, SoupData())
    assert sorted(p.name for p in storage.iterdir()) == ["ingredient-epoch=0000.pt", "ingredient-epoch=0001.pt"]
    trained = load_ingredient(storage / "ingredient-epoch=0001.pt")
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_resume_removes_stale_tmp_and_newer_ingredient_files(tmp_path):
    storage = tmp_path / "ing"
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), filename="e{epoch}", save_top_k=-1)
    _trainer(tmp_path, [ModelSoup(storage=str(storage), recipes=(), keep="last"), ckpt], max_epochs=3).fit(
        SoupNet(), SoupData()
    )
    (storage / ".ingredient-epoch=0002.pt.x1y2.tmp").write_bytes(b"killed mid-write")
    soup = ModelSoup(storage=str(storage), recipes=(), keep="last")
    trainer = _trainer(tmp_path, [soup, ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"))], max_epochs=2)
    trainer.fit(SoupNet(), SoupData(), ckpt_path=str(tmp_path / "ckpt" / "eepoch=0.ckpt"))
    assert soup.ingredient_epochs == [0, 1]
    assert sorted(p.name for p in storage.iterdir()) == ["ingredient-epoch=0000.pt", "ingredient-epoch=0001.pt"]


def test_a_diverged_ingredient_is_left_out_of_both_soups_with_a_warning(tmp_path):
    torch.manual_seed(0)
    soup = ModelSoup(storage="memory", save_soups=False, keep="uniform", recalibrate_bn=False)
    trainer = _trainer(tmp_path, [soup], max_epochs=3)
    model = SoupNet()
    trainer.fit(model, SoupData())
    soup._ingredients[1]["state_dict"]["net.0.weight"][0, 0] = float("nan")
    soup._ingredients[2]["state_dict"]["net.3.bias"][1] = float("inf")
    with pytest.warns(UserWarning, match="epoch 1 has NaN or infinite"):
        soup.on_train_end(trainer, model)
    assert 1 not in soup.greedy_epochs and 2 not in soup.greedy_epochs
    assert soup.greedy_epochs == [0] and math.isnan(soup.results["epoch=1"])
    torch.testing.assert_close(model.net[0].weight, soup._ingredients[0]["state_dict"]["net.0.weight"])
    assert torch.isfinite(model.net[0].weight).all()


class RecordsAtFitEnd(Callback):
    def on_fit_end(self, trainer, pl_module):
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class OtherOwner(WeightOwner, Callback):
    def __init__(self, owns_final_weights=None):
        self.owns_final_weights = owns_final_weights


def test_weight_owner_contract(tmp_path):
    # two undecided owners: a clear error at setup, naming both
    model = CountingNet()
    with pytest.raises(ValueError, match="OtherOwner and ModelSoup|ModelSoup and OtherOwner"):
        _trainer(tmp_path, [OtherOwner(), ModelSoup()], max_epochs=1).fit(model, SoupData())
    assert model.steps == 0

    # the owner cooks in on_train_end: on_fit_end sees the soup whatever the list order; checkpoints after fit hold it
    torch.manual_seed(0)
    probe, soup = RecordsAtFitEnd(), ModelSoup(keep="uniform", dirpath=str(tmp_path / "a"))
    trainer = _trainer(tmp_path, [probe, soup, OtherOwner(owns_final_weights=False)], max_epochs=3)
    model = SoupNet()
    trainer.fit(model, SoupData())
    uniform = SoupNet.load_from_checkpoint(soup.soup_paths["uniform"]).state_dict()
    assert soup.kept == "uniform"
    for key, value in model.state_dict().items():
        assert torch.equal(probe.weights[key], value) and torch.equal(value, uniform[key]), key
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    saved = torch.load(tmp_path / "after.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())

    # not the owner: the soups are cooked and saved, the module keeps the trained weights
    torch.manual_seed(0)
    probe, soup = RecordsAtFitEnd(), ModelSoup(keep="uniform", dirpath=str(tmp_path / "b"), owns_final_weights=False)
    trainer = _trainer(tmp_path, [probe, soup, OtherOwner()], max_epochs=3)
    model = SoupNet()
    trainer.fit(model, SoupData())
    assert soup.kept is None and set(soup.soup_paths) == {"uniform", "greedy"} and "uniform" in soup.results
    trained = soup.ingredient_state_dicts()[-1]
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained[key]) and torch.equal(probe.weights[key], value), key


class SwapsWeightsForValidation(Callback):
    """Like EMA's validation swap: other weights during validation, the trained ones back after."""

    def on_validation_start(self, trainer, pl_module):
        self.saved = {k: v.clone() for k, v in pl_module.state_dict().items()}
        with torch.no_grad():
            pl_module.net[0].weight.mul_(0.5)

    def on_validation_end(self, trainer, pl_module):
        pl_module.load_state_dict(self.saved)


class ValidatesTwice(SoupNet):
    def validation_step(self, batch, batch_idx):
        self(batch[0])
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("case", ["untouched", "swapped", "two_forwards", "custom_score"])
def test_ingredient_scores_come_from_the_fits_validation_only_when_it_ran_on_exactly_their_weights(tmp_path, case):
    torch.manual_seed(0)
    options = {"score": _mean_confidence, "mode": "max"} if case == "custom_score" else {}
    soup = ModelSoup(recipes=("uniform",), save_soups=False, **options)
    scored = []
    original = soup._score_weights

    def counting(trainer, module, state, label):
        scored.append(label)
        return original(trainer, module, state, label)

    soup._score_weights = counting
    extra = [SwapsWeightsForValidation()] if case == "swapped" else []
    model = ValidatesTwice() if case == "two_forwards" else SoupNet()
    _trainer(tmp_path, [*extra, soup], max_epochs=3).fit(model, SoupData())
    ingredient_passes = [label for label in scored if label.startswith("ingredient")]
    assert ingredient_passes == ([] if case == "untouched" else [f"ingredient {i + 1}/3 (epoch {i})" for i in range(3)])
    # either way each ingredient's score is that of its own weights
    data = SoupData()
    data.setup()
    for epoch, ingredient in zip(soup.ingredient_epochs, soup.ingredient_state_dicts()):
        if case != "custom_score":
            expected = _independent_scores(ingredient, data)[0]
            assert soup.results[f"epoch={epoch}"] == pytest.approx(expected, abs=1e-12)


def test_a_checkpoint_saved_after_fit_holds_the_soup_and_resumes_from_the_trained_weights(tmp_path):
    """state_dict: what the module holds (the soup); current_model_state: the trained weights, from which
    a resumed fit trains on (bitwise as an uninterrupted fit)."""
    torch.manual_seed(0)
    full = ModelSoup(recipes=("uniform",), keep="uniform", save_soups=False, recalibrate_bn=False)
    _trainer(tmp_path / "a", [full], max_epochs=4).fit(SoupNet(), SoupData())

    torch.manual_seed(0)
    first = ModelSoup(recipes=("uniform",), keep="uniform", save_soups=False, recalibrate_bn=False)
    trainer = _trainer(tmp_path / "b", [first], max_epochs=3)
    model = SoupNet()
    trainer.fit(model, SoupData())
    trainer.save_checkpoint(tmp_path / "after.ckpt")
    checkpoint = torch.load(tmp_path / "after.ckpt", weights_only=False)
    trained = first.ingredient_state_dicts()[-1]
    for key, value in model.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][key], value), key  # the soup
        assert torch.equal(checkpoint["current_model_state"][key], trained[key]), key

    resumed = ModelSoup(recipes=("uniform",), keep="uniform", save_soups=False, recalibrate_bn=False)
    _trainer(tmp_path / "c", [resumed], max_epochs=4).fit(SoupNet(), SoupData(), ckpt_path=tmp_path / "after.ckpt")
    assert resumed.ingredient_epochs == [0, 1, 2, 3]
    last_full, last_resumed = full.ingredient_state_dicts()[-1], resumed.ingredient_state_dicts()[-1]
    for key in last_full:
        assert torch.equal(last_full[key], last_resumed[key]), key
