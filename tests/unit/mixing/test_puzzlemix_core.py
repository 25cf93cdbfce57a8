"""PuzzleMix core: energy vs the authors' construction, solvers vs brute force, transport, masks and targets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "references"))
from grid_brute_force import brute_force
from puzzlemix_authors import authors_energy, mask_transport

from lightning_mix.mixing import mix_targets
from lightning_mix.mixing.graphcut import (
    gco_available,
    grid_energy,
    solve_grid_gco,
    solve_grid_torch,
)
from lightning_mix.mixing.puzzlemix import PuzzleMixer, label_prior, puzzle_energy
from lightning_mix.mixing.transport import permute_blocks, transport_sources

needs_gco = pytest.mark.skipif(not gco_available(), reason="optional gco-wrapper not installed")


def _random_energy(b, n, m, n_labels, seed, negative_weights=False):
    g = torch.Generator().manual_seed(seed)
    unary = torch.rand(b, n, m, n_labels, generator=g, dtype=torch.float64)
    low = -0.3 if negative_weights else 0.0
    w_v = torch.rand(b, n - 1, m, generator=g, dtype=torch.float64) * 0.6 + low
    w_h = torch.rand(b, n, m - 1, generator=g, dtype=torch.float64) * 0.6 + low
    return unary, w_v, w_h


@pytest.mark.parametrize("n_labels", [2, 3, 4])
@pytest.mark.parametrize("block_num", [2, 4, 8])
def test_energy_matches_the_authors_construction(n_labels, block_num):
    g = torch.Generator().manual_seed(block_num * 10 + n_labels)
    x = torch.rand(6, 3, 32, 32, generator=g)
    grad = torch.rand(6, 32, 32, generator=g)
    index = torch.randperm(6, generator=g)
    lam = torch.rand(6, generator=g) * 0.8 + 0.1
    from lightning_mix.mixing.input_saliency import pool_saliency

    sal = pool_saliency(grad, (block_num, block_num))
    unary, w_v, w_h = puzzle_energy(sal, sal[index], x, x[index], lam, 1.2, 0.5, 0.2, 4, n_labels)
    reference = authors_energy(x, grad, index, block_num, lam, 1.2, 0.5, 0.2, 4, n_labels)
    for i, (u_ref, v_ref, h_ref) in enumerate(reference):
        torch.testing.assert_close(unary[i], torch.as_tensor(u_ref, dtype=torch.float32), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(w_v[i], torch.as_tensor(v_ref, dtype=torch.float32), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(w_h[i], torch.as_tensor(h_ref, dtype=torch.float32), rtol=1e-4, atol=1e-7)


def test_label_prior_is_the_binomial_table():
    lam = torch.tensor([0.3])
    prior = label_prior(lam, 3, eta=0.2, cells=4)
    expected = -0.2 * torch.log(torch.tensor([0.09, 0.42, 0.49]) + 1e-8) / 4
    torch.testing.assert_close(prior[0], expected)


@pytest.mark.parametrize("shape", [(2, 2, 3), (2, 3, 2), (3, 2, 3), (2, 2, 4)])
def test_torch_solver_is_exact_on_tiny_grids(shape):
    unary, w_v, w_h = _random_energy(6, *shape, seed=sum(shape), negative_weights=True)
    labels = solve_grid_torch(unary, w_v, w_h)
    energies = grid_energy(labels, unary, w_v, w_h)
    for i in range(6):
        best, _ = brute_force(unary[i].tolist(), w_v[i].tolist(), w_h[i].tolist())
        assert float(energies[i]) == pytest.approx(best, abs=1e-9)


def test_torch_local_search_stays_close_to_the_optimum_on_3x3_grids():
    unary, w_v, w_h = _random_energy(20, 3, 3, 3, seed=7)
    labels = solve_grid_torch(unary, w_v, w_h, exhaustive_limit=0)  # force the local search
    energies = grid_energy(labels, unary, w_v, w_h)
    best = torch.tensor(
        [brute_force(unary[i].tolist(), w_v[i].tolist(), w_h[i].tolist())[0] for i in range(20)], dtype=torch.float64
    )
    gap = (energies - best) / best.abs()
    assert (gap >= -1e-9).all()  # never below the optimum: the energy is evaluated consistently
    assert float(gap.mean()) < 0.02
    assert int((gap < 1e-9).sum()) >= 14


@needs_gco
@pytest.mark.parametrize("shape", [(2, 3, 2), (3, 3, 2), (2, 2, 3)])
def test_gco_solver_agrees_with_brute_force(shape):
    unary, w_v, w_h = _random_energy(6, *shape, seed=3 + sum(shape))
    labels = solve_grid_gco(unary, w_v, w_h)
    energies = grid_energy(labels, unary, w_v, w_h)
    for i in range(6):
        best, _ = brute_force(unary[i].tolist(), w_v[i].tolist(), w_h[i].tolist())
        # int32 rounding of the scaled costs (the authors' large_val) bounds the difference
        assert float(energies[i]) == pytest.approx(best, abs=1e-3)


def test_grid_solvers_reject_mismatched_weights():
    unary, w_v, w_h = _random_energy(1, 2, 2, 3, seed=0)
    with pytest.raises(ValueError, match="edge weights must be"):
        solve_grid_torch(unary, w_h, w_v.transpose(1, 2)[:, :1])


@pytest.mark.parametrize("visible_share", [0.02, 0.5, 0.98])
def test_transport_sources_are_permutations_and_keep_every_move_of_the_authors_plan(visible_share):
    g = torch.Generator().manual_seed(0)
    matched = 0
    for n in (2, 4, 7, 14):
        visible = torch.rand(16, n, n, generator=g) < visible_share
        sal = torch.rand(16, n, n, generator=g) ** 4
        sal = sal / sal.flatten(1).sum(1).view(-1, 1, 1)
        sources = transport_sources(visible, sal, eps=0.8)
        assert torch.equal(sources.sort(dim=1).values, torch.arange(n * n).expand(16, -1))
        plan = mask_transport(visible.float().unsqueeze(1), sal, eps=0.8)
        # every move the authors' plan makes (plan[p, q] = 1: source p to destination q) is kept;
        # only the blocks their plan drops are placed by the completion
        batch, src, dst = torch.nonzero(plan, as_tuple=True)
        assert torch.equal(sources[batch, dst], src)
        matched += int(src.numel())
        full = plan.sum(dim=(1, 2)) == n * n
        for i in torch.nonzero(full).flatten().tolist():
            assert torch.equal(sources[i], plan[i].argmax(dim=0))
    assert matched >= 100  # moves compared (the authors keep few with sparse masks)


def test_transport_is_the_identity_for_uniform_saliency():
    visible = torch.rand(4, 4, 4) > 0.5
    sources = transport_sources(visible, torch.full((4, 4, 4), 1 / 16), eps=0.8)
    assert torch.equal(sources, torch.arange(16).expand(4, -1))


def test_permute_blocks_moves_whole_blocks():
    x = torch.arange(2 * 16.0).view(1, 2, 4, 4)
    out = permute_blocks(x, torch.tensor([[3, 2, 1, 0]]), 2)
    # destination 0 (top-left) receives source block 3 (bottom-right), and so on
    torch.testing.assert_close(out[..., :2, :2], x[..., 2:, 2:])
    torch.testing.assert_close(out[..., :2, 2:], x[..., 2:, :2])
    torch.testing.assert_close(out[..., 2:, :2], x[..., :2, 2:])
    torch.testing.assert_close(out[..., 2:, 2:], x[..., :2, :2])


@pytest.mark.parametrize("transport", [True, False])
@pytest.mark.parametrize("block_num", [2, 4, 8])
def test_masks_are_valid_and_targets_follow_the_mixed_batch_contract(transport, block_num):
    g = torch.Generator().manual_seed(block_num)
    x = torch.rand(8, 3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.softmax(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=1)
    sal = torch.rand(8, 16, 16, generator=g) ** 3
    mixer = PuzzleMixer(transport=transport, solver="torch")
    out = mixer(x, t, sal, block_num, torch.Generator().manual_seed(1))
    assert out.inputs.shape == x.shape and out.inputs.dtype == x.dtype
    assert ((out.lam >= 0) & (out.lam <= 1)).all()
    torch.testing.assert_close(out.targets, mix_targets(t, out.index, out.lam.double()))
    assert torch.equal(out.index.sort().values, torch.arange(8))
    # lam is a mean of per-block weights in {0, 1/2, 1}
    levels = out.lam * 2 * block_num**2
    torch.testing.assert_close(levels, levels.round())
    if transport:
        return
    # without transport each block is w * own + (1 - w) * partner with one w in {0, 1/2, 1}; lam = mean w
    block = 16 // block_num

    def blocks(z):
        return (
            z.reshape(8, 3, block_num, block, block_num, block).permute(0, 2, 4, 1, 3, 5).reshape(8, block_num**2, -1)
        )

    mixed_b, own_b, partner_b = blocks(out.inputs), blocks(x), blocks(x[out.index])
    diff = own_b - partner_b
    w = ((mixed_b - partner_b) * diff).sum(-1) / diff.square().sum(-1).clamp_min(1e-12)
    self_pair = out.index == torch.arange(8)
    w = torch.where(self_pair.view(-1, 1), w.new_tensor(0.5), w)
    w_levels = torch.where(self_pair.view(-1, 1), (out.lam.double() * 2).round().view(-1, 1) / 2, (w * 2).round() / 2)
    torch.testing.assert_close(mixed_b, partner_b + w_levels.unsqueeze(-1) * diff)
    torch.testing.assert_close(w_levels.mean(1), out.lam.double()) if not self_pair.any() else None


@pytest.mark.parametrize("lam, expected", [(0.9, 1.0), (0.5, 0.5), (0.2, 0.0), (0.62, 0.5), (0.7, 1.0)])
def test_uniform_saliency_without_data_term_reduces_to_mixup_with_quantised_lam(lam, expected):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    t = torch.eye(4)[torch.randint(0, 4, (6,), generator=g)]
    index = torch.randperm(6, generator=g)
    for solver in ("torch",) + (("gco",) if gco_available() else ()):
        mixer = PuzzleMixer(gamma=0.0, solver=solver)
        out = mixer.mix(x, t, torch.ones(6, 16, 16), 4, index, torch.full((6,), lam))
        torch.testing.assert_close(out.lam, torch.full((6,), expected))
        torch.testing.assert_close(out.inputs, torch.lerp(x[index], x, expected))
