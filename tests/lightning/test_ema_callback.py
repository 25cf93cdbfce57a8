"""The EMA callback in a Trainer: values, schedule, swap rules, precision, checkpoints and resume."""

from __future__ import annotations

import pytest
import torch
from ema_common import TinyBN, float_state
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny_trainer import tiny_trainer
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_mix.callbacks.ema import EMA

pytestmark = pytest.mark.slow


def _trainer(tmp_path, callbacks, **kwargs) -> Trainer:
    return tiny_trainer(callbacks=callbacks, **{"max_epochs": 2, "default_root_dir": tmp_path, **kwargs})


class ReferenceEMA(Callback):
    """An independent EMA: torch's AveragedModel + get_ema_multi_avg_fn, updated on real optimizer steps."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.model = None
        self.last_step = 0
        self.double = None

    def on_fit_start(self, trainer, pl_module):
        self.model = AveragedModel(pl_module, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self.last_step:
            self.last_step = trainer.global_step
            self.model.update_parameters(pl_module)
            current = float_state(pl_module)
            if self.double is None:
                self.double = {k: v.double() for k, v in current.items()}
            else:
                d = self.decay
                self.double = {k: d * v + (1 - d) * current[k].double() for k, v in self.double.items()}


def test_values_equal_averaged_model_and_respect_accumulation(tmp_path):
    seed_everything(0)
    model = TinyBN()
    ema = EMA(decay=0.8, start_step=1, evaluate="raw")  # AveragedModel copies on its first update
    ref = ReferenceEMA(0.8)
    trainer = _trainer(tmp_path, [ema, ref], accumulate_grad_batches=2, max_epochs=2)
    trainer.fit(model)
    assert trainer.global_step == 4  # 4 batches per epoch, 2 per step
    assert ema.num_updates == 4
    ours = ema.averaged_state_dict()
    expected = ref.model.module.state_dict()
    for name, value in expected.items():
        if value.is_floating_point():
            assert torch.equal(ours[name], value), name
    assert ours["bn1.num_batches_tracked"].item() == 8  # copied from the model (8 forward passes), not averaged
    # after fit the module holds the EMA weights
    for name, value in float_state(model).items():
        assert torch.equal(value, ours[name]), name


def test_warmup_schedule_in_trainer(tmp_path):
    seed_everything(0)
    model = TinyBN()
    ema = EMA(decay=0.99, warmup=True, inv_gamma=1.0, power=2 / 3, start_step=0)
    seen = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append(ema.decay_at(trainer.global_step))

    _trainer(tmp_path, [ema, Probe()], max_epochs=2).fit(model)
    # steps 1..8: 1 - (1 + t)^(-2/3); t = 7 gives 0.75 (8^(2/3) = 4)
    assert seen[6] == pytest.approx(0.75)
    assert seen == pytest.approx([min(0.99, 1 - (1 + t) ** (-2 / 3)) for t in range(1, 9)])


def test_no_swap_before_first_update_then_ema(tmp_path):
    seed_everything(0)
    records = []

    class Recording(TinyBN):
        def validation_step(self, batch, batch_idx):
            if batch_idx == 0:
                records.append(("val", self.global_step, float_state(self)))
            return super().validation_step(batch, batch_idx)

    class RawProbe(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            records.append(("raw", trainer.global_step, float_state(pl_module)))
            if ema.averaged_tensors is not None:
                records.append(("ema", trainer.global_step, ema.averaged_state_dict()))

    ema = EMA(decay=0.5, start_step=6)  # starts in the second epoch
    trainer = _trainer(tmp_path, [ema, RawProbe()], max_epochs=2, num_sanity_val_steps=1)
    trainer.fit(Recording())
    vals = [r for r in records if r[0] == "val"]
    assert [v[1] for v in vals] == [0, 4, 8]  # sanity check, end of epoch 0, end of epoch 1
    raw_at = {r[1]: r[2] for r in records if r[0] == "raw"}
    ema_at = {r[1]: r[2] for r in records if r[0] == "ema"}
    assert min(ema_at) == 6
    # epoch 0: the EMA has not started: validation sees the trained weights
    for name, value in vals[1][2].items():
        assert torch.equal(value, raw_at[4][name]), name
    # epoch 1: the EMA weights, which differ from the trained ones
    assert any(not torch.equal(vals[2][2][n], raw_at[8][n]) for n in vals[2][2])
    for name, value in vals[2][2].items():
        assert torch.equal(value, ema_at[8][name]), name
    # and training went on with the raw weights after validation
    assert ema.num_updates == 3  # steps 6 (copy), 7, 8


def test_evaluate_both_was_removed_with_a_pointer_to_the_public_way():
    # it replaced the module's validation_step and log (issue 10: public hooks only)
    with pytest.raises(ValueError, match=r"evaluate='both'\) was removed.*trainer\.validate"):
        EMA(evaluate="both")  # type: ignore[arg-type]


def test_validation_swaps_only_through_public_hooks(tmp_path):
    seed_everything(0)
    model = TinyBN()
    ema = EMA(decay=0.7)
    trainer = _trainer(tmp_path, [ema], max_epochs=1)
    trainer.fit(model)
    # the module's methods were never replaced
    assert "validation_step" not in vars(model) and "log" not in vars(model) and "forward" not in vars(model)
    # the module holds the EMA after fit, so the logged validation loss is that of the EMA weights
    model.eval()
    with torch.no_grad():
        ema_loss = torch.nn.functional.cross_entropy(model(model.val_x), model.val_y)
    assert torch.allclose(trainer.callback_metrics["val/loss"], ema_loss, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_low_precision_ema_moves_and_matches_float64_reference(tmp_path, precision):
    seed_everything(0)
    model = TinyBN(lr=0.05)
    ema = EMA(decay=0.9, start_step=1, evaluate="raw")
    ref = ReferenceEMA(0.9)
    trainer = _trainer(tmp_path, [ema, ref], precision=precision, max_epochs=2)
    trainer.fit(model)
    assert all(t.dtype == torch.float32 for t in ema.averaged_tensors if t.is_floating_point())
    ours = ema.averaged_state_dict()
    for name, value in ref.double.items():
        assert torch.allclose(ours[name].double(), value, rtol=1e-5, atol=1e-6), name
    if precision == "bf16-true":
        # the float32 EMA holds values a bf16 copy could not represent
        w = ours["fc1.weight"]
        assert not torch.equal(w, w.bfloat16().float())


def test_checkpoint_layout_and_load_from_checkpoint(tmp_path):
    seed_everything(0)
    model = TinyBN()
    ema = EMA(decay=0.8)
    trainer = _trainer(tmp_path, [ema], max_epochs=1)
    trainer.fit(model)
    path = tmp_path / "after_fit.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    assert set(ckpt["state_dict"]) == set(ckpt["current_model_state"])
    ours = ema.averaged_state_dict()
    for name, value in ckpt["state_dict"].items():
        assert torch.equal(value, ours[name]), name
    assert not torch.equal(ckpt["current_model_state"]["fc1.weight"], ours["fc1.weight"])
    loaded = TinyBN.load_from_checkpoint(path)
    for name, value in float_state(loaded).items():
        assert torch.equal(value, ours[name]), name


def _resume_case(tmp_path, callback_factory, epochs_first: int, epochs_total: int, precision="32-true"):
    seed_everything(0)
    straight_model = TinyBN()
    straight_cb = callback_factory()
    _trainer(tmp_path / "a", [straight_cb], max_epochs=epochs_total, precision=precision).fit(straight_model)

    seed_everything(0)
    first_model = TinyBN()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    _trainer(
        tmp_path / "b",
        [callback_factory(), ckpt],
        max_epochs=epochs_first,
        enable_checkpointing=True,
        precision=precision,
    ).fit(first_model)
    seed_everything(0)
    resumed_model = TinyBN()
    resumed_cb = callback_factory()
    _trainer(tmp_path / "c", [resumed_cb], max_epochs=epochs_total, precision=precision).fit(
        resumed_model, ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    return straight_model, straight_cb, resumed_model, resumed_cb


@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_resume_gives_identical_ema_and_weights(tmp_path, precision):
    straight_model, straight_cb, resumed_model, resumed_cb = _resume_case(
        tmp_path, lambda: EMA(decay=0.7, warmup=True, update_every_n_steps=2), 2, 4, precision
    )
    assert straight_cb.num_updates == resumed_cb.num_updates == 8
    a, b = straight_cb.averaged_state_dict(), resumed_cb.averaged_state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert straight_cb._weights.backup is not None
    for (_, x), (_, y) in zip(
        zip(straight_cb._weights.entries, straight_cb._weights.backup),
        zip(resumed_cb._weights.entries, resumed_cb._weights.backup),
    ):
        assert torch.equal(x, y)  # the raw weights too
    for name, value in float_state(straight_model).items():
        assert torch.equal(value, float_state(resumed_model)[name])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="evaluate"):
        EMA(evaluate="best")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="owns_final_weights"):
        EMA(owns_final_weights="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="update_every_n_steps"):
        EMA(update_every_n_steps=0)


def test_sharded_strategies_raise_a_clear_error():
    import types

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from lightning_mix.callbacks._trainer_state import check_not_sharded
    from lightning_mix.callbacks.swa import SWA

    for callback in (EMA(), SWA()):
        fake_trainer = types.SimpleNamespace(strategy=FSDPStrategy(), max_epochs=4)
        with pytest.raises(RuntimeError, match="FSDPStrategy.*strategy='ddp'"):
            callback.setup(fake_trainer, None, "fit")
    check_not_sharded(types.SimpleNamespace(strategy=DDPStrategy()), "EMA")  # no error


def test_second_fit_restores_trained_weights_and_starts_a_new_ema(tmp_path):
    seed_everything(0)
    model = TinyBN()
    ema = EMA(decay=0.9)
    _trainer(tmp_path, [ema], max_epochs=1).fit(model)
    raw_after_first = {names[0]: t.float().clone() for (names, _), t in zip(ema._weights.entries, ema._weights.backup)}
    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen.update(float_state(pl_module))

    _trainer(tmp_path, [ema, Probe()], max_epochs=1).fit(model)
    for name, value in seen.items():
        assert torch.equal(value, raw_after_first[name]), name  # training went on from the trained weights
    assert ema.num_updates == 4


def test_checkpoints_interchange_with_lightning_weight_averaging(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    # ours -> Lightning: its on_load_checkpoint restores its AveragedModel from our layout
    seed_everything(0)
    ema = EMA(decay=0.8)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ours", save_last=True, save_top_k=0)
    _trainer(tmp_path, [ema, ckpt], max_epochs=1, enable_checkpointing=True).fit(TinyBN())
    ours = ema.averaged_state_dict()
    theirs = EMAWeightAveraging(decay=0.8)
    resumed = TinyBN()
    _trainer(tmp_path, [theirs], max_epochs=1).fit(resumed, ckpt_path=tmp_path / "ours" / "last.ckpt")
    for name, value in theirs._average_model.module.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, ours[name]), name

    # Lightning -> ours: our EMA continues from its average, the module from its raw weights
    seed_everything(0)
    theirs = EMAWeightAveraging(decay=0.8)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "theirs", save_last=True, save_top_k=0)
    _trainer(tmp_path, [theirs, ckpt], max_epochs=1, enable_checkpointing=True).fit(TinyBN())
    saved = torch.load(tmp_path / "theirs" / "last.ckpt", weights_only=False)
    ema = EMA(decay=0.8)
    seen = {}

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["raw"] = float_state(pl_module)
            seen["ema"] = ema.averaged_state_dict()

    _trainer(tmp_path, [ema, Probe()], max_epochs=2).fit(TinyBN(), ckpt_path=tmp_path / "theirs" / "last.ckpt")
    for name, value in saved["state_dict"].items():
        if value.is_floating_point():
            assert torch.equal(seen["ema"][name], value.float()), name
            assert torch.equal(seen["raw"][name], saved["current_model_state"][name].float()), name


def test_resume_of_an_ema_kept_on_the_side_is_exact(tmp_path):
    # owns_final_weights=False: the EMA lives in the callback state, state_dict keeps the trained weights
    straight_model, straight_cb, resumed_model, resumed_cb = _resume_case(
        tmp_path, lambda: EMA(decay=0.7, owns_final_weights=False), 1, 2
    )
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert "current_model_state" not in saved and saved["callbacks"]["EMA"]["average"]
    assert straight_cb.num_updates == resumed_cb.num_updates == 8
    a, b = straight_cb.averaged_state_dict(), resumed_cb.averaged_state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for name, value in float_state(straight_model).items():  # the module kept its trained weights
        assert torch.equal(value, float_state(resumed_model)[name])
        assert not name.endswith("weight") or not torch.equal(value, a[name].float())
