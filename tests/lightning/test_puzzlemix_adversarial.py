"""PuzzleMix's adversarial step and clean loss in a Trainer: against hand computations on a tiny CNN."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from puzzlemix_helpers import NUM_CLASSES, TinyCNN, image_data
from tiny_trainer import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "references"))
from puzzlemix_authors import authors_adversarial_noise, authors_clean_loss

from lightning_mix.callbacks import PuzzleMix
from lightning_mix.callbacks._rng import CounterStream
from lightning_mix.losses import soft_cross_entropy
from lightning_mix.mixing import dense_targets
from lightning_mix.mixing.input_saliency import input_gradient, input_gradient_saliency
from lightning_mix.mixing.puzzlemix import PuzzleMixer

MEAN, STD = [0.5, 0.45, 0.4], [0.25, 0.2, 0.3]


def _trainer(callbacks, steps=1, **options):
    settings = {"max_epochs": None, "max_steps": steps, "limit_val_batches": 0, "devices": "auto"}
    return tiny_trainer(callbacks=callbacks, **{**settings, **options})


def _normalised_data(n=16):
    pixels, labels = image_data(n).tensors
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return TensorDataset((pixels - m) / s, labels), pixels


class GradRecorder(pl.Callback):
    def __init__(self) -> None:
        self.grads: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append([p.grad.detach().clone() for p in pl_module.parameters()])


def test_adv_p_zero_mixes_exactly_as_the_plain_pipeline():
    """Regression: adv_p=0 (default) and clean_lam=0 give the batch the callback gave before both options."""
    data = image_data(16)
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    before = copy.deepcopy(model)
    puzzle = PuzzleMix(block_nums=[2, 4], solver="torch", seed=7)
    _trainer([puzzle]).fit(model, DataLoader(data, batch_size=16))
    x, y = data.tensors
    dense = dense_targets(y, NUM_CLASSES)
    stream = CounterStream(7)
    block_num = [2, 4][int(torch.randint(2, (), generator=stream.generator(torch.device("cpu"), 1)))]
    saliency = input_gradient_saliency(before.eval(), x, dense)
    expected = PuzzleMixer(solver="torch")(x, dense, saliency, block_num, stream.generator(torch.device("cpu")))
    assert puzzle.last_adversarial is None
    seen_x, seen_y = model.train_seen[0]
    assert torch.equal(seen_x, expected.inputs) and torch.equal(seen_y, expected.targets)


def test_adversarial_noise_is_the_fgsm_step_of_the_pass_gradient_within_the_pixel_range():
    data, pixels = _normalised_data()
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    before = copy.deepcopy(model)
    puzzle = PuzzleMix(
        block_nums=[4], n_labels=2, transport=False, solver="torch", adv_p=1.0, pixel_mean=MEAN, pixel_std=STD, seed=1
    )
    _trainer([puzzle]).fit(model, DataLoader(data, batch_size=16))
    step, mixed = puzzle.last_adversarial, puzzle.last_mixed
    assert step.own and step.partner and 0 <= step.coef < 1
    eps = 10 / 255
    # the pass ran at the random start; its input gradient's sign drives the noise (the authors' rule)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    probe = (pixels + step.start - m) / s
    dense = dense_targets(data.tensors[1], NUM_CLASSES)
    gradient, _ = input_gradient(before.eval(), probe, dense)
    expected_noise = authors_adversarial_noise(step.start, gradient, 10.0, step.coef)
    torch.testing.assert_close(step.noise, expected_noise)
    nonzero = gradient != 0
    assert torch.equal(step.noise[nonzero].sign(), gradient[nonzero].sign()) or step.coef == 0
    assert step.noise.abs().max() <= eps + 1e-6
    # both sides perturbed: every pixel of the mix is the perturbed own or perturbed partner pixel, in [0, 1]
    perturbed = (pixels + step.noise).clamp(0, 1)
    mixed_pixels = mixed.inputs * s + m
    assert mixed_pixels.min() >= -1e-6 and mixed_pixels.max() <= 1 + 1e-6
    own = (mixed_pixels - perturbed).abs().amax(dim=1) < 1e-5
    partner = (mixed_pixels - perturbed[mixed.index]).abs().amax(dim=1) < 1e-5
    assert (own | partner).all()
    # each 2x2 block (4x4 grid on 8x8) is wholly the own or wholly the partner image, and lam is the own share
    own_blocks = own.view(16, 4, 2, 4, 2).all(dim=4).all(dim=2)
    partner_blocks = partner.view(16, 4, 2, 4, 2).all(dim=4).all(dim=2)
    assert (own_blocks | partner_blocks).all()
    paired = mixed.index != torch.arange(16)
    torch.testing.assert_close(own_blocks.float().mean(dim=(1, 2))[paired], mixed.lam[paired])


@pytest.mark.parametrize("accumulate", [1, 2])
def test_clean_loss_adds_clean_lam_times_the_clean_cross_entropy_to_the_step_gradient(accumulate):
    data = image_data(32)
    pl.seed_everything(0)
    model = TinyCNN(dropout=0.0)
    before = copy.deepcopy(model)
    puzzle = PuzzleMix(block_nums=[2, 4], solver="torch", clean_lam=0.7, seed=2)
    grads = GradRecorder()
    _trainer([puzzle, grads], steps=1, accumulate_grad_batches=accumulate).fit(model, DataLoader(data, batch_size=16))
    # by hand: the module's loss on the mix plus 0.7 * cross-entropy on the clean batch (train mode), per micro-batch
    before.train()
    total = 0.0
    for i, (x_mix, y_mix) in enumerate(model.train_seen):
        x, y = data.tensors[0][16 * i : 16 * (i + 1)], data.tensors[1][16 * i : 16 * (i + 1)]
        clean = authors_clean_loss(before(x), y, 0.7)
        total = total + (soft_cross_entropy(before(x_mix), y_mix) + clean) / accumulate
    expected = torch.autograd.grad(total, list(before.parameters()))
    assert len(grads.grads) == 1 and len(model.train_seen) == accumulate
    for got, want in zip(grads.grads[0], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_clean_loss_runs_the_pass_in_train_mode_and_the_logged_loss_is_the_modules_own():
    class Returns(TinyCNN):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.returned = loss.detach().clone()
            return loss

    pl.seed_everything(0)
    model = Returns(dropout=0.0)
    puzzle = PuzzleMix(block_nums=[2], solver="torch", clean_lam=1.0)
    assert puzzle.saliency_eval_mode is False and PuzzleMix().saliency_eval_mode is True
    assert PuzzleMix(clean_lam=1.0, saliency_eval_mode=True).saliency_eval_mode is True

    class Outputs(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.loss = outputs["loss"].clone()

    out = Outputs()
    _trainer([puzzle, out]).fit(model, DataLoader(image_data(16), batch_size=16))
    assert model.eval_autocast == []  # no eval-mode forward: the pass ran in train mode
    # the loss Lightning reports is the module's own; the clean term joins the backward only
    assert torch.equal(out.loss, model.returned)
    assert puzzle._clean_term is None


def test_clean_loss_refuses_manual_optimisation_before_any_step():
    class Manual(TinyCNN):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    model = Manual()
    with pytest.raises(ValueError, match="optimises manually"):
        _trainer([PuzzleMix(block_nums=[2], solver="torch", clean_lam=1.0)]).fit(
            model, DataLoader(image_data(16), batch_size=16)
        )
    assert model.train_seen == []


def test_constructor_rejects_bad_adversarial_and_clean_options():
    with pytest.raises(ValueError, match="adv_p is a probability"):
        PuzzleMix(adv_p=1.5)
    with pytest.raises(ValueError, match="adv_eps"):
        PuzzleMix(adv_eps=-1.0)
    with pytest.raises(ValueError, match="clean_lam must be non-negative"):
        PuzzleMix(clean_lam=-0.1)
    with pytest.raises(ValueError, match="go together"):
        PuzzleMix(pixel_mean=[0.5])


def test_wrong_channel_count_of_the_normalisation_raises_before_any_step():
    model = TinyCNN()
    puzzle = PuzzleMix(block_nums=[2], solver="torch", pixel_mean=[0.1, 0.2], pixel_std=[0.3, 0.3])
    with pytest.raises(ValueError, match="images have 3 channels"):
        _trainer([puzzle]).fit(model, DataLoader(image_data(16), batch_size=16))
    assert model.train_seen == []


def test_bf16_mixed_runs_both_options_with_the_clean_term_in_the_gradient():
    data, _ = _normalised_data(32)

    def run(clean_lam):
        pl.seed_everything(0)
        model = TinyCNN(dropout=0.0)
        puzzle = PuzzleMix(
            block_nums=[2, 4],
            solver="torch",
            adv_p=1.0,
            clean_lam=clean_lam,
            saliency_eval_mode=False,  # the same pass with and without the clean loss
            pixel_mean=MEAN,
            pixel_std=STD,
            seed=4,
        )
        grads = GradRecorder()
        _trainer([puzzle, grads], steps=2, precision="bf16-mixed").fit(model, DataLoader(data, batch_size=16))
        return model, puzzle, grads

    model, puzzle, grads = run(0.5)
    assert model.eval_autocast == []  # the pass ran in train mode
    assert puzzle.last_mixed.inputs.dtype == torch.float32
    assert puzzle.last_adversarial.noise.abs().max() <= 10 / 255 + 1e-6
    assert all(torch.isfinite(g).all() for step in grads.grads for g in step)
    # without the clean loss the first step sees the same mixed batch, but its gradient lacks the clean term
    plain_model, _, plain = run(0.0)
    assert torch.equal(plain_model.train_seen[0][0], model.train_seen[0][0])
    assert any(not torch.allclose(a, b) for a, b in zip(grads.grads[0], plain.grads[0]))


def test_clean_loss_with_a_gradient_scaler_is_scaled_with_the_loss():
    """With a GradScaler (16-mixed) on_before_backward gets the loss times the scale; the clean term must be
    scaled alike. On CPU Lightning turns "16-mixed" into bf16, so the plugin is given explicitly."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    data = image_data(16)

    def run(clean_lam):
        pl.seed_everything(0)
        model = TinyCNN(dropout=0.0)
        before = copy.deepcopy(model)
        grads = GradRecorder()
        puzzle = PuzzleMix(block_nums=[2], solver="torch", clean_lam=clean_lam, saliency_eval_mode=False, seed=2)
        plugin = MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=1024.0))
        _trainer([puzzle, grads], plugins=[plugin]).fit(model, DataLoader(data, batch_size=16))
        return grads.grads[0], before

    with_clean, before = run(5.0)
    without, _ = run(0.0)
    x, y = data.tensors
    before.train()
    expected = torch.autograd.grad(authors_clean_loss(before(x), y, 5.0), list(before.parameters()))
    for a, b, want in zip(with_clean, without, expected):  # the unscaled difference is the clean term's gradient
        torch.testing.assert_close(a - b, want, rtol=0.05, atol=2e-3)


def test_t_size_not_dividing_a_block_size_raises_before_any_step():
    model = TinyCNN()
    puzzle = PuzzleMix(block_nums=[2], t_size=3, solver="torch")  # 8x8 images: blocks of 4
    with pytest.raises(ValueError, match="t_size=3 must divide the mask's block size 4"):
        _trainer([puzzle]).fit(model, DataLoader(image_data(16), batch_size=16))
    assert model.train_seen == []
