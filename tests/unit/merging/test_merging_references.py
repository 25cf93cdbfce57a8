"""Merge methods against minimal re-implementations of the authors' code (tests/references/merging_authors.py).

Every model here is one tensor, so the authors' flattened-model rules and our per-tensor rules see
the same vector. The maximum differences these tests allow are the ones docs/benchmarks/merging.md
reports.
"""

from __future__ import annotations

import pytest
import torch
from references import merging_authors as ref
from torch import nn

from lightning_mix.merging import (
    consensus,
    fisher,
    fisher_information,
    pcb,
    pcb_weights,
    regmean,
    regmean_grams,
    ties,
    ties_kept_count,
    trim_top_k,
)


def _models(tasks: int = 3, shape=(10, 10), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=gen)
    taus = [torch.randn(shape, generator=gen) * (0.5 + i) for i in range(tasks)]
    return base, taus


def _flat(taus):
    return torch.stack([t.flatten() for t in taus])


@pytest.mark.parametrize("density", [0.07, 0.14, 0.2, 0.5])
def test_ties_matches_the_authors(density):
    base, taus = _models()
    got = ties({"w": base}, [{"w": base + t} for t in taus], density=density, lam=0.8)["w"]
    expected = base + 0.8 * ref.ties_merging(_flat(taus), density).reshape(base.shape)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_ties_matches_mergekit_with_its_rules():
    base, taus = _models(seed=1)
    got = ties({"w": base}, [{"w": base + t} for t in taus], density=0.3, keep="mergekit", zero_sign="positive")["w"]
    torch.testing.assert_close(got, base + ref.mergekit_ties(_flat(taus), 0.3).reshape(base.shape), rtol=0, atol=1e-6)


def test_kept_count_regression_density_times_n_is_exact():
    # ceil(0.07 * 100) was 8 because 0.07 * 100 == 7.000000000000001 in floating point
    assert ties_kept_count(0.07, 100, "ceil") == 7 and ties_kept_count(0.14, 100, "ceil") == 15 - 1
    assert ties_kept_count(0.07, 100, "authors") == 8 and ties_kept_count(0.07, 100, "mergekit") == 7
    tau = torch.randn(2, 100, generator=torch.Generator().manual_seed(0))
    assert (trim_top_k(tau, 0.07, keep="ceil") != 0).sum(dim=1).tolist() == [7, 7]


@pytest.mark.parametrize(
    ("first", "zero_sign", "expected_first"),
    [
        # sums [0, +, +]: the tensor's majority sign is +, so the + entry wins at the zero sum
        ([[2.0, 1.0, 3.0], [-2.0, 1.0, 3.0]], "majority", 2.0),
        # sums [0, -, -]: majority -, the authors keep -2; mergekit's +1 keeps 2; "zero" keeps nothing
        ([[2.0, -1.0, -3.0], [-2.0, -1.0, -3.0]], "majority", -2.0),
        ([[2.0, -1.0, -3.0], [-2.0, -1.0, -3.0]], "positive", 2.0),
        ([[2.0, -1.0, -3.0], [-2.0, -1.0, -3.0]], "zero", 0.0),
    ],
)
def test_ties_sign_at_an_exactly_zero_elected_sum(first, zero_sign, expected_first):
    taus = torch.tensor(first)
    base = {"w": torch.zeros(3)}
    density = 0.99 if zero_sign == "majority" else 1.0  # the authors' kthvalue fails at density 1; 0.99 keeps all 3
    got = ties(base, [{"w": t} for t in taus], density=density, zero_sign=zero_sign)["w"]
    assert got[0].item() == expected_first
    if zero_sign == "majority":
        torch.testing.assert_close(got, ref.ties_merging(taus, density))
    if zero_sign == "positive":
        torch.testing.assert_close(got, ref.mergekit_ties(taus, 1.0))


@pytest.mark.parametrize("keep_ratio", [0.07, 0.1, 0.2])
def test_pcb_matches_the_authors(keep_ratio):
    base, taus = _models(shape=(10, 10), seed=2)
    got = pcb({"w": base}, [{"w": base + t} for t in taus], keep_ratio=keep_ratio, lam=1.0)["w"]
    expected = base + ref.pcb_merge(_flat(taus), keep_ratio).reshape(base.shape)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_pcb_kept_count_regression():
    tau = torch.randn(2, 100, generator=torch.Generator().manual_seed(3))
    # 7 kept per row, the lowest of them at weight 0 after min-max: 6 positive weights (8 kept before the fix)
    assert (pcb_weights(tau, 0.07) > 0).sum(dim=1).tolist() == [6, 6]


@pytest.mark.parametrize("merge", ["task_arithmetic", "ties"])
def test_consensus_matches_the_authors(merge):
    base, taus = _models(tasks=3, shape=(200,), seed=4)
    got = consensus({"w": base}, [{"w": base + t} for t in taus], k=2, mask_lam=0.4, lam=0.3, merge=merge)["w"]
    ft = torch.stack([base + t for t in taus])
    expected = ref.consensus(base, ft, k=2, mask_lam=0.4, lam=0.3, use_ties=merge == "ties", density=0.2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("favor", "normalize"), [(True, True), (False, False), (True, False), (False, True)])
def test_fisher_merge_matches_the_reference(favor, normalize):
    gen = torch.Generator().manual_seed(5)
    models = [{"w": torch.randn(4, 3, generator=gen), "b": torch.randn(4, generator=gen)} for _ in range(3)]
    fishers = [{k: torch.rand(v.shape, generator=gen) ** 3 for k, v in m.items()} for m in models]
    for f in fishers:
        f["w"][0, :] = 0.0  # entries no example touched: the floor decides
    coefficients = [0.5, 0.3, 0.2]
    got = fisher(models, fishers, weights=coefficients, normalize_fishers=normalize, favor_target_model=favor)
    expected = ref.fisher_merge(
        [[m["w"], m["b"]] for m in models], [[f["w"], f["b"]] for f in fishers], coefficients, 1e-6, favor, normalize
    )
    torch.testing.assert_close(got["w"], expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["b"], expected[1], rtol=1e-5, atol=1e-6)


def test_exact_fisher_is_the_probability_weighted_sum_over_classes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(6, 4)
    got = fisher_information(net, [(x,)], labels="exact")
    expected = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(6):
        probs = torch.softmax(net(x[i : i + 1]), dim=-1)[0].detach()
        for c in range(3):
            net.zero_grad()
            torch.log_softmax(net(x[i : i + 1]), dim=-1)[0, c].backward()
            for n, p in net.named_parameters():
                expected[n] += probs[c] * p.grad**2 / 6
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-4, atol=1e-7)


def test_regmean_normalised_grams_weight_each_model_equally():
    gen = torch.Generator().manual_seed(6)
    xs = [torch.randn(10, 3, generator=gen), torch.randn(90, 3, generator=gen) * 2 + 0.3]
    layers = [nn.Linear(3, 2, bias=False) for _ in xs]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(2, 3, generator=gen))
    grams = [regmean_grams(layer, [(x,)]) for layer, x in zip(layers, xs)]
    torch.testing.assert_close(grams[1]["weight"], xs[1].T @ xs[1] / 90)
    merged = regmean([layer.state_dict() for layer in layers], grams, alpha=1.0)["weight"]
    # independent reference: least squares with each model's rows scaled by 1 / sqrt(N_i)
    design = torch.cat([x / len(x) ** 0.5 for x in xs]).double()
    target = torch.cat([x @ layer.weight.detach().T / len(x) ** 0.5 for x, layer in zip(xs, layers)]).double()
    torch.testing.assert_close(merged.double(), torch.linalg.lstsq(design, target).solution.T, rtol=1e-4, atol=1e-5)
    summed = [regmean_grams(layer, [(x,)], normalize=False) for layer, x in zip(layers, xs)]
    assert (regmean([layer.state_dict() for layer in layers], summed, alpha=1.0)["weight"] - merged).abs().max() > 1e-3
