"""uniform_soup and greedy_soup against independent references (float64 means, a naive greedy search)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from torch import nn

from lightning_mix.averaging import (
    GreedySoup,
    greedy_soup,
    load_ingredient,
    recalibrate_batchnorm,
    save_ingredient,
    uniform_soup,
)


def _ingredients(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "w": torch.randn(4, 3, generator=g),
            "b": torch.randn(3, generator=g),
            "bn.num_batches_tracked": torch.tensor(10 * (i + 1)),
        }
        for i in range(k)
    ]


def test_uniform_soup_equals_float64_mean_and_copies_integer_buffers_from_first():
    ings = _ingredients(5)
    soup = uniform_soup(ings)
    for key in ("w", "b"):
        expected = torch.stack([i[key].double() for i in ings]).mean(0)
        torch.testing.assert_close(soup[key].double(), expected, rtol=0, atol=1e-6)
        assert soup[key].dtype == torch.float32
    assert soup["bn.num_batches_tracked"].item() == 10
    assert soup["bn.num_batches_tracked"].dtype == torch.int64
    assert soup["w"].data_ptr() != ings[0]["w"].data_ptr()  # inputs are not modified
    assert torch.equal(ings[0]["w"], _ingredients(5)[0]["w"])


def test_uniform_soup_weights_are_normalised():
    ings = _ingredients(3, seed=1)
    soup = uniform_soup(ings, weights=[1.0, 0.0, 3.0])
    torch.testing.assert_close(soup["w"], 0.25 * ings[0]["w"] + 0.75 * ings[2]["w"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        uniform_soup(ings, weights=[1.0, -1.0, 1.0])


def test_bfloat16_ingredients_are_accumulated_in_float32():
    # bf16 has 8 bits of mantissa: 256 + 1 is not representable, so a bf16 running sum drifts
    ings = [{"w": torch.full((4,), 256.0 + 2.0 * i, dtype=torch.bfloat16)} for i in range(8)]
    soup = uniform_soup(ings)
    expected = torch.stack([i["w"].double() for i in ings]).mean(0).to(torch.bfloat16)
    assert soup["w"].dtype == torch.bfloat16
    assert torch.equal(soup["w"], expected)


def test_files_and_lightning_checkpoints_are_ingredients(tmp_path):
    ings = _ingredients(3, seed=2)
    paths = [save_ingredient(ings[0], tmp_path / "a.pt"), str(save_ingredient(ings[1], tmp_path / "b.pt"))]
    ckpt = tmp_path / "c.ckpt"
    torch.save({"epoch": 3, "state_dict": ings[2], "hyper_parameters": {"lr": 0.1}}, ckpt)
    soup = uniform_soup([*paths, ckpt])
    torch.testing.assert_close(soup["w"], uniform_soup(ings)["w"], rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["a.pt", "b.pt", "c.ckpt"]  # no temp files left
    assert torch.equal(load_ingredient(paths[0])["b"], ings[0]["b"])


def test_mismatched_ingredients_raise_clear_errors(tmp_path):
    a = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="has a tensor .v. that the first ingredient lacks|has no tensor .w."):
        uniform_soup([a, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="shape"):
        uniform_soup([a, {"w": torch.zeros(3)}])
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        uniform_soup([a, tmp_path / "missing.pt"])


def _distance_metric(target):
    def evaluate(sd):
        return -float(((sd["w"].double() - target) ** 2).sum())

    return evaluate


def test_greedy_soup_leaves_out_the_ingredient_that_hurts():
    g = torch.Generator().manual_seed(3)
    target = torch.zeros(4, 3, dtype=torch.float64)
    good = [{"w": torch.randn(4, 3, generator=g) * 0.5} for _ in range(4)]
    bad = {"w": torch.full((4, 3), 3.0)}  # far from the optimum: averaging it in always hurts
    ings = [good[0], bad, *good[1:]]
    soup = greedy_soup(ings, _distance_metric(target))
    assert isinstance(soup, GreedySoup)
    assert 1 not in soup.kept
    kept_mean = torch.stack([ings[i]["w"] for i in soup.kept]).mean(0)
    torch.testing.assert_close(soup["w"], kept_mean, rtol=0, atol=1e-6)
    assert soup.metric == pytest.approx(_distance_metric(target)({"w": kept_mean}), rel=1e-5)
    assert soup.metric >= max(soup.ingredient_metrics)
    assert [h[0] for h in soup.history] == sorted(range(5), key=lambda i: -soup.ingredient_metrics[i])[1:]


def _naive_greedy(ings, evaluate, mode, strict):
    scores = [evaluate(i) for i in ings]
    sign = 1 if mode == "max" else -1
    order = sorted(range(len(ings)), key=lambda i: (-sign * scores[i], i))
    kept, current = [order[0]], scores[order[0]]
    for i in order[1:]:
        candidate = {"w": torch.stack([ings[j]["w"].double() for j in [*kept, i]]).mean(0)}
        score = evaluate(candidate)
        if (sign * score > sign * current) if strict else (sign * score >= sign * current):
            kept.append(i)
            current = score
    return kept


@pytest.mark.parametrize("mode,strict", list(itertools.product(["max", "min"], [False, True])))
def test_greedy_soup_matches_a_naive_search_that_recomputes_each_mean(mode, strict):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        target = torch.randn(6, generator=g).double()
        ings = [{"w": target.float() + torch.randn(6, generator=g) * (0.2 + 2.0 * (i % 3))} for i in range(7)]
        distance = _distance_metric(target)
        evaluate = distance if mode == "max" else (lambda sd, distance=distance: -distance(sd))
        soup = greedy_soup(ings, evaluate, mode=mode, strict=strict)
        assert soup.kept == _naive_greedy(ings, evaluate, mode, strict)
        expected = torch.stack([ings[j]["w"].double() for j in soup.kept]).mean(0)
        torch.testing.assert_close(soup["w"].double(), expected, rtol=0, atol=1e-6)


def test_strict_rejects_ties_non_strict_keeps_them():
    a = {"w": torch.tensor([1.0, 2.0])}
    twin = {"w": torch.tensor([1.0, 2.0])}
    worse = {"w": torch.tensor([5.0, 5.0])}

    def quantised(sd):  # accuracy-like: ties are common
        return float(torch.round(-(sd["w"] - torch.tensor([1.0, 2.0])).abs().sum()))

    assert greedy_soup([a, twin, worse], quantised).kept == [0, 1]
    assert greedy_soup([a, twin, worse], quantised, strict=True).kept == [0]


def test_given_metrics_skip_single_evaluations_and_nan_sorts_last():
    ings = _ingredients(3, seed=4)
    calls = []

    def evaluate(sd):
        calls.append(sd)
        return 1.0  # every candidate beats the best ingredient

    soup = greedy_soup(ings, evaluate, metrics=[0.1, float("nan"), 0.5])
    assert len(calls) == 2  # only the two candidate soups
    assert soup.kept == [2, 0, 1]
    assert soup["bn.num_batches_tracked"].item() == 30  # integer buffers from the best ingredient


def test_recalibrate_hook_runs_before_each_candidate_evaluation_only():
    torch.manual_seed(5)
    data = [torch.randn(16, 3) * 2 + 1 for _ in range(3)]
    ings = []
    for _ in range(3):
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        ings.append({k: v.clone() for k, v in model.state_dict().items()})
    work = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    recalibrated = []

    def recalibrate(sd):
        work.load_state_dict(sd)
        recalibrate_batchnorm(work, data)
        recalibrated.append(True)
        return work.state_dict()

    seen_stats = []

    def evaluate(sd):
        seen_stats.append(sd["1.running_mean"].clone())
        return 5.0  # every candidate beats the ingredients: all are kept

    soup = greedy_soup(ings, evaluate, metrics=[3.0, 2.0, 1.0], recalibrate=recalibrate)
    assert soup.kept == [0, 1, 2] and len(recalibrated) == 2  # the two candidates; the result is the last one
    reference = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    reference.load_state_dict(uniform_soup(ings))
    h = reference[0](torch.cat(data)).double()
    torch.testing.assert_close(soup["1.running_mean"].double(), h.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(soup["1.running_var"].double(), h.var(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen_stats[-1], soup["1.running_mean"])


def test_greedy_soup_from_files_loads_one_at_a_time(tmp_path, monkeypatch):
    ings = _ingredients(4, seed=6)
    paths = [save_ingredient(sd, tmp_path / f"ing{i}.pt") for i, sd in enumerate(ings)]
    import lightning_mix.averaging.soups as soups

    loaded = []
    real = soups.load_ingredient

    def counting(ingredient, *args, **kwargs):
        loaded.append(ingredient)
        return real(ingredient, *args, **kwargs)

    monkeypatch.setattr(soups, "load_ingredient", counting)
    target = torch.zeros(4, 3, dtype=torch.float64)
    soup = greedy_soup(paths, _distance_metric(target))
    assert len(loaded) == 4 + 4  # each file once for its metric, once for the search
    reference = greedy_soup(ings, _distance_metric(target))
    assert soup.kept == reference.kept
    torch.testing.assert_close(soup["w"], reference["w"], rtol=0, atol=0)


class _NotATensor:
    pass


def test_files_with_arbitrary_objects_are_refused_with_a_hint(tmp_path):
    import pickle

    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": _NotATensor()}, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only=False"):
        uniform_soup([path])


def test_recalibrated_greedy_soup_is_exactly_the_last_accepted_candidate():
    # a rejection after the last acceptance undoes the running mean with float32 rounding; the
    # returned soup must still be bit for bit the weights (and BatchNorm statistics) that were scored
    torch.manual_seed(8)
    data = [torch.randn(16, 3) for _ in range(2)]
    ings = []
    for _ in range(4):
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        ings.append({k: v.clone() * 3.7 if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()})
    work = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    def recalibrate(sd):
        work.load_state_dict(sd)
        recalibrate_batchnorm(work, data)
        return {k: v.clone() for k, v in work.state_dict().items()}

    scored = []
    scores = iter([9.0, 0.0, 0.0])  # candidate 2 accepted, candidates 3 and 4 rejected

    def evaluate(sd):
        scored.append({k: v.clone() for k, v in sd.items()})
        return next(scores)

    soup = greedy_soup(ings, evaluate, metrics=[4.0, 3.0, 2.0, 1.0], recalibrate=recalibrate)
    assert soup.kept == [0, 1] and soup.metric == 9.0
    for key, value in scored[0].items():
        assert torch.equal(soup[key], value), key
