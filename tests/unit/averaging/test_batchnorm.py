"""recalibrate_batchnorm: statistics equal the mean and unbiased variance computed directly over the data."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from lightning_mix.averaging import recalibrate_batchnorm


def _batches(sizes, features, seed=0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, *features, generator=g) * 3.0 + shift for n in sizes]


def test_linear_bn_equals_pooled_mean_and_unbiased_variance_with_unequal_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model[1].running_mean.fill_(7.0)  # stale statistics that must be replaced
    batches = _batches([16, 16, 5], (5,))
    recalibrate_batchnorm(model, batches)
    h = model[0](torch.cat(batches)).double()
    torch.testing.assert_close(model[1].running_mean.double(), h.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(model[1].running_var.double(), h.var(0, unbiased=True), rtol=1e-5, atol=1e-5)
    assert model[1].num_batches_tracked.item() == 3
    assert model[1].num_batches_tracked.dtype == torch.long


def test_conv_bn_reduces_over_batch_and_space_and_second_layer_sees_train_mode_inputs():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    batches = _batches([4, 6, 3], (2, 7, 7), seed=1)
    recalibrate_batchnorm(model, batches)
    # independent reference: feed each batch to a copy in train mode, record inputs of each BN
    ref = copy.deepcopy(model).train()
    seen = {1: [], 3: []}
    for i in seen:
        ref[i].register_forward_pre_hook(lambda m, a, i=i: seen[i].append(a[0].detach().double()))
    with torch.no_grad():
        for b in batches:
            ref(b)
    for i in seen:
        x = torch.cat(seen[i]).transpose(0, 1).reshape(model[i].num_features, -1)
        torch.testing.assert_close(model[i].running_mean.double(), x.mean(1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model[i].running_var.double(), x.var(1, unbiased=True), rtol=1e-5, atol=1e-5)


def test_means_match_swa_utils_update_bn_on_equal_batches():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6))
    reference = copy.deepcopy(model)
    batches = _batches([8, 8, 8, 8], (3,), seed=2)
    recalibrate_batchnorm(model, batches)
    update_bn([(b,) for b in batches], reference)
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean, rtol=0, atol=1e-5)
    # update_bn averages per-batch variances; ours is the pooled variance, which adds the between-batch spread
    h = model[0](torch.cat(batches)).double()
    torch.testing.assert_close(model[1].running_var.double(), h.var(0), rtol=1e-5, atol=1e-5)


def test_large_offset_is_numerically_stable_in_float32():
    model = nn.Sequential(nn.BatchNorm1d(3))
    batches = _batches([64] * 10, (3,), seed=3, shift=1.0e4)
    recalibrate_batchnorm(model, batches)
    x = torch.cat(batches).double()
    torch.testing.assert_close(model[0].running_var.double(), x.var(0), rtol=1e-3, atol=0)


def test_restores_momentum_and_train_eval_mode_of_each_submodule():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=0.3), nn.Dropout(0.5), nn.BatchNorm1d(4))
    model.eval()
    model[2].train()  # mixed modes must come back as they were
    recalibrate_batchnorm(model, _batches([4, 4], (3,)))
    assert model[1].momentum == 0.3 and model[3].momentum == 0.1
    assert [m.training for m in model.modules()] == [False, False, False, True, False]


def test_bfloat16_model_gets_float32_accurate_statistics():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(torch.bfloat16)
    batches = [b.to(torch.bfloat16) for b in _batches([16, 16, 16], (4,), seed=4)]
    recalibrate_batchnorm(model, batches)
    with torch.no_grad():
        h = torch.cat([model[0](b) for b in batches]).double()
    assert model[1].running_mean.dtype == torch.bfloat16
    torch.testing.assert_close(model[1].running_mean.double(), h.mean(0), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(model[1].running_var.double(), h.var(0), rtol=1e-2, atol=1e-2)


def test_dict_batches_need_forward_and_work_with_it():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    batches = [{"x": b, "y": torch.zeros(len(b))} for b in _batches([5, 7], (3,))]
    with pytest.raises(TypeError, match="forward="):
        recalibrate_batchnorm(model, batches)
    recalibrate_batchnorm(model, batches, forward=lambda m, b: m(b["x"]))
    h = model[0](torch.cat([b["x"] for b in batches])).double()
    torch.testing.assert_close(model[1].running_mean.double(), h.mean(0), rtol=0, atol=1e-5)


def test_layer_not_reached_keeps_statistics_and_warns_and_empty_input_raises():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.BatchNorm1d(3)
            self.unused = nn.BatchNorm1d(3)

        def forward(self, x):
            return self.used(x)

    model = TwoHeads()
    model.unused.running_mean.fill_(2.0)
    with pytest.warns(UserWarning, match="unused"):
        recalibrate_batchnorm(model, _batches([4, 4], (3,)))
    assert torch.equal(model.unused.running_mean, torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(model, [])


def test_tuple_batches_feed_first_element_and_model_without_bn_is_untouched():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    batches = [(b, torch.zeros(len(b))) for b in _batches([6, 6], (3,))]
    recalibrate_batchnorm(model, batches)
    h = model[0](torch.cat([b[0] for b in batches])).double()
    torch.testing.assert_close(model[1].running_mean.double(), h.mean(0), rtol=0, atol=1e-5)
    plain = nn.Linear(2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert recalibrate_batchnorm(plain, []) is plain
