"""lightning_mix.checkpoint_io: reading, checking and writing checkpoints."""

from __future__ import annotations

import os
import pickle
import signal

import pytest
import torch

from lightning_mix.checkpoint_io import (
    CheckpointError,
    IncompatibleCheckpointsError,
    atomic_write_path,
    check_compatible,
    check_output_path,
    checkpoint_metadata,
    extract_state_dict,
    load_checkpoint,
    load_state_dict_lazy,
    save_checkpoint_atomically,
)


def _state(value: float = 1.0) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), value), "n": torch.tensor(2)}


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage bytes\xff" * 10], ids=["empty", "random"])
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint: '.*bad\.ckpt' \(truncated\?"):
        load_checkpoint(path)


def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint: '.*cut\.ckpt' \(truncated\?"):
        load_state_dict_lazy(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.ckpt"):
        load_checkpoint(tmp_path / "nothere.ckpt")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(tmp_path)


class _Custom:
    pass


def test_objects_weights_only_refuses_get_the_trusted_file_hint(tmp_path):
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": _state(), "x": _Custom()}, path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only=False"):
        load_checkpoint(path)


def test_extract_state_dict_lightning_and_ema_layout():
    trained, average = _state(1.0), _state(2.0)
    ckpt = {"state_dict": average, "current_model_state": trained, "averaging_state": {"n_averaged": torch.tensor(3)}}
    assert extract_state_dict(ckpt)["w"][0] == 2.0
    assert extract_state_dict(ckpt, key="current_model_state")["w"][0] == 1.0
    assert extract_state_dict(_state(5.0))["w"][0] == 5.0
    with pytest.raises(CheckpointError, match="no 'current_model_state'"):
        extract_state_dict({"state_dict": average}, key="current_model_state")
    with pytest.raises(CheckpointError, match="not a state dict"):
        extract_state_dict({"a": 1})
    meta = checkpoint_metadata({**ckpt, "hyper_parameters": {"w": 4}, "optimizer_states": [], "epoch": 3})
    assert meta == {"hyper_parameters": {"w": 4}, "epoch": 3}
    assert checkpoint_metadata(_state()) is None


def test_check_compatible_names_shapes_dtypes():
    a = _state()
    assert check_compatible([a, _state(2.0)]) == ["w", "n"]
    with pytest.raises(IncompatibleCheckpointsError, match=r"shape mismatch at 'w': \(3,\) in x but \(4,\) in y"):
        check_compatible([a, {"w": torch.zeros(4), "n": torch.tensor(1)}], ["x", "y"])
    with pytest.raises(
        IncompatibleCheckpointsError, match=r"dtype mismatch at 'w': torch.float32 in model 0 but torch.float16"
    ):
        check_compatible([a, {"w": torch.zeros(3, dtype=torch.float16), "n": torch.tensor(1)}])
    check_compatible([a, {"w": torch.zeros(3, dtype=torch.float16), "n": torch.tensor(1)}], dtypes=False)
    with pytest.raises(IncompatibleCheckpointsError, match="model 1 has no tensor 'n'"):
        check_compatible([a, {"w": torch.zeros(3)}])


def test_check_output_path_refusals(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        check_output_path(tmp_path / "file" / "out.ckpt")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_output_path(tmp_path)
    with pytest.raises(FileExistsError, match="overwrite"):
        check_output_path(tmp_path / "file")
    assert check_output_path(tmp_path / "file", overwrite=True) == tmp_path / "file"
    assert check_output_path(tmp_path / "new" / "deeper" / "out.ckpt").name == "out.ckpt"  # created on save


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to read-only folders")
def test_check_output_path_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            check_output_path(folder / "out.ckpt")
    finally:
        folder.chmod(0o755)


def test_atomic_save_mode_matches_torch_save(tmp_path):
    previous = os.umask(0o022)
    try:
        save_checkpoint_atomically(_state(), tmp_path / "a.ckpt")
        torch.save(_state(), tmp_path / "b.ckpt")
    finally:
        os.umask(previous)
    mode = (tmp_path / "a.ckpt").stat().st_mode & 0o777
    assert mode == 0o644 == (tmp_path / "b.ckpt").stat().st_mode & 0o777
    assert torch.equal(load_state_dict_lazy(tmp_path / "a.ckpt")["w"], _state()["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "b.ckpt"]


@pytest.mark.parametrize("interrupt", ["keyboard", "sigterm"])
def test_interrupted_save_leaves_no_temporary_and_keeps_the_old_file(tmp_path, monkeypatch, interrupt):
    target = tmp_path / "out.ckpt"
    target.write_bytes(b"old")
    real_save = torch.save

    def save_then_interrupt(obj, handle, *args, **kwargs):
        real_save(obj, handle)
        if interrupt == "keyboard":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # the handler installed during the write raises SystemExit

    monkeypatch.setattr(torch, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt if interrupt == "keyboard" else SystemExit):
        save_checkpoint_atomically(_state(), target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.ckpt"] and target.read_bytes() == b"old"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))


def test_atomic_write_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    """Writers that take a path (trainer.save_checkpoint, savefig) get the same atomicity."""
    target = tmp_path / "sub" / "figure.png"
    with atomic_write_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".figure.png.")
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["figure.png"]

    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_write_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"new"  # the old file is kept, no temporary left
    assert sorted(p.name for p in target.parent.iterdir()) == ["figure.png"]

    with atomic_write_path(tmp_path / "untouched.ckpt"):
        pass  # a block that writes nothing (a rank that does not write) creates nothing
    assert not (tmp_path / "untouched.ckpt").exists()
