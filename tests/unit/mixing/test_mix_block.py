"""PixelMixBlock, the mask regulariser and the momentum schedule against the authors' rules (tests/references)."""

import pytest
import torch
from references.automix_reference import reference_mask_loss, reference_momentum, reference_partner_mask

from lightning_mix.mixing.mix_block import (
    PixelMixBlock,
    SAMixBlock,
    adjust_mask_to_lam,
    automix_mask_loss,
    automix_momentum,
    mix_with_mask,
    rescale_lam,
)


def _block(channels=6, std=0.5):
    torch.manual_seed(0)
    block = PixelMixBlock(channels)
    with torch.no_grad():  # larger weights than the authors' N(0, 0.01) start, so the attention is not uniform
        for p in block.parameters():
            p.normal_(std=std)
    return block


def test_mask_matches_the_authors_rule_and_lies_in_unit_interval():
    block = _block()
    features = torch.randn(4, 6, 3, 3)
    index = torch.tensor([2, 0, 3, 1])
    mask = block(features, index, torch.full((4,), 0.3), (12, 12))
    expected = reference_partner_mask(
        block.query.weight[:, :, 0, 0].detach(),
        block.query.bias.detach(),
        block.value.weight[:, :, 0, 0].detach(),
        block.value.bias.detach(),
        features,
        index,
        scale=4,
    )
    assert mask.shape == (4, 1, 12, 12) and mask.dtype == torch.float32
    torch.testing.assert_close(mask, expected, rtol=1e-5, atol=1e-6)
    assert bool(((mask >= 0) & (mask <= 1)).all())
    assert mask.std() > 1e-3  # not a constant mask


def test_authors_initialisation_gives_a_nearly_constant_half_mask():
    block = PixelMixBlock(8)
    assert float(block.query.weight.detach().std()) < 0.02 and float(block.value.bias.detach().abs().max()) == 0.0
    mask = block(torch.randn(2, 8, 4, 4), torch.tensor([1, 0]), torch.full((2,), 0.5), (8, 8))
    torch.testing.assert_close(mask, torch.full_like(mask, 0.5), atol=0.02, rtol=0)


def test_mix_with_mask_is_the_authors_pixel_mixup():
    x = torch.randn(3, 2, 4, 4)
    index = torch.tensor([1, 2, 0])
    m = torch.rand(3, 1, 4, 4)
    torch.testing.assert_close(mix_with_mask(x, index, m), x * (1 - m) + x[index] * m)


def test_lam_concat_makes_the_mask_depend_on_lam():
    torch.manual_seed(1)
    block = PixelMixBlock(4, lam_embedding="concat")
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(std=1.0)
    features, index = torch.randn(2, 4, 3, 3), torch.tensor([1, 0])
    low = block(features, index, torch.full((2,), 0.1), (3, 3))
    high = block(features, index, torch.full((2,), 0.9), (3, 3))
    assert (low - high).abs().max() > 1e-3


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.93])
def test_mask_loss_matches_reference(lam):
    mask = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))
    got = automix_mask_loss(mask, torch.full((5,), lam), margin=0.1)
    assert float(got) == pytest.approx(reference_mask_loss(mask, lam, 0.1), abs=1e-6)


def test_momentum_schedule_matches_the_authors_hook():
    total = 1000
    for step in (0, 50, 99, 100, 101, 500, 999, 1000):
        assert automix_momentum(step, total) == pytest.approx(reference_momentum(step, total), abs=1e-12)
    assert automix_momentum(0, total) == 0.999 and automix_momentum(total, total) == pytest.approx(0.999999)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="upsample_mode"):
        PixelMixBlock(4, upsample_mode="area")
    with pytest.raises(ValueError, match="lam_embedding"):
        PixelMixBlock(4, lam_embedding="mul")
    with pytest.raises(ValueError, match=r"\(N, 4, h, w\).*feature_channels"):
        PixelMixBlock(4)(torch.randn(2, 5, 3, 3), torch.tensor([1, 0]), torch.ones(2), (3, 3))


def test_samix_block_matches_the_authors_rule():
    from references.automix_reference import reference_samix_partner_mask

    torch.manual_seed(0)
    block = SAMixBlock(6, value_hidden=4)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.normal_(std=0.5)
                if module.bias is not None:
                    module.bias.normal_(std=0.1)
    features = torch.randn(4, 6, 3, 3)
    index = torch.tensor([3, 2, 0, 1])
    mask = block(features, index, torch.full((4,), 0.3), (12, 12))
    with torch.no_grad():
        expected = reference_samix_partner_mask(block, features, index, 0.3, (12, 12))
    assert mask.shape == (4, 1, 12, 12) and bool(((mask >= 0) & (mask <= 1)).all())
    torch.testing.assert_close(mask, expected, rtol=1e-4, atol=1e-5)
    other = block(features, index, torch.full((4,), 0.8), (12, 12))
    assert (other - mask).abs().max() > 1e-4  # lam enters the mask


def test_rescale_lam_is_the_authors_and_symmetric():
    from references.automix_reference import reference_rescale_lam_mult

    lam = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.77, 1.0], dtype=torch.float64)
    got = rescale_lam(lam, 0.25)
    expected = torch.tensor([reference_rescale_lam_mult(float(v), 0.25) for v in lam], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(rescale_lam(1 - lam, 0.25), 1 - got)
    assert float(got[0]) == 0.0 and float(got[3]) == pytest.approx(0.5) and float(got[-1]) == pytest.approx(1.0)


def test_adjust_mask_to_lam_matches_the_authors_branch_and_hits_lam():
    from references.automix_reference import reference_mask_adjust

    g = torch.Generator().manual_seed(0)
    mask = torch.rand(6, 1, 5, 5, generator=g)
    for lam in (0.2, 0.5, 0.9):
        got = adjust_mask_to_lam(mask, torch.full((6,), lam))
        torch.testing.assert_close(got, reference_mask_adjust(mask, lam), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close((1 - got).mean(dim=(1, 2, 3)), torch.full((6,), lam), rtol=1e-5, atol=1e-6)
        assert bool(((got >= 0) & (got <= 1)).all())


@pytest.mark.parametrize("lam", [0.2, 0.6])
def test_l1_variance_mask_loss_matches_reference(lam):
    from references.automix_reference import reference_mask_loss_l1_variance

    mask = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    got = automix_mask_loss(mask, torch.full((5,), lam), margin=0.1, variance_weight=2.0)
    assert float(got) == pytest.approx(reference_mask_loss_l1_variance(mask, lam, 0.1), abs=1e-6)
