"""ModelSoup callback: soups from epoch-end snapshots, checkpoints that reproduce the logged metric, exact resume."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from soup_common import SoupData, SoupNet  # noqa: E402

from lightning_mix.averaging import load_ingredient, recalibrate_batchnorm, uniform_soup  # noqa: E402
from lightning_mix.callbacks.model_soup import ModelSoup  # noqa: E402

pytestmark = pytest.mark.slow


def _trainer(tmp_path, callbacks, max_epochs=4, **kwargs):
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        devices=1,
        **kwargs,
    )


def _validate(model, tmp_path, **kwargs):
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         devices=1, default_root_dir=str(tmp_path), **kwargs)
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
    soup = ModelSoup(every_n_epochs=2, start_epoch=1, max_ingredients=2, storage=str(storage), score="nll", recipes=("greedy",), recalibrate_bn=False, keep="best", save_soups=False)
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
    bad = ModelSoup(monitor="val/nope", recipes=(), save_soups=False)
    with pytest.raises(KeyError, match="val/acc"):
        _trainer(tmp_path, [bad], max_epochs=1).fit(SoupNet(), SoupData())


def test_ddp_two_processes_end_identical_and_only_rank0_writes(tmp_path):
    from ddp_utils import run_ddp_script

    results = run_ddp_script("soup_ddp.py", tmp_path)
    a, b = results
    assert a["results"] == b["results"] and a["greedy_epochs"] == b["greedy_epochs"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert sorted(a["files"]) == sorted(
        [f"ingredient-epoch={e:04d}.pt" for e in range(3)] + ["soup-greedy.ckpt", "soup-uniform.ckpt"]
    )
    # the uniform soup checkpoint holds the mean of the ingredient files, BN recalibrated over both ranks' shards
    ingredients = [load_ingredient(tmp_path / "ing" / f"ingredient-epoch={e:04d}.pt") for e in range(3)]
    loaded = torch.load(tmp_path / "ing" / "soup-uniform.ckpt", weights_only=False)["state_dict"]
    mean = torch.stack([i["net.0.weight"] for i in ingredients]).mean(0)
    torch.testing.assert_close(loaded["net.0.weight"], mean, rtol=0, atol=1e-6)
    reference = SoupNet()
    reference.load_state_dict(uniform_soup(ingredients))
    data = SoupData()
    data.setup()
    recalibrate_batchnorm(reference, data.train_dataloader())  # all training data = the union of the shards
    torch.testing.assert_close(loaded["net.1.running_mean"], reference.net[1].running_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded["net.1.running_var"], reference.net[1].running_var, rtol=1e-5, atol=1e-5)


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
    soup._ingredients[1].pop("metric", None)  # the metric validated during fit was for the old weights
    soup.on_fit_end(trainer, model)
    assert 1 not in soup.greedy_epochs and len(soup.greedy_epochs) >= 1
    assert soup.results["epoch=1"] < min(soup.results["epoch=0"], soup.results["epoch=2"])
    kept = [soup._ingredients[e]["state_dict"]["net.0.weight"] for e in soup.greedy_epochs]
    torch.testing.assert_close(model.net[0].weight.detach(), torch.stack(kept).mean(0), rtol=1e-5, atol=1e-6)


def test_fit_time_validation_metrics_are_reused_only_for_untouched_snapshots(tmp_path):
    """Ingredients validated at epoch end on exactly their weights are not validated again; when
    another callback swaps weights for validation (EMA), they are."""
    from lightning_mix.callbacks import EMA

    def fit(extra):
        torch.manual_seed(0)
        soup = ModelSoup(monitor="val/acc", recipes=("uniform",), save_soups=False)
        evaluated = []
        original = soup._evaluate

        def counting(trainer, module, state_dict, label):
            evaluated.append(label)
            return original(trainer, module, state_dict, label)

        soup._evaluate = counting
        _trainer(tmp_path, [*extra, soup], max_epochs=3).fit(SoupNet(), SoupData())
        return soup, evaluated

    soup, evaluated = fit([])
    assert not any(label.startswith("ingredient") for label in evaluated)
    assert evaluated == ["the uniform soup of 3"]
    ingredients = soup.ingredient_state_dicts()
    for epoch in range(3):
        model = SoupNet()
        model.load_state_dict(ingredients[epoch])
        assert _validate(model, tmp_path)["val/acc"] == pytest.approx(soup.results[f"epoch={epoch}"], abs=1e-6)

    soup, evaluated = fit([EMA(decay=0.9)])
    assert [label for label in evaluated if label.startswith("ingredient")] == [
        f"ingredient {i + 1}/3 (epoch {i})" for i in range(3)
    ]


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


def test_batchnorm_feed_picks_the_input_or_explains_how_to(tmp_path):
    net = torch.nn.Linear(8, 3)
    x = torch.randn(5, 8)
    soup = ModelSoup(input_key="image")
    torch.testing.assert_close(soup._feed(net, {"image": x, "label": None}), net(x))
    assert soup._batch_size({"image": x, "label": torch.zeros(5)}) == 5
    with pytest.raises(TypeError, match="cannot pick input_key='image'.*bn_forward"):
        soup._feed(net, [x, torch.zeros(5)])
    assert soup._batch_size([x, torch.zeros(5)]) == 5  # counted from the first tensor instead
