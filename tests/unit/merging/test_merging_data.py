"""Data-dependent merges: Fisher information, RegMean Gram matrices (against independent references)."""

import pytest
import torch
from torch import nn

from lightning_mix.merging import fisher as fisher_merge
from lightning_mix.merging import fisher_information, regmean, regmean_grams


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids waiting on a descheduled second thread on a busy 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_regmean_single_linear_equals_least_squares():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(20, 3, generator=gen), torch.randn(30, 3, generator=gen) * 2 + 0.5]
    layers = [nn.Linear(3, 2, bias=True), nn.Linear(3, 2, bias=True)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.copy_(torch.randn(2, 3, generator=gen))
            layer.bias.copy_(torch.randn(2, generator=gen))
    grams = [regmean_grams(layer, [(x[:10],), (x[10:],)], normalize=False) for layer, x in zip(layers, xs)]
    torch.testing.assert_close(grams[0]["weight"], xs[0].T @ xs[0])  # two batches summed
    merged = regmean([layer.state_dict() for layer in layers], grams, alpha=1.0)
    # independent reference: the W minimising sum_i ||X_i W^T - X_i W_i^T||^2
    design = torch.cat(xs).double()
    target = torch.cat([x @ layer.weight.detach().T for x, layer in zip(xs, layers)]).double()
    expected = torch.linalg.lstsq(design, target).solution.T
    torch.testing.assert_close(merged["weight"].double(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(merged["bias"], (layers[0].bias + layers[1].bias).detach() / 2)
    # alpha = 0 leaves only the diagonals: a per-input-feature weighted average of the columns
    d = [torch.diagonal(g["weight"]) for g in grams]
    w0 = (d[0] * layers[0].weight + d[1] * layers[1].weight) / (d[0] + d[1])
    diagonal_only = regmean([layer.state_dict() for layer in layers], grams, alpha=0.0)["weight"]
    torch.testing.assert_close(diagonal_only, w0.detach())


def test_regmean_grams_of_named_layers_in_a_network():
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x = torch.randn(16, 4)
    grams = regmean_grams(net, [x], get_inputs=lambda b: b)
    assert set(grams) == {"0.weight", "2.weight"}
    h = torch.relu(net[0](x)).detach()
    torch.testing.assert_close(grams["2.weight"], h.T @ h / 16)  # the authors' X^T X / N


def test_fisher_information_matches_per_example_backward():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    net.train()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    fisher = fisher_information(net, [(x[:6], y[:6]), (x[6:], y[6:])], num_examples=9, labels="data")
    assert net.training  # mode restored
    net.eval()
    expected = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(9):
        net.zero_grad()
        torch.log_softmax(net(x[i : i + 1]), -1)[0, y[i]].backward()
        for n, p in net.named_parameters():
            expected[n] += p.grad**2 / 9
    for n in expected:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-7)
    sampled = fisher_information(net, [(x, y)], labels="sample", generator=torch.Generator().manual_seed(0))
    assert all((v >= 0).all() and v.shape == dict(net.named_parameters())[n].shape for n, v in sampled.items())
    merged = fisher_merge([net.state_dict(), net.state_dict()], [fisher, sampled])
    for n, t in net.state_dict().items():
        torch.testing.assert_close(merged[n], t)  # merging a model with itself gives it back


def test_adamerging_zero_steps_is_task_arithmetic_and_training_lowers_entropy():
    from torch.func import functional_call

    from lightning_mix.merging import task_arithmetic
    from lightning_mix.merging.adamerging import adamerging, prediction_entropy

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    base = {k: v.clone() for k, v in net.state_dict().items()}
    models = [{k: v + 0.5 * torch.randn_like(v) for k, v in base.items()} for _ in range(2)]
    x = torch.randn(64, 5)
    batches = [x[:32], x[32:]]
    merged, coef = adamerging(net, base, models, batches, steps=0, get_inputs=lambda b: b)
    expected = task_arithmetic(base, models, lam=0.3)
    for k in expected:
        torch.testing.assert_close(merged[k], expected[k])
    assert coef.shape == (2, 4) and torch.all(coef == 0.3)

    def entropy(sd):
        with torch.no_grad():
            return float(prediction_entropy(functional_call(net, sd, (x,))))

    merged, coef = adamerging(
        net, base, models, batches, granularity="task", steps=150, lr=0.02, get_inputs=lambda b: b
    )
    assert coef.shape == (2,) and torch.all((coef >= 0) & (coef <= 1))
    assert entropy(merged) < entropy(expected) - 1e-3
    # the returned weights are task arithmetic with the learned coefficients
    for k in merged:
        torch.testing.assert_close(
            merged[k], base[k] + coef[0] * (models[0][k] - base[k]) + coef[1] * (models[1][k] - base[k])
        )
