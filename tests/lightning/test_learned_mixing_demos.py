"""AutoMixSmallCNN / SAMixSmallCNN: the documented subclass pattern as LightningCLI-buildable demo modules."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from automix_helpers import make_loader
from tiny_trainer import TINY_CLI, tiny_trainer

from lightning_mix.cli import compare, run_cli
from lightning_mix.demos import AutoMixSmallCNN, SAMixSmallCNN, SmallCNN
from lightning_mix.mixins import AutoMixMixin, SAMixMixin

ROOT = Path(__file__).resolve().parents[2]


class AutoMixCNN(AutoMixMixin, SmallCNN):  # the pattern of docs/guide/learned_mixing.md
    def __init__(self, width: int = 32):
        super().__init__(width=width)
        self.configure_automix(feature_layer="block2", feature_channels=2 * width)


class SAMixCNN(SAMixMixin, SmallCNN):
    def __init__(self, width: int = 32):
        super().__init__(width=width)
        self.configure_samix(feature_layer="block2", feature_channels=2 * width)


PAIRS = {"automix": (AutoMixSmallCNN, AutoMixCNN), "samix": (SAMixSmallCNN, SAMixCNN)}
LOSSES = ("train/loss", "train/mix_loss", "train/clean_loss", "train/block_loss", "train/mask_loss")


def _fit(model: pl.LightningModule) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    pl.seed_everything(3)
    trainer = tiny_trainer(limit_train_batches=3, log_every_n_steps=1)
    trainer.fit(model, train_dataloaders=make_loader(batch_size=8, n=24))
    return {k: float(trainer.callback_metrics[k]) for k in LOSSES}, model.state_dict()


@pytest.mark.parametrize("method", sorted(PAIRS))
def test_demo_trains_exactly_as_the_documented_subclass(method):
    demo_class, pattern_class = PAIRS[method]
    torch.manual_seed(0)
    demo = demo_class(width=4)
    torch.manual_seed(0)
    pattern = pattern_class(width=4)
    assert type(demo.automix_block) is type(pattern.automix_block)
    options = [n for n in dir(pattern) if n.startswith("automix_") and not callable(getattr(pattern, n))]
    assert "automix_alpha" in options and "automix_lam_margin" in options
    assert {n: getattr(demo, n) for n in options} == {n: getattr(pattern, n) for n in options}
    demo_losses, demo_state = _fit(demo)
    pattern_losses, pattern_state = _fit(pattern)
    assert demo_losses == pattern_losses
    assert demo_losses["train/block_loss"] > 0
    assert demo_state.keys() == pattern_state.keys()
    for name in demo_state:
        torch.testing.assert_close(demo_state[name], pattern_state[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("demo_class", [AutoMixSmallCNN, SAMixSmallCNN])
def test_predict_step_returns_class_probabilities(demo_class):
    model = demo_class(width=4).eval()
    inputs = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        probs = model.predict_step((inputs, torch.zeros(5, dtype=torch.long)), 0)
        torch.testing.assert_close(probs, model(inputs).softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


def test_feature_channels_follow_the_feature_layer_or_are_required():
    assert AutoMixSmallCNN(width=4, feature_layer="block3").automix_feature_channels == 16
    assert SAMixSmallCNN(width=4, feature_layer="block1").automix_feature_channels == 4
    with pytest.raises(ValueError, match="feature_channels is needed for feature_layer 'block2.0'"):
        AutoMixSmallCNN(width=4, feature_layer="block2.0")
    assert AutoMixSmallCNN(width=4, feature_layer="block2.0", feature_channels=8).automix_feature_channels == 8


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "demo_class", "block"),
    [("automix", AutoMixSmallCNN, "PixelMixBlock"), ("samix", SAMixSmallCNN, "SAMixBlock")],
)
def test_example_config_builds_the_demo_with_the_authors_options(config, demo_class, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", "--config", str(ROOT / "examples" / f"mnist5k_{config}.yaml"), *TINY_CLI])
    model = cli.model
    assert type(model) is demo_class and type(model.automix_block).__name__ == block
    defaults = demo_class()
    hparams = {k: v for k, v in model.hparams.items() if not k.startswith("_")}  # LightningCLI adds _class_path
    assert hparams == dict(defaults.hparams) | {"lr": 0.003}  # the base job's lr, the rest the authors' defaults
    assert cli.trainer.global_step == 2 and "train/block_loss" in cli.trainer.callback_metrics
    assert not [cb for cb in cli.trainer.callbacks if type(cb).__module__.startswith("lightning_mix.")]


@pytest.mark.slow
def test_compare_runs_the_example_configs_and_stores_probabilities(tmp_path):
    out = tmp_path / "cmp"
    argv = ["--method", f"automix={ROOT / 'examples' / 'mnist5k_automix.yaml'}"]
    argv += ["--method", f"samix={ROOT / 'examples' / 'mnist5k_samix.yaml'}"]
    argv += ["--seeds", "0", "--output", str(out), "--n-resamples", "10", "--", *TINY_CLI[:-1]]
    argv += ["--model.init_args.width=4", "--trainer.limit_predict_batches=1", "--trainer.enable_progress_bar=false"]
    rows = compare.main(argv)
    assert {r["method"] for r in rows} == {"automix", "samix"}
    for method in ("automix", "samix"):
        stored = torch.load(out / method / "seed=0" / "predictions.pt", weights_only=True)
        assert stored["probs"].shape[1] == 10
        torch.testing.assert_close(stored["probs"].sum(-1), torch.ones(len(stored["labels"])))


@pytest.mark.parametrize(("config", "mixin"), [("automix", "AutoMixMixin"), ("samix", "SAMixMixin")])
def test_example_config_with_a_mixing_preset_is_refused_before_training(config, mixin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = ["--config", str(ROOT / "examples" / f"mnist5k_{config}.yaml")]
    configs += ["--config", str(ROOT / "callbacks" / "cutmix.yaml"), "--model.init_args.width=4"]
    with pytest.raises(
        ValueError, match=rf"MixingCallback mixes the batch, but .* is an? {mixin}, which .*remove the callback"
    ):
        run_cli(["fit", *configs, *TINY_CLI])
