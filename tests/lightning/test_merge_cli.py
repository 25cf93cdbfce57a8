"""``lightning-mix merge``: round trip through Lightning checkpoints of SmallCNN."""

import pytest
import torch

from lightning_mix.cli.merge import main as merge_main
from lightning_mix.demos import SmallCNN
from lightning_mix.merging import MergeOptions, consensus, dare, model_stock, ties, weighted_average


def _checkpoint(path, seed, width=4):
    torch.manual_seed(seed)
    model = SmallCNN(width=width, lr=1e-3)
    state = {
        k: v + 0.01 * seed * torch.randn_like(v) if v.is_floating_point() else v + seed
        for k, v in model.state_dict().items()
    }
    torch.save(
        {
            "epoch": 3,
            "global_step": 30,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": state,
            "optimizer_states": [{"state": {}, "param_groups": []}],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": dict(model.hparams),
        },
        path,
    )
    return state


def test_merge_round_trip_loads_with_load_from_checkpoint(tmp_path, capsys):
    base = _checkpoint(tmp_path / "base.ckpt", 0)
    a = _checkpoint(tmp_path / "a.ckpt", 1)
    b = _checkpoint(tmp_path / "b.ckpt", 2)
    out = tmp_path / "merged.ckpt"
    merge_main(
        [
            "--method",
            "ties",
            "--base",
            str(tmp_path / "base.ckpt"),
            "--models",
            str(tmp_path / "a.ckpt"),
            str(tmp_path / "b.ckpt"),
            "--density",
            "0.3",
            "--lam",
            "0.8",
            "--output",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert "merge [1/" in err and f"merge [{len(base)}/{len(base)}]" in err
    loaded = SmallCNN.load_from_checkpoint(out)
    assert loaded.hparams.width == 4 and loaded.hparams.lr == 1e-3
    expected = ties(base, [a, b], density=0.3, lam=0.8)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, expected[k])
    assert loaded.block1[1].num_batches_tracked.item() == base["block1.1.num_batches_tracked"].item()
    ckpt = torch.load(out, weights_only=True)
    assert "optimizer_states" not in ckpt and ckpt["merge"]["method"] == "ties"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_merge_average_dtype_filters_and_overrides(tmp_path):
    a = _checkpoint(tmp_path / "a.ckpt", 1)
    b = _checkpoint(tmp_path / "b.ckpt", 2)
    out = tmp_path / "avg.ckpt"
    merge_main(
        [
            "--method",
            "weighted_average",
            "--models",
            str(tmp_path / "a.ckpt"),
            str(tmp_path / "b.ckpt"),
            "--weights",
            "3",
            "1",
            "--exclude",
            "head.*",
            "--override",
            "block1.*:weights=1,1",
            "--dtype",
            "bfloat16",
            "--quiet",
            "--output",
            str(out),
        ]
    )
    sd = torch.load(out, weights_only=True)["state_dict"]
    options = MergeOptions(exclude="head.*", overrides={"block1.*": {"weights": (1.0, 1.0)}}, dtype=torch.bfloat16)
    expected = weighted_average([a, b], [3.0, 1.0], options=options)
    for k in expected:
        assert torch.equal(sd[k], expected[k]), k
    assert sd["block2.0.weight"].dtype == torch.bfloat16 and torch.equal(sd["head.weight"], a["head.weight"])
    torch.testing.assert_close(
        sd["block1.0.weight"].float(), ((a["block1.0.weight"] + b["block1.0.weight"]) / 2), rtol=1e-2, atol=1e-3
    )


def test_merge_refuses_mismatch_and_leaves_no_file(tmp_path):
    _checkpoint(tmp_path / "base.ckpt", 0)
    _checkpoint(tmp_path / "a.ckpt", 1)
    _checkpoint(tmp_path / "wide.ckpt", 2, width=8)
    out = tmp_path / "merged.ckpt"
    with pytest.raises(
        SystemExit, match=r"shape mismatch at 'block1.0.weight': \(4, 1, 5, 5\) in base but \(8, 1, 5, 5\) in model 1"
    ):
        merge_main(
            [
                "--method",
                "task_arithmetic",
                "--base",
                str(tmp_path / "base.ckpt"),
                "--models",
                str(tmp_path / "a.ckpt"),
                str(tmp_path / "wide.ckpt"),
                "--output",
                str(out),
                "--quiet",
            ]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "base.ckpt", "wide.ckpt"]
    with pytest.raises(SystemExit):
        merge_main(["--method", "ties", "--models", str(tmp_path / "a.ckpt"), "--output", str(out)])  # no --base
    (tmp_path / "exists.ckpt").write_bytes(b"keep me")
    with pytest.raises(SystemExit):
        merge_main(
            [
                "--method",
                "weighted_average",
                "--models",
                str(tmp_path / "a.ckpt"),
                str(tmp_path / "base.ckpt"),
                "--output",
                str(tmp_path / "exists.ckpt"),
            ]
        )
    assert (tmp_path / "exists.ckpt").read_bytes() == b"keep me"


def test_plain_state_dict_files(tmp_path):
    torch.save({"w": torch.tensor([1.0, 3.0])}, tmp_path / "x.pt")
    torch.save({"w": torch.tensor([3.0, 5.0])}, tmp_path / "y.pt")
    merge_main(
        [
            "--method",
            "slerp",
            "--models",
            str(tmp_path / "x.pt"),
            str(tmp_path / "y.pt"),
            "--t",
            "0",
            "--output",
            str(tmp_path / "z.pt"),
            "--quiet",
        ]
    )
    assert torch.load(tmp_path / "z.pt", weights_only=True)["w"].tolist() == [1.0, 3.0]


@pytest.mark.slow
def test_soup_greedy_from_checkpoints(tmp_path):
    from pathlib import Path

    from lightning_mix.cli.soup import main as soup_main

    config = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"
    paths = []
    for seed in range(3):
        _checkpoint(tmp_path / f"run{seed}.ckpt", seed, width=8)
        paths.append(str(tmp_path / f"run{seed}.ckpt"))
    out = tmp_path / "soup.ckpt"
    soup_main(["--models", *paths, "--config", str(config), "--recipe", "greedy", "--output", str(out)])
    ckpt = torch.load(out, weights_only=True)
    kept = ckpt["soup"]["kept"]
    assert 1 <= len(kept) <= 3 and set(kept) <= set(paths)
    states = [torch.load(p, weights_only=True)["state_dict"] for p in kept]
    for k, v in ckpt["state_dict"].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, sum(s[k] for s in states) / len(states))
    loaded = SmallCNN.load_from_checkpoint(out)
    assert loaded.hparams.width == 8


@pytest.mark.parametrize(
    ("argv", "reference"),
    [
        (
            ["--method", "dare", "--p", "0.5", "--seed", "1", "--lam", "0.5"],
            lambda b, ms: dare(b, ms, p=0.5, lam=0.5, seed=1),
        ),
        (
            ["--method", "consensus", "--k", "2", "--mask-lam", "0.3", "--lam", "0.6"],
            lambda b, ms: consensus(b, ms, k=2, mask_lam=0.3, lam=0.6),
        ),
        (["--method", "model_stock"], lambda b, ms: model_stock(b, ms)),
    ],
)
def test_merge_methods_match_the_library(tmp_path, argv, reference):
    base = _checkpoint(tmp_path / "base.ckpt", 0)
    models = [_checkpoint(tmp_path / f"m{i}.ckpt", i + 1) for i in range(3)]
    out = tmp_path / "out.ckpt"
    merge_main(
        [
            *argv,
            "--base",
            str(tmp_path / "base.ckpt"),
            "--models",
            *[str(tmp_path / f"m{i}.ckpt") for i in range(3)],
            "--output",
            str(out),
            "--quiet",
        ]
    )
    got = torch.load(out, weights_only=True)["state_dict"]
    expected = reference(base, models)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


@pytest.mark.slow
def test_soup_uniform_with_batchnorm_recalibration(tmp_path):
    from pathlib import Path

    from lightning_mix.cli.soup import main as soup_main

    config = Path(__file__).resolve().parents[2] / "examples" / "tiny.yaml"
    paths = []
    for seed in range(2):
        _checkpoint(tmp_path / f"run{seed}.ckpt", seed, width=8)
        paths.append(str(tmp_path / f"run{seed}.ckpt"))
    out = tmp_path / "soup.ckpt"
    soup_main(
        ["--models", *paths, "--config", str(config), "--recipe", "uniform", "--recalibrate-bn", "--output", str(out)]
    )
    ckpt = torch.load(out, weights_only=True)
    states = [torch.load(p, weights_only=True)["state_dict"] for p in paths]
    mean_w = (states[0]["block1.0.weight"] + states[1]["block1.0.weight"]) / 2
    torch.testing.assert_close(ckpt["state_dict"]["block1.0.weight"], mean_w)
    mean_rv = (states[0]["block1.1.running_var"] + states[1]["block1.1.running_var"]) / 2
    assert not torch.allclose(ckpt["state_dict"]["block1.1.running_var"], mean_rv)  # recomputed, not averaged
    assert ckpt["soup"]["kept"] == paths
