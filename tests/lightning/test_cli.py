"""The ``lightning-mix`` command: every documented --config combination builds one of each callback and runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from lightning_mix.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny.yaml"
PRESETS = sorted((ROOT / "callbacks").glob("*.yaml"))


def preset_classes(path: Path) -> list[str]:
    config = yaml.safe_load(path.read_text())
    return [entry["class_path"].rsplit(".", 1)[-1] for entry in config["trainer"]["callbacks+"]]


def test_there_is_a_preset_for_every_public_callback():
    import lightning_mix.callbacks as callbacks

    covered = {name for path in PRESETS for name in preset_classes(path)}
    missing = set(callbacks.__all__) - covered
    assert not missing, f"callbacks without a preset in callbacks/: {sorted(missing)}"


BASE = ROOT / "examples" / "mnist5k.yaml"
MAIN_JOB = ROOT / "examples" / "main_job.yaml"
# a few batches of everything: the combinations are checked for what they build, not for accuracy
TINY_RUN = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.logger=false",
]
MIXING_CALLBACKS = {"MixingCallback", "ManifoldMixup", "RegMixup"}


def config_callbacks(path: Path) -> list[str]:
    """Class names a config adds (``trainer.callbacks+``) or sets (``trainer.callbacks``)."""
    trainer = yaml.safe_load(path.read_text()).get("trainer") or {}
    entries = (trainer.get("callbacks") or []) + (trainer.get("callbacks+") or [])
    return [entry["class_path"].rsplit(".", 1)[-1] for entry in entries]


def documented_combinations() -> list[tuple[str, ...]]:
    """Every ``lightning-mix fit --config A --config B ...`` written in the presets, the examples and
    the mixing guide pages (the combinations users are told to run)."""
    sources = [*PRESETS, *sorted((ROOT / "examples").glob("*.yaml"))]
    guides = [ROOT / "docs" / "guide" / name for name in ("mixing.md", "model_mixing.md", "learned_mixing.md")]
    sources += [p for p in guides if p.exists()]
    found = set()
    for path in sources:
        for match in re.finditer(r"lightning-mix fit((?: --config [\w/.-]+\.yaml)+)", path.read_text()):
            found.add(tuple(match.group(1).split()[1::2]))
    return sorted(found)


def lightning_mix_callbacks(trainer) -> list[str]:
    return [type(cb).__name__ for cb in trainer.callbacks if type(cb).__module__.startswith("lightning_mix.")]


def test_the_base_config_holds_no_callback_that_a_preset_provides():
    """The composition rule: presets append (``callbacks+``) to a base that has none of theirs."""
    assert config_callbacks(BASE) == []
    assert all(config_callbacks(ROOT / preset_base(p)) == [] for p in PRESETS)
    for preset in PRESETS:
        assert "callbacks" not in (yaml.safe_load(preset.read_text()).get("trainer") or {}), (
            f"{preset.name} sets trainer.callbacks (replacing the list); write it as trainer.callbacks+"
        )


def preset_base(path: Path) -> str:
    """The base config a preset composes with.

    Its ``# Base: <path>`` header line (regression presets such as cmixup.yaml compose with
    examples/diabetes.yaml), the ViT job for presets marked ``# requires: vit``, else examples/mnist5k.yaml.
    """
    text = path.read_text()
    match = re.search(r"^# Base: ([\w/.-]+\.yaml)$", text, flags=re.MULTILINE)
    if match:
        return match.group(1)
    return "examples/mnist5k_vit.yaml" if text.startswith("# requires: vit") else "examples/mnist5k.yaml"


def test_every_preset_combination_in_the_docs_is_tested():
    combos = documented_combinations()
    singles = {(preset_base(p), f"callbacks/{p.name}") for p in PRESETS}
    assert singles <= set(combos), f"presets without a documented composition: {sorted(singles - set(combos))}"


@pytest.mark.slow
@pytest.mark.parametrize("configs", documented_combinations(), ids=lambda c: "+".join(Path(p).stem for p in c))
def test_documented_combination_builds_exactly_one_of_each_callback(configs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit"]
    for config in configs:
        args += ["--config", str(ROOT / config)]
    cli = run_cli(args + TINY_RUN)
    expected = sorted(name for config in configs for name in config_callbacks(ROOT / config))
    assert sorted(lightning_mix_callbacks(cli.trainer)) == expected
    assert len(set(expected)) == len(expected), f"{configs} stacks a callback twice: {expected}"
    assert cli.trainer.state.finished


@pytest.mark.slow
@pytest.mark.parametrize(
    "second",
    ["callbacks/cutmix.yaml", "callbacks/manifold_mixup.yaml", "examples/main_job.yaml"],
)
def test_two_mixing_configs_are_refused_before_training(second, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mixup = ROOT / "callbacks" / "mixup.yaml"
    args = ["fit", "--config", str(BASE), "--config", str(mixup), "--config", str(ROOT / second)]
    with pytest.raises(ValueError, match=r"2 mixing callbacks \(.*\).*Keep one"):
        run_cli(args + TINY_RUN)


@pytest.mark.slow
def test_main_job_config_trains_and_tests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        [
            "fit",
            "--config",
            str(BASE),
            "--config",
            str(MAIN_JOB),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=2",
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert "test/acc" in metrics and 0.0 <= float(metrics["test/acc"]) <= 1.0
    assert "test/nll" in metrics


@pytest.mark.slow
def test_console_script_exits_zero_and_prints_test_metrics(tmp_path):
    import subprocess
    import sys

    script = Path(sys.executable).parent / "lightning-mix"
    assert script.exists(), "the lightning-mix console script is not installed next to python"
    proc = subprocess.run(
        [str(script), "fit", "--config", str(TINY), "--test_after_fit", "true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/acc" in proc.stdout


def test_main_destroys_the_process_group_even_when_the_command_fails(tmp_path):
    """A gloo group left to interpreter shutdown can abort a finished DDP run; main closes it."""
    import torch.distributed as dist

    from lightning_mix.cli import close_process_group, main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit):
            main(["fit", "--no_such_option", "1"])
        assert not dist.is_initialized()
        close_process_group()  # nothing left to close: a no-op, not an error
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store2'}", rank=0, world_size=1)
        close_process_group()  # the normal exit: barrier, then destroy
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


ADAMIXUP = ROOT / "examples" / "mnist5k_adamixup.yaml"


def test_adamixup_fit_line_is_documented_and_run():
    """The AdaMixUp demo's fit line is one of the combinations the slow test above runs."""
    assert ("examples/mnist5k_adamixup.yaml",) in documented_combinations()
    assert config_callbacks(ADAMIXUP) == []


@pytest.mark.slow
def test_adamixup_config_trains_the_adamixup_demo_with_the_base_options(tmp_path, monkeypatch):
    from lightning_mix.demos import AdaMixUpSmallCNN

    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", "--config", str(ADAMIXUP), *TINY_RUN, "--test_after_fit=false"])
    model = cli.model
    assert isinstance(model, AdaMixUpSmallCNN)
    assert model.hparams.width == 32 and model.hparams.lr == 0.003  # as examples/mnist5k.yaml
    assert model.adamixup_intrusion_weight == 1.0 and model.adamixup_policy_head[0].out_features == 100
    assert cli.trainer.global_step == 2 and "train/intrusion_loss" in cli.trainer.callback_metrics


@pytest.mark.slow
def test_adamixup_config_with_a_mixing_preset_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="AdaMixUpMixin"):
        run_cli(["fit", "--config", str(ADAMIXUP), "--config", str(ROOT / "callbacks" / "mixup.yaml"), *TINY_RUN])
