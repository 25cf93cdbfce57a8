"""Ensemble under DDP (2 CPU processes) gives one process's weights, temperature, test metrics and predictions."""

from __future__ import annotations

import pytest
import torch
from ddp_utils import run_ddp_script
from ensemble_ddp import N_VAL, KeepPredictions, loader, make_problem
from tiny_trainer import tiny_trainer

from lightning_mix.modules import Ensemble


@pytest.mark.slow
def test_validate_test_and_predict_under_ddp_equal_one_process(tmp_path):
    ranks = run_ddp_script("ensemble_ddp.py", tmp_path)

    problem = make_problem()
    ensemble = Ensemble(members=problem["members"], weighting="nll", temperature_scaling=True)
    keep = KeepPredictions()
    trainer = tiny_trainer(callbacks=[keep])
    trainer.validate(ensemble, dataloaders=loader(problem["x_val"], problem["y_val"]), verbose=False)
    test = trainer.test(ensemble, dataloaders=loader(problem["x_test"], problem["y_test"]), verbose=False)[0]
    trainer.predict(ensemble, dataloaders=loader(problem["x_val"], problem["y_val"]), return_predictions=False)
    probs = torch.cat(keep.probs)
    assert not torch.allclose(ensemble.weights, torch.full((3,), 1 / 3, dtype=torch.float64), atol=1e-2)
    assert abs(float(ensemble.temperature) - 1.0) > 1e-2  # both fits moved away from their start

    for rank in ranks:
        # fitted on the 201 validation samples exactly once each (not on the sample DistributedSampler repeats)
        torch.testing.assert_close(rank["weights"], ensemble.weights, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(rank["temperature"], ensemble.temperature, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(rank["batch_sampler_weights"], ensemble.weights, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(rank["batch_sampler_temperature"], ensemble.temperature, rtol=1e-6, atol=1e-8)
        for key, value in test.items():
            assert rank["test"][key] == pytest.approx(value, rel=1e-5), key
    # predict: each rank predicts its share of the samples (no repeats); together they are one process's
    indices = torch.cat([rank["indices"] for rank in ranks])
    assert sorted(indices.tolist()) == list(range(N_VAL))
    gathered = torch.empty_like(probs)
    gathered[indices] = torch.cat([rank["probs"] for rank in ranks])
    torch.testing.assert_close(gathered, probs, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_validation_shards_of_different_sizes_are_refused(tmp_path):
    with pytest.raises(AssertionError, match=r"needs as many on each; got \[100, 101\].*use_distributed_sampler"):
        run_ddp_script("ensemble_ddp.py", tmp_path, "uneven", timeout=120)
