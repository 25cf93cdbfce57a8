"""``lightning-mix merge`` and ``soup`` refuse what they cannot do, before the work, and write nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_mix.cli.merge import main as merge_main
from lightning_mix.cli.soup import main as soup_main

ROOT = Path(__file__).resolve().parents[2]


def _save(path: Path, scale: float = 1.0, dtype=torch.float32, lightning: bool = True, **extra) -> None:
    state = {
        "layer.weight": (torch.arange(6.0).reshape(2, 3) * scale).to(dtype),
        "layer.bias": torch.ones(2, dtype=dtype) * scale,
        "bn.num_batches_tracked": torch.tensor(3),
    }
    torch.save({"state_dict": state, "hyper_parameters": {"width": 2}, **extra} if lightning else state, path)


@pytest.fixture
def ckpts(tmp_path):
    for i, name in enumerate(["base", "a", "b"]):
        _save(tmp_path / f"{name}.ckpt", 1.0 + i)
    return tmp_path


def _refused(argv, match, command=merge_main):
    with pytest.raises(SystemExit) as info:
        command(argv)
    assert info.value.code not in (0, None)
    assert match in str(info.value.code), str(info.value.code)


def _ties(d: Path, *extra: str) -> list[str]:
    return [
        "--method",
        "ties",
        "--base",
        str(d / "base.ckpt"),
        "--models",
        str(d / "a.ckpt"),
        str(d / "b.ckpt"),
        "--output",
        str(d / "out.ckpt"),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--override", "layer.*:densty=0.5"], "unknown parameter 'densty'; did you mean 'density'?"),
        (["--include", "encoder.*"], "include pattern 'encoder.*' matches no tensor name"),
        (["--exclude", "nope.*"], "exclude pattern 'nope.*' matches no tensor name"),
        (["--include", "bn.*"], "no floating-point tensor is left to merge"),  # an integer buffer only
        (["--exclude", "layer.*"], "no floating-point tensor is left to merge"),
        (["--override", "head.*:lam=0"], "override pattern 'head.*' matches no tensor name"),
        (["--density", "1.5"], "density must be in (0, 1], got 1.5"),
        (["--lam", "nan"], "lam must be a finite number"),
        (["--t", "0.3"], "--t is not an option of --method ties"),
        (["--keep", "most"], "keep takes one of authors, mergekit, ceil"),
    ],
)
def test_merge_refuses_bad_options(ckpts, extra, message):
    _refused(_ties(ckpts, *extra), message)
    assert not (ckpts / "out.ckpt").exists()


def test_consensus_k_above_the_model_count_and_nan_weights(ckpts):
    _refused(
        [
            "--method",
            "consensus",
            "--k",
            "5",
            "--base",
            str(ckpts / "base.ckpt"),
            "--models",
            str(ckpts / "a.ckpt"),
            str(ckpts / "b.ckpt"),
            "--output",
            str(ckpts / "out.ckpt"),
        ],
        "k=5 but only 2 models",
    )
    _refused(
        [
            "--method",
            "weighted_average",
            "--weights",
            "nan",
            "1",
            "--models",
            str(ckpts / "a.ckpt"),
            str(ckpts / "b.ckpt"),
            "--output",
            str(ckpts / "out.ckpt"),
        ],
        "weights must be a finite number",
    )
    assert not (ckpts / "out.ckpt").exists()


def test_inputs_with_different_dtypes_are_refused(ckpts):
    _save(ckpts / "half.ckpt", 2.0, dtype=torch.float16)
    _refused(
        [
            "--method",
            "weighted_average",
            "--models",
            str(ckpts / "a.ckpt"),
            str(ckpts / "half.ckpt"),
            "--output",
            str(ckpts / "out.ckpt"),
        ],
        "dtype mismatch at 'layer.weight'",
    )


def test_non_finite_output_is_an_error_and_nothing_is_written(ckpts):
    state = torch.load(ckpts / "a.ckpt", weights_only=True)
    state["state_dict"]["layer.weight"][0, 0] = float("inf")
    torch.save(state, ckpts / "inf.ckpt")
    _refused(
        [
            "--method",
            "weighted_average",
            "--models",
            str(ckpts / "a.ckpt"),
            str(ckpts / "inf.ckpt"),
            "--output",
            str(ckpts / "out.ckpt"),
            "--quiet",
        ],
        "non-finite values in 'layer.weight'",
    )
    assert sorted(p.name for p in ckpts.iterdir()) == ["a.ckpt", "b.ckpt", "base.ckpt", "inf.ckpt"]


@pytest.mark.parametrize("kind", ["parent_is_file", "existing_directory"])
def test_unwritable_output_is_refused_before_reading_the_inputs(ckpts, kind):
    (ckpts / "garbage.ckpt").write_bytes(b"not a checkpoint")  # reading it would fail with another message
    (ckpts / "file").write_text("x")
    (ckpts / "dir").mkdir()
    output = ckpts / "file" / "out.ckpt" if kind == "parent_is_file" else ckpts / "dir"
    message = "is a file, not a folder" if kind == "parent_is_file" else "is a directory; name a file inside it"
    _refused(
        [
            "--method",
            "weighted_average",
            "--models",
            str(ckpts / "a.ckpt"),
            str(ckpts / "garbage.ckpt"),
            "--output",
            str(output),
        ],
        message,
    )


@pytest.mark.parametrize("content", [b"", b"\x93garbage\x00" * 50, "truncated"], ids=["empty", "random", "truncated"])
def test_unreadable_inputs_name_the_file(ckpts, content):
    bad = ckpts / "bad.ckpt"
    if content == "truncated":
        data = (ckpts / "b.ckpt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(content)
    _refused(
        [
            "--method",
            "weighted_average",
            "--models",
            str(ckpts / "a.ckpt"),
            str(bad),
            "--output",
            str(ckpts / "out.ckpt"),
        ],
        f"not a readable checkpoint: '{bad}' (truncated?",
    )


def test_models_directory_is_named(ckpts):
    _refused(
        ["--method", "weighted_average", "--models", str(ckpts), "--output", str(ckpts / "out.ckpt")],
        "is a directory; pass the checkpoint files inside it",
    )


def test_ema_layout_state_of_input_0_is_not_copied(ckpts):
    _save(
        ckpts / "ema.ckpt",
        1.0,
        current_model_state={"layer.weight": torch.zeros(2, 3)},
        averaging_state={"n_averaged": torch.tensor(9)},
    )
    merge_main(
        [
            "--method",
            "weighted_average",
            "--models",
            str(ckpts / "ema.ckpt"),
            str(ckpts / "b.ckpt"),
            "--output",
            str(ckpts / "out.ckpt"),
            "--quiet",
        ]
    )
    out = torch.load(ckpts / "out.ckpt", weights_only=True)
    assert "current_model_state" not in out and "averaging_state" not in out
    assert out["hyper_parameters"] == {"width": 2} and out["merge"]["method"] == "weighted_average"


def test_console_exit_code_and_message(ckpts):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_mix.cli", "merge", *_ties(ckpts, "--override", "layer.*:densty=0.5")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode != 0
    assert (
        "lightning-mix merge: error: --override 'layer.*:densty=0.5' of ties: unknown parameter 'densty'" in proc.stderr
    )


def test_soup_refuses_mismatched_checkpoints_before_building_the_model(tmp_path):
    _save(tmp_path / "a.ckpt")
    torch.save(
        {
            "state_dict": {
                "layer.weight": torch.zeros(4, 3),
                "layer.bias": torch.ones(2),
                "bn.num_batches_tracked": torch.tensor(1),
            }
        },
        tmp_path / "wide.ckpt",
    )
    # the config does not exist: reaching the model construction would fail with another message
    _refused(
        [
            "--models",
            str(tmp_path / "a.ckpt"),
            str(tmp_path / "wide.ckpt"),
            "--config",
            str(tmp_path / "none.yaml"),
            "--output",
            str(tmp_path / "soup.ckpt"),
        ],
        "shape mismatch at 'layer.weight'",
        soup_main,
    )
    _refused(
        [
            "--models",
            str(tmp_path / "a.ckpt"),
            str(tmp_path),
            "--config",
            "x.yaml",
            "--output",
            str(tmp_path / "soup.ckpt"),
        ],
        "is a directory",
        soup_main,
    )
    assert not (tmp_path / "soup.ckpt").exists()


@pytest.mark.slow
def test_soup_with_a_model_checkpoint_in_the_config(tmp_path, monkeypatch):
    from lightning_mix.demos import SmallCNN

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "with_ckpt.yaml"
    config.write_text(
        "trainer:\n  enable_checkpointing: true\n  callbacks:\n"
        "    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args:\n        dirpath: {tmp_path / 'ckpts'}\n        monitor: val/acc\n        mode: max\n"
    )
    paths = []
    for seed in range(2):
        torch.manual_seed(seed)
        model = SmallCNN(width=8)
        torch.save(
            {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, tmp_path / f"r{seed}.ckpt"
        )
        paths.append(str(tmp_path / f"r{seed}.ckpt"))
    soup_main(
        [
            "--models",
            *paths,
            "--config",
            str(ROOT / "examples" / "tiny.yaml"),
            "--config",
            str(config),
            "--recipe",
            "uniform",
            "--output",
            str(tmp_path / "soup.ckpt"),
            "--quiet",
        ]
    )
    assert torch.load(tmp_path / "soup.ckpt", weights_only=True)["soup"]["kept"] == paths
    assert not (tmp_path / "ckpts").exists() or not any((tmp_path / "ckpts").iterdir())  # validate never saves
