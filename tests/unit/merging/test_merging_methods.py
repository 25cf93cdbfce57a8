"""Merge methods against hand-worked examples on small tensors."""

import math

import pytest
import torch

from lightning_mix.checkpoint_io import IncompatibleCheckpointsError
from lightning_mix.merging import (
    MergeError,
    MergeOptions,
    consensus,
    consensus_mask,
    dare,
    dare_drop,
    fisher,
    model_stock,
    model_stock_ratio,
    pcb,
    pcb_weights,
    slerp,
    slerp_tensor,
    tall_masks,
    task_arithmetic,
    ties,
    trim_top_k,
    weighted_average,
)


def _sd(w, extra=None):
    sd = {"layer.weight": torch.as_tensor(w, dtype=torch.float32), "layer.num_batches_tracked": torch.tensor(7)}
    if extra is not None:
        sd["layer.num_batches_tracked"] = torch.tensor(extra)
    return sd


BASE = [[1.0, 1.0], [1.0, 1.0]]
TAUS = [
    [[1.0, -2.0], [0.5, 3.0]],
    [[-3.0, 1.0], [0.2, 0.9]],
    [[2.0, 0.1], [-4.0, -0.5]],
]


def _models():
    base = torch.tensor(BASE)
    return _sd(base), [_sd(base + torch.tensor(t), extra=i) for i, t in enumerate(TAUS)]


def test_weighted_average_hand_worked():
    a, b = _sd([[0.0, 2.0], [4.0, 6.0]]), _sd([[4.0, 2.0], [0.0, 2.0]], extra=99)
    out = weighted_average([a, b], weights=[3.0, 1.0])
    torch.testing.assert_close(out["layer.weight"], torch.tensor([[1.0, 2.0], [3.0, 5.0]]))
    assert out["layer.num_batches_tracked"].item() == 7  # integer buffers copied from the first model


def test_task_arithmetic_hand_worked():
    base, models = _models()
    out = task_arithmetic(base, models, lam=0.5)
    # sum of task vectors: [[0, -0.9], [-3.3, 3.4]]
    torch.testing.assert_close(out["layer.weight"], torch.tensor([[1.0, 0.55], [-0.65, 2.7]]))
    out = task_arithmetic(base, models, lam=[1.0, 0.0, 0.0])
    torch.testing.assert_close(out["layer.weight"], torch.tensor(BASE) + torch.tensor(TAUS[0]))


def test_ties_trim_elect_disjoint_mean_hand_worked():
    tau = torch.tensor(TAUS)
    trimmed = trim_top_k(tau, density=0.5, keep="ceil")  # top 2 of 4 magnitudes per task, over the whole tensor
    expected_trim = torch.tensor([[[0.0, -2.0], [0.0, 3.0]], [[-3.0, 1.0], [0.0, 0.0]], [[2.0, 0.0], [-4.0, 0.0]]])
    torch.testing.assert_close(trimmed, expected_trim)
    # elected signs: sums [[-1, -1], [-4, 3]] -> [[-, -], [-, +]]; disjoint means [[-3, -2], [-4, 3]]
    base, models = _models()
    out = ties(base, models, density=0.5, lam=1.0, keep="ceil")
    torch.testing.assert_close(out["layer.weight"], torch.tensor([[-2.0, -1.0], [-3.0, 4.0]]))
    out = ties(base, models, density=0.5, lam=0.5, keep="ceil")
    torch.testing.assert_close(out["layer.weight"], torch.tensor([[-0.5, 0.0], [-1.0, 2.5]]))
    assert out["layer.num_batches_tracked"].item() == 7


def test_ties_disjoint_mean_averages_agreeing_entries_only():
    base = {"w": torch.zeros(1)}
    models = [{"w": torch.tensor([2.0])}, {"w": torch.tensor([4.0])}, {"w": torch.tensor([-1.0])}]
    out = ties(base, models, density=1.0, lam=1.0)
    torch.testing.assert_close(out["w"], torch.tensor([3.0]))  # sign +, mean of 2 and 4


def test_ties_above_quantile_limit():
    n = 2**24 + 3  # torch.quantile refuses inputs this large
    tau = torch.randn(1, n, generator=torch.Generator().manual_seed(0))
    kept = trim_top_k(tau, density=0.25, keep="ceil")
    assert int((kept != 0).sum()) == math.ceil(0.25 * n)
    assert kept.abs().max() == tau.abs().max()


def test_dare_unbiased_and_seeded():
    tau = torch.ones(200_000)
    dropped = dare_drop(tau, 0.9, torch.Generator().manual_seed(1))
    assert abs(float((dropped == 0).float().mean()) - 0.9) < 0.005
    values = torch.unique(dropped).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(10.0)
    assert abs(float(dropped.mean()) - 1.0) < 0.03  # unbiased in expectation
    base = {"w": torch.zeros(1000)}
    models = [{"w": torch.full((1000,), 2.0)}, {"w": torch.full((1000,), -1.0)}]
    first = dare(base, models, p=0.5, seed=3)["w"]
    assert torch.equal(first, dare(base, models, p=0.5, seed=3)["w"])
    assert not torch.equal(first, dare(base, models, p=0.5, seed=4)["w"])
    assert set(torch.unique(first).tolist()) <= {0.0, 4.0, -2.0, 2.0}
    ties = dare(base, models, p=0.5, seed=3, merge="ties")["w"]
    assert set(torch.unique(ties).tolist()) <= {0.0, 4.0, -2.0}
    assert torch.equal(dare(base, models, p=0.0, lam=1.0)["w"], torch.ones(1000))


def test_slerp_endpoints_orthogonal_and_parallel():
    a = {"w": torch.tensor([1.0, 0.0]), "step": torch.tensor(1)}
    b = {"w": torch.tensor([0.0, 1.0]), "step": torch.tensor(5)}
    torch.testing.assert_close(slerp(a, b, 0.0)["w"], a["w"])
    torch.testing.assert_close(slerp(a, b, 1.0)["w"], b["w"])
    half = slerp(a, b, 0.5)
    torch.testing.assert_close(half["w"], torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    assert half["step"].item() == 1
    third = slerp(a, b, 1 / 3)["w"]  # angle 30 degrees along the quarter circle
    torch.testing.assert_close(third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]))
    v = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(slerp_tensor(v, 3 * v, 0.25), 1.5 * v)  # parallel: linear fall-back
    torch.testing.assert_close(slerp_tensor(v, -v, 0.25), 0.5 * v)  # anti-parallel: linear, no NaN


def test_model_stock_ratio_and_merge():
    base = torch.zeros(2)
    ft = [torch.tensor([1.0, 0.0]), torch.tensor([math.cos(math.pi / 3), math.sin(math.pi / 3)])]
    ratio = model_stock_ratio(base, ft)  # cos = 0.5, k = 2: t = 2 * 0.5 / (0.5 + 1) = 2/3
    assert float(ratio) == pytest.approx(2 / 3)
    ft3 = [torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2)]
    # pairwise cosines 0, 1/sqrt2, 1/sqrt2 -> mean c = sqrt2/3; t = 3c / (2c + 1)
    c = math.sqrt(2) / 3
    assert float(model_stock_ratio(torch.zeros(3), ft3)) == pytest.approx(3 * c / (2 * c + 1))
    b = {"w": torch.ones(2)}
    out = model_stock(b, [{"w": torch.ones(2) + t} for t in ft])["w"]
    torch.testing.assert_close(out, torch.ones(2) + (2 / 3) * (ft[0] + ft[1]) / 2)
    with pytest.raises(MergeError, match="at least 2"):
        model_stock(b, [{"w": torch.ones(2)}])


def test_pcb_weights_hand_worked():
    tau = torch.tensor([[4.0, 1.0, -2.0, 0.5], [3.0, -1.0, 1.0, 0.5]])
    # task 1: |tau| minmax -> [1, 1/7, 3/7, 0]; intra = exp(2 x^2); sum = [7, 0, -1, 1]; inter = tanh(tau * sum)
    intra1 = [math.exp(2 * x * x) for x in (1.0, 1 / 7, 3 / 7, 0.0)]
    inter1 = [math.tanh(v) for v in (28.0, 0.0, 2.0, 0.5)]
    s1 = [i * j for i, j in zip(intra1, inter1)]
    # task 2: |tau| minmax -> [1, 0.2, 0.2, 0]; inter = tanh([21, 0, -1, 0.5])
    intra2 = [math.exp(2 * x * x) for x in (1.0, 0.2, 0.2, 0.0)]
    inter2 = [math.tanh(v) for v in (21.0, 0.0, -1.0, 0.5)]
    s2 = [i * j for i, j in zip(intra2, inter2)]
    w = pcb_weights(tau, keep_ratio=0.75)  # keep 3 of 4: the threshold is the 2nd smallest score
    t1, t2 = sorted(s1)[1], sorted(s2)[1]
    expected = torch.tensor(
        [[max(s - t1, 0.0) / (max(s1) - t1) for s in s1], [max(s - t2, 0.0) / (max(s2) - t2) for s in s2]]
    )
    torch.testing.assert_close(w, expected)
    assert (w > 0).tolist() == [[True, False, True, False], [True, False, False, True]]
    base = {"w": torch.zeros(4)}
    out = pcb(base, [{"w": tau[0]}, {"w": tau[1]}], keep_ratio=0.75, lam=1.0, clamp_ratio=0.0)["w"]
    torch.testing.assert_close(out, (expected * tau).sum(0) / expected.sum(0).clamp_min(1e-12))


def test_tall_and_consensus_masks_hand_worked():
    tau = torch.tensor([[1.0, 0.1, 2.0, 0.0], [1.0, 3.0, -2.0, 0.05], [0.1, 0.1, 0.0, 0.05]])
    masks = tall_masks(tau, mask_lam=0.5)
    # strict '>' as the authors: task 3's untouched entry (0 against 0) is in no mask
    assert masks.tolist() == [[True, False, True, False], [True, True, True, True], [False, False, False, True]]
    assert consensus_mask(tau, k=2, mask_lam=0.5).tolist() == [True, False, True, True]
    base = {"w": torch.ones(4)}
    out = consensus(base, [{"w": 1 + t} for t in tau], k=2, mask_lam=0.5, lam=0.5)["w"]
    torch.testing.assert_close(out, torch.ones(4) + 0.5 * torch.tensor([2.1, 0.0, 0.0, 0.1]))


def test_fisher_merge_equal_fisher_is_average_and_weighting():
    a, b = {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(3)}, {"w": torch.tensor([4.0, 3.0]), "n": torch.tensor(5)}
    equal = [{"w": torch.full((2,), 0.7)}, {"w": torch.full((2,), 0.7)}]
    torch.testing.assert_close(fisher([a, b], equal)["w"], torch.tensor([2.0, 2.0]))
    f = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 0.0])}]
    out = fisher([a, b], f, normalize_fishers=False, favor_target_model=False)
    torch.testing.assert_close(out["w"], torch.tensor([3.0, 2.0]))  # (0*1 + 4*3)/4; zero Fisher -> floor -> average
    assert out["n"].item() == 3


def test_overrides_filters_and_dtype():
    base = {"a.weight": torch.zeros(2), "b.weight": torch.zeros(2), "b.bias": torch.zeros(2)}
    m = [{k: torch.ones(2) for k in base}]
    options = MergeOptions(overrides={"b.*": {"lam": 0.5}}, exclude="*.bias", dtype=torch.bfloat16)
    out = task_arithmetic(base, m, lam=1.0, options=options)
    assert out["a.weight"].tolist() == [1.0, 1.0] and out["a.weight"].dtype == torch.bfloat16
    assert out["b.weight"].tolist() == [0.5, 0.5]
    assert out["b.bias"].tolist() == [0.0, 0.0] and out["b.bias"].dtype == torch.float32  # excluded: copied
    out = task_arithmetic(base, m, lam=1.0, options=MergeOptions(include=("a.*",)))
    assert out["a.weight"].tolist() == [1.0, 1.0] and out["b.weight"].tolist() == [0.0, 0.0]


def test_float32_accumulation_for_bf16_inputs():
    gen = torch.Generator().manual_seed(0)
    models = [{"w": (1 + torch.rand(1000, generator=gen)).to(torch.bfloat16)} for _ in range(7)]
    reference = torch.stack([m["w"].double() for m in models]).mean(0)
    out = weighted_average(models)["w"]
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, reference.float().to(torch.bfloat16))  # one rounding at the end, not seven
    out32 = weighted_average(models, options=MergeOptions(dtype=torch.float32))["w"]
    torch.testing.assert_close(out32, reference.float())


def test_mismatch_errors_name_the_first_mismatch():
    a = {"x": torch.zeros(2), "y": torch.zeros(3)}
    with pytest.raises(
        IncompatibleCheckpointsError, match=r"shape mismatch at 'y': \(3,\) in model 0 but \(4,\) in model 1"
    ):
        weighted_average([a, {"x": torch.zeros(2), "y": torch.zeros(4)}])
    with pytest.raises(IncompatibleCheckpointsError, match="model 1 has no tensor 'y'"):
        weighted_average([a, {"x": torch.zeros(2)}])
    with pytest.raises(IncompatibleCheckpointsError, match="'z' that model 0 lacks"):
        weighted_average([a, {**a, "z": torch.zeros(1)}])
    with pytest.raises(
        IncompatibleCheckpointsError, match=r"shape mismatch at 'x': \(2,\) in base but \(5,\) in model 0"
    ):
        ties(a, [{"x": torch.zeros(5), "y": torch.zeros(3)}])


def test_files_read_lazily_match_in_memory(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sds = [
        {
            "l.weight": torch.randn(8, 5, generator=gen),
            "l.bias": torch.randn(8, generator=gen),
            "bn.num_batches_tracked": torch.tensor(i),
        }
        for i in range(3)
    ]
    paths = []
    for i, sd in enumerate(sds):
        p = tmp_path / f"m{i}.ckpt"
        torch.save({"state_dict": sd, "hyper_parameters": {"width": 4}} if i else sd, p)
        paths.append(p)
    from_files = ties(paths[0], paths[1:], density=0.3)
    in_memory = ties(sds[0], sds[1:], density=0.3)
    assert from_files.keys() == in_memory.keys()
    for k in in_memory:
        torch.testing.assert_close(from_files[k], in_memory[k])
    calls = []
    weighted_average([str(p) for p in paths], options=MergeOptions(progress=lambda d, t, n: calls.append((d, t, n))))
    assert calls == [(1, 3, "l.weight"), (2, 3, "l.bias"), (3, 3, "bn.num_batches_tracked")]


def test_a_memory_mapped_source_reads_the_saved_values(tmp_path):
    from lightning_mix.merging import StateDictSource

    gen = torch.Generator().manual_seed(0)
    sd = {"big": torch.randn(300_000, generator=gen), "small": torch.randn(7, generator=gen)}
    torch.save({"state_dict": sd}, tmp_path / "m.ckpt")
    src = StateDictSource.open(tmp_path / "m.ckpt")
    assert src.names == ["big", "small"] and len(src) == 2 and "big" in src
    assert torch.equal(src["big"], sd["big"]) and torch.equal(src["small"], sd["small"])
