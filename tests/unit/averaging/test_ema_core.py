"""The torch-only averaging core: EMA and running-mean updates, copies, decay schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_mix.averaging import (
    averaging_copy,
    averaging_tensors,
    ema_decay_at,
    ema_update_,
    ema_warmup_decay,
    running_mean_update_,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _train_step(model: nn.Module, seed: int) -> None:
    """Move the weights and the BN statistics the way training would (deterministically)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    model(torch.randn(8, 2, 6, 6, generator=g))  # BN running stats + num_batches_tracked
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def test_ema_matches_averaged_model_with_ema_multi_avg_fn():
    model = _net()
    decay = 0.9
    reference = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    shadow = None
    for step in range(6):
        _train_step(model, step)
        reference.update_parameters(model)  # first call copies, later ones lerp
        if shadow is None:
            shadow = averaging_copy(model)
        else:
            ema_update_(shadow, model, decay)
    ours = dict(zip(model.state_dict().keys(), shadow))
    for name, value in reference.module.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(ours[name], value), name
    # integer buffers: ours copies the model's count; AveragedModel's EMA blends it (the pitfall)
    tracked = model.state_dict()["1.num_batches_tracked"]
    assert ours["1.num_batches_tracked"].item() == tracked.item() == 6
    assert ours["1.num_batches_tracked"].dtype == torch.long


def test_ema_on_modules_in_place_and_by_hand():
    avg, cur = _net(), _net()
    with torch.no_grad():
        for p in cur.parameters():
            p.fill_(1.0)
        for p in avg.parameters():
            p.fill_(0.0)
    avg[1].num_batches_tracked.fill_(3)
    cur[1].num_batches_tracked.fill_(7)
    ema_update_(avg, cur, 0.75)
    for p in avg.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.25))
    assert avg[1].num_batches_tracked.item() == 7
    # running_var buffers (floating) were averaged too: 1 and 1 -> 1
    assert torch.allclose(avg[1].running_var, torch.ones(4))


def test_lists_and_state_dicts():
    a = [torch.zeros(3), torch.tensor([5], dtype=torch.int64)]
    b = [torch.full((3,), 2.0), torch.tensor([9], dtype=torch.int64)]
    ema_update_(a, b, 0.5)
    assert torch.equal(a[0], torch.ones(3)) and a[1].item() == 9
    sd_a = {"w": torch.zeros(2), "n": torch.tensor(1)}
    sd_b = {"w": torch.ones(2), "n": torch.tensor(4)}
    ema_update_(sd_a, sd_b, 0.0)
    assert torch.equal(sd_a["w"], torch.ones(2)) and sd_a["n"].item() == 4
    with pytest.raises(ValueError, match="different keys"):
        ema_update_({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="decay"):
        ema_update_(a, b, 1.5)


def test_bf16_model_float32_shadow_moves():
    torch.manual_seed(0)
    model = nn.Linear(16, 16).to(torch.bfloat16)
    start = averaging_copy(model)
    assert all(t.dtype == torch.float32 for t in start)
    shadow = averaging_copy(model)
    naive = [t.clone() for t in averaging_tensors(model)]  # a bf16 shadow, the pitfall
    reference = [t.double() for t in start]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    for _ in range(20):
        ema_update_(shadow, model, 0.999)
        ema_update_(naive, model, 0.999)
        cur = [t.double() for t in averaging_tensors(model)]
        reference = [0.999 * r + 0.001 * c for r, c in zip(reference, cur)]
    for s, r, s0 in zip(shadow, reference, start):
        assert torch.allclose(s.double(), r, rtol=0, atol=1e-6)
        assert (s - s0).abs().min() > 5e-4  # every entry moved by ~0.05 * (1 - 0.999**20) ~ 1e-3
    # the bf16 shadow stalls: where the step is below half an ulp (all but the tiny weights) it never moves
    moved_naive = sum((n.float() - s0).abs().sum() for n, s0 in zip(naive, start))
    moved_true = sum((s - s0).abs().sum() for s, s0 in zip(shadow, start))
    assert moved_naive < 0.2 * moved_true


def test_device_and_dtype_of_current_are_cast():
    shadow = [torch.zeros(4, dtype=torch.float64)]
    ema_update_(shadow, [torch.ones(4, dtype=torch.bfloat16)], 0.5)
    assert shadow[0].dtype == torch.float64 and torch.equal(shadow[0], torch.full((4,), 0.5, dtype=torch.float64))


def test_tied_parameters_visited_once():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight
    assert len(averaging_tensors(model)) == 1
    assert len(averaging_copy(model)) == 1


def test_running_mean_equals_mean_of_snapshots():
    model = _net()
    snapshots, avg = [], None
    for k in range(5):
        _train_step(model, 100 + k)
        snapshots.append({n: v.clone() for n, v in model.state_dict().items()})
        if avg is None:
            avg = averaging_copy(model)
            running_mean_update_(avg, model, 0)  # n=0 copies
        else:
            running_mean_update_(avg, model, k)
    ours = dict(zip(model.state_dict().keys(), avg))
    for name in snapshots[0]:
        stacked = torch.stack([s[name] for s in snapshots])
        if stacked.is_floating_point():
            assert torch.allclose(ours[name], stacked.double().mean(0).float(), rtol=1e-6, atol=1e-6), name
        else:
            assert torch.equal(ours[name], snapshots[-1][name])
    with pytest.raises(ValueError):
        running_mean_update_(avg, model, -1)


def test_warmup_schedule_by_hand():
    # 1 - (1 + t/inv_gamma)^-power with numbers that come out round
    assert ema_warmup_decay(7, 0.999, inv_gamma=1.0, power=2 / 3) == pytest.approx(0.75)  # 8^(2/3) = 4
    assert ema_warmup_decay(26, 0.999, inv_gamma=1.0, power=2 / 3) == pytest.approx(8 / 9)  # 27^(2/3) = 9
    assert ema_warmup_decay(6, 0.999, inv_gamma=2.0, power=0.5) == pytest.approx(0.5)  # (1+3)^-1/2
    assert ema_warmup_decay(15, 0.999, inv_gamma=1.0, power=0.75) == pytest.approx(0.875)  # 16^(3/4) = 8
    assert ema_warmup_decay(26, 0.5) == 0.5  # clamped to decay
    assert ema_warmup_decay(0, 0.9, min_decay=0.3) == 0.3  # clamped to min_decay
    assert ema_warmup_decay(1, 0.9, min_decay=0.3) == pytest.approx(1 - 2 ** (-2 / 3))
    assert ema_warmup_decay(10**6, 0.9999) == pytest.approx(0.9999)
    assert ema_warmup_decay(31622, 0.9999) == pytest.approx(0.999, abs=1e-7)


def test_decay_at_start_and_constant():
    assert ema_decay_at(3, 0.99, start_step=5) is None
    assert ema_decay_at(5, 0.99, start_step=5) == 0.0  # starts as a copy
    assert ema_decay_at(6, 0.99, start_step=5) == 0.99
    assert ema_decay_at(5 + 7, 0.999, start_step=5, warmup=True) == pytest.approx(0.75)
    assert math.isclose(ema_decay_at(1, 0.9), 0.9)
