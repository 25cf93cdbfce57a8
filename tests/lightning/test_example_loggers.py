"""Every example job runs with the logger it configures: the model's and the data module's
hyperparameters merge into one hparams.yaml (Lightning refuses a key the two set to different values)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_mix.cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _logged_jobs() -> list[tuple[str, ...]]:
    """Each example that configures a logger, with the model configs documented on top of it."""
    jobs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        logger = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("logger")
        if isinstance(logger, dict):
            jobs.append((path.name,))
    jobs.append(("mnist5k_vit.yaml", "mnist5k_smmix_vit.yaml"))  # SMMix's model on the ViT base job
    return jobs


JOBS = _logged_jobs()


def test_the_demo_jobs_that_caused_the_clash_are_covered():
    names = {name for job in JOBS for name in job}
    for name in ("mnist5k_sumix.yaml", "mnist5k_automix.yaml", "mnist5k_smmix_vit.yaml"):
        assert name in names


@pytest.mark.parametrize("job", JOBS, ids=["+".join(job) for job in JOBS])
def test_example_job_logs_merged_hyperparameters(job, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    configs = [arg for name in job for arg in ("--config", str(EXAMPLES / name))]
    cli = run_cli(
        [
            "fit",
            *configs,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",  # 2, not 1: the CLI reads 1 as the float 1.0, the whole loader
            "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            "--trainer.enable_checkpointing=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        ]
    )
    logged = yaml.safe_load((Path(cli.trainer.logger.log_dir) / "hparams.yaml").read_text())
    public = {key for key in logged if not key.startswith("_")}  # LightningCLI adds _class_path, _instantiator
    model_keys = {key for key in cli.model.hparams if not key.startswith("_")}
    data_keys = {key for key in cli.datamodule.hparams if not key.startswith("_")}
    assert model_keys and data_keys and model_keys | data_keys == public
