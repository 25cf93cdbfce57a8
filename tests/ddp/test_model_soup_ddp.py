"""ModelSoup under DDP (2 CPU processes): identical weights on every rank, rank 0 writes, exact scores."""

from __future__ import annotations

import pytest
import torch
from ddp_utils import run_ddp_script
from soup_common import SoupData, SoupNet

from lightning_mix.averaging import load_ingredient, recalibrate_batchnorm, uniform_soup

pytestmark = pytest.mark.slow


def test_ddp_two_processes_end_identical_and_only_rank0_writes(tmp_path):
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


def _accuracy(state_dict, x, y) -> float:
    model = SoupNet()
    model.load_state_dict(state_dict)
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(-1) == y).double().mean().item()


def test_ddp_scores_are_exact_over_unequal_shards(tmp_path):
    a, b = run_ddp_script("soup_ddp_exact.py", tmp_path)
    assert a["results"] == b["results"]
    data = SoupData()
    data.setup()
    x, y = data.val_set.tensors
    gaps = []
    for epoch, ingredient in enumerate(a["ingredients"]):
        exact = _accuracy(ingredient, x, y)  # over all 96 samples
        assert a["results"][f"epoch={epoch}"] == pytest.approx(exact, abs=1e-12), epoch
        # the mean of the ranks' means (64 and 32 samples) weighs rank 1's samples twice
        mean_of_means = (_accuracy(ingredient, x[:64], y[:64]) + _accuracy(ingredient, x[64:], y[64:])) / 2
        gaps.append(abs(mean_of_means - exact))
    assert max(gaps) > 0.005  # so the test tells the two reductions apart
    uniform = uniform_soup(a["ingredients"])
    assert a["results"]["uniform"] == pytest.approx(_accuracy(uniform, x, y), abs=1e-12)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    # the module holds the uniform soup (keep="uniform"): its weights are the ingredients' mean
    torch.testing.assert_close(a["state_dict"]["net.0.weight"], uniform["net.0.weight"], rtol=0, atol=1e-6)
