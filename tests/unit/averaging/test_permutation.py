"""Weight matching recovers planted permutations exactly; permuted models compute the same function."""

import copy

import pytest
import torch
from torch import nn

from lightning_mix.averaging.permutation import (
    PermutationSpec,
    apply_permutation,
    infer_permutation_spec,
    interpolate,
    weight_matching,
)

pytest.importorskip("scipy")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids waiting on a descheduled second thread on a busy 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _train(model, x, y, steps=200, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _plant(model, spec, seed=1):
    state = model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    perms = {g: torch.randperm(n, generator=gen) for g, n in spec.sizes(state).items()}
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(apply_permutation(state, spec, perms))
    return permuted, perms


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_planted_permutation_mlp():
    torch.manual_seed(0)
    x, y = torch.randn(128, 10), torch.randint(0, 4, (128,))
    mlp = _train(
        nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)), x, y, steps=300
    )
    spec = infer_permutation_spec(mlp, x[:4])
    assert spec.groups == {
        "P_0": [("0.weight", 0), ("0.bias", 0), ("2.weight", 1, 1)],
        "P_2": [("2.weight", 0), ("2.bias", 0), ("4.weight", 1, 1)],
    }
    permuted, perms = _plant(mlp, spec)
    assert not all(torch.equal(p, torch.arange(len(p))) for p in perms.values())
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), mlp(x))  # same function
    aligned, found = weight_matching(mlp, permuted, example_input=x[:4], return_permutations=True)
    _assert_same_state(aligned, mlp)  # the original weights back, exactly
    for g, p in perms.items():  # found[g] undoes perms[g]: permuted[found] = original
        assert torch.equal(p[found[g]], torch.arange(len(p)))


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1, bias=False),
            nn.BatchNorm2d(12),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(12 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.head(self.features(x))


def test_planted_permutation_cnn_with_batchnorm_and_flatten():
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    net = _train(_ConvNet(), x, y, steps=150, lr=0.02).eval()
    spec = infer_permutation_spec(net, x[:4])
    assert ("head.1.weight", 1, 16) in spec.groups["P_features.4"]  # flattened 12 x (4 x 4) feature map
    assert ("features.1.running_var", 0) in spec.groups["P_features.0"]
    permuted, _ = _plant(net, spec, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), net(x))
    _assert_same_state(weight_matching(net, permuted, example_input=x[:4]), net)


def test_planted_permutation_small_cnn_demo():
    from lightning_mix.demos import SmallCNN

    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 12, 12), torch.randint(0, 10, (32,))
    net = SmallCNN(width=4)
    _train(net, x, y, steps=60, lr=0.02).eval()
    spec = infer_permutation_spec(net, x[:2])
    assert len(spec.groups) == 3  # three conv blocks; the head's outputs stay in place
    permuted, _ = _plant(net, spec, seed=5)
    aligned = weight_matching(net, permuted)  # registration order, no example input
    _assert_same_state(aligned, net)
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), net(x))


def test_state_dicts_with_explicit_spec_and_alignment_of_independent_models():
    torch.manual_seed(0)
    x, y = torch.randn(128, 6), torch.randint(0, 3, (128,))
    a = _train(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)), x, y)
    b = _train(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)), x, y)
    spec = PermutationSpec({"hidden": [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)]})
    aligned = weight_matching(a.state_dict(), b.state_dict(), spec=spec)
    assert isinstance(aligned, dict)
    b2 = copy.deepcopy(b)
    b2.load_state_dict(aligned)
    with torch.no_grad():
        torch.testing.assert_close(b2(x), b(x))  # still B's function

    def match(sb):
        return sum(float((a.state_dict()[k] * sb[k]).sum()) for k in ("0.weight", "0.bias", "2.weight"))

    assert match(aligned) >= match(b.state_dict())  # alignment never lowers the objective


class _ResidualMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.mid = nn.Linear(16, 32)
        self.back = nn.Linear(32, 16)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.back(torch.relu(self.mid(h)))  # the residual stream: inp and back share a permutation
        return self.out(self.norm(h))


class _ResidualCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(h + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h))))))
        return self.head(torch.flatten(self.pool(h), 1))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_planted_permutation_residual_stream(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        net, x, y = _ResidualMLP(), torch.randn(128, 6), torch.randint(0, 3, (128,))
        stream = {"inp.weight", "back.weight", "norm.weight", "out.weight"}
    else:
        net, x, y = _ResidualCNN(), torch.randn(48, 1, 6, 6), torch.randint(0, 3, (48,))
        stream = {"stem.weight", "conv2.weight", "bn0.running_mean", "bn2.weight", "head.weight", "conv1.weight"}
    _train(net, x, y, steps=150, lr=0.02).eval()
    spec = infer_permutation_spec(net, x[:4])
    assert len(spec.groups) == 2  # the residual stream and the inner hidden layer
    shared = next(items for items in spec.groups.values() if len(items) > 4)
    assert stream <= {item[0] for item in shared}
    permuted, _ = _plant(net, spec, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(permuted(x), net(x))
    _assert_same_state(weight_matching(net, permuted, example_input=x[:4]), net)


def test_unsupported_model_is_refused_with_a_clear_message():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(4, 8)
            self.out = nn.Linear(16, 2)

        def forward(self, x):
            return self.out(torch.cat([self.a(x), self.b(x)], dim=1))

    with pytest.raises(ValueError, match="explicit PermutationSpec"):
        infer_permutation_spec(Concat(), torch.randn(3, 4))


def test_interpolate_lerps_weights_and_recomputes_batchnorm():
    from lightning_mix.averaging.batchnorm import recalibrate_batchnorm

    torch.manual_seed(0)
    a, b = _ConvNet().eval(), _ConvNet().eval()
    x = torch.randn(32, 1, 8, 8)
    mid = interpolate(a, b, 0.25, [x[:16], x[16:]])
    torch.testing.assert_close(mid.state_dict()["head.1.weight"], 0.75 * a.head[1].weight + 0.25 * b.head[1].weight)
    manual = copy.deepcopy(mid)
    manual.features[1].running_mean.fill_(5.0)
    recalibrate_batchnorm(manual, [x[:16], x[16:]])
    torch.testing.assert_close(mid.features[1].running_var, manual.features[1].running_var)
    assert not torch.allclose(
        mid.features[1].running_mean, 0.75 * a.features[1].running_mean + 0.25 * b.features[1].running_mean
    )


def test_batchnorm_statistics_stay_out_of_the_objective_by_default():
    """git-re-basin matches parameters only; running statistics that disagree must not steer the match."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    net[1].running_mean.copy_(torch.randn(8) * 1e4)
    x = torch.randn(16, 4)
    spec = infer_permutation_spec(net, x[:4])
    permuted, _ = _plant(net, spec, seed=2)
    state = permuted.state_dict()
    gen = torch.Generator().manual_seed(9)
    state["1.running_mean"] = torch.randn(8, generator=gen) * 1e4  # statistics unrelated to the weights
    state["1.running_var"] = torch.rand(8, generator=gen) * 1e4
    permuted.load_state_dict(state)
    aligned = weight_matching(net, permuted, example_input=x[:4]).state_dict()
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight"):
        assert torch.equal(aligned[name], net.state_dict()[name]), name
    with_stats = weight_matching(net, permuted, example_input=x[:4], batchnorm_statistics=True).state_dict()
    assert not torch.equal(with_stats["0.weight"], net.state_dict()["0.weight"])  # the statistics won the match
