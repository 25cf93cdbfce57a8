"""Attention recomputed from q/k in hooks equals the weights of a non-fused reference forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_mix.demos import TinyViT
from lightning_mix.mixing.attention import (
    AttentionCapture,
    find_attention_modules,
    resolve_attention_modules,
)

TOL = {"atol": 1e-5, "rtol": 1e-4}


def _timm_vit(qk_norm: bool = False):
    timm = pytest.importorskip("timm")
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32,
        patch_size=8,
        in_chans=3,
        num_classes=5,
        embed_dim=48,
        depth=3,
        num_heads=3,
        qk_norm=qk_norm,
    ).eval()


def _reference_from_attn_drop(model: nn.Module, modules: list[nn.Module], images: torch.Tensor) -> list[torch.Tensor]:
    """Explicit softmax path (fused_attn=False): the weights are the input of attn_drop."""
    seen: list[torch.Tensor] = []
    handles = [m.attn_drop.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach())) for m in modules]
    for m in modules:
        m.fused_attn = False
    with torch.no_grad():
        out = model(images)
    for m in modules:
        m.fused_attn = True
    for h in handles:
        h.remove()
    return seen, out


@pytest.mark.parametrize("qk_norm", [False, True])
def test_timm_vit_attention_matches_the_non_fused_forward(qk_norm):
    torch.manual_seed(0)
    model = _timm_vit(qk_norm)
    if qk_norm:  # non-trivial norm parameters, so the norms matter
        for _, m in find_attention_modules(model):
            nn.init.normal_(m.q_norm.weight, 1.0, 0.3)
            nn.init.normal_(m.k_norm.bias, 0.0, 0.3)
    images = torch.randn(4, 3, 32, 32)
    modules = [m for _, m in find_attention_modules(model)]
    assert len(modules) == 3 and all(m.fused_attn for m in modules)
    with torch.no_grad(), AttentionCapture(modules, rows="all") as full:
        out_fused = model(images)
    with torch.no_grad(), AttentionCapture(modules, rows="cls") as cls:
        model(images)
    reference, out_reference = _reference_from_attn_drop(model, modules, images)
    torch.testing.assert_close(out_fused, out_reference, **TOL)
    for got_full, got_cls, want in zip(full.maps, cls.maps, reference):
        assert got_full.shape == (4, 3, 17, 17)
        torch.testing.assert_close(got_full, want, **TOL)
        torch.testing.assert_close(got_cls, want[:, :, 0], **TOL)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_demo_tinyvit_attention_matches_the_non_fused_forward(stem):
    torch.manual_seed(1)
    model = TinyViT(patch_size=4, depth=2, dim=32, num_heads=2, stem=stem, stem_channels=8).eval()
    images = torch.randn(3, 1, 28, 28)
    names = [n for n, _ in find_attention_modules(model)]
    assert names == ["blocks.0.attn", "blocks.1.attn"]
    modules = [m for _, m in find_attention_modules(model)]
    with torch.no_grad(), AttentionCapture(modules, rows="all") as capture:
        model(images)
    reference, _ = _reference_from_attn_drop(model, modules, images)
    for got, want in zip(capture.maps, reference):
        assert got.shape == (3, 2, 50, 50)
        torch.testing.assert_close(got, want, **TOL)


def test_torchvision_vit_attention_matches_need_weights():
    from torchvision.models import VisionTransformer

    torch.manual_seed(2)
    model = VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        mlp_dim=64,
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    found = find_attention_modules(model)
    assert [n for n, _ in found] == [
        "encoder.layers.encoder_layer_0.self_attention",
        "encoder.layers.encoder_layer_1.self_attention",
    ]
    modules = [m for _, m in found]
    inputs: list[torch.Tensor] = []
    handles = [m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach())) for m in modules]
    with torch.no_grad(), AttentionCapture(modules, rows="all") as full:
        model(images)
    with torch.no_grad(), AttentionCapture(modules, rows="cls") as cls:
        model(images)
    for h in handles:
        h.remove()
    for module, x, got_full, got_cls in zip(modules, inputs, full.maps, cls.maps):
        with torch.no_grad():
            _, want = module(x, x, x, need_weights=True, average_attn_weights=False)
        assert got_full.shape == (2, 4, 17, 17)
        torch.testing.assert_close(got_full, want, **TOL)
        torch.testing.assert_close(got_cls, want[:, :, 0], **TOL)


class _ReturnsWeights(nn.Module):
    """A user's attention module that returns (output, weights) from an explicit softmax."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_q, self.to_k = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        weights = (self.to_q(x) @ self.to_k(x).transpose(-2, -1) / x.shape[-1] ** 0.5).softmax(-1)
        return weights @ x, weights


def test_user_module_with_attention_fn_and_named_modules():
    torch.manual_seed(3)
    model = nn.Sequential()
    model.add_module("mix", _ReturnsWeights(8))
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="attention_fn"):
        resolve_attention_modules(model, ["mix"])
    with pytest.raises(ValueError, match="not in the model"):
        resolve_attention_modules(model, ["nope"], has_attention_fn=True)
    with pytest.raises(ValueError, match="no attention module found"):
        resolve_attention_modules(model)
    chosen = resolve_attention_modules(model, ["mix"], has_attention_fn=True)
    seen = []
    capture = AttentionCapture(
        [m for _, m in chosen],
        rows="cls",
        attention_fn=lambda m, a, k, out: out[1],
        on_capture=lambda i, t: seen.append(i),
    )
    with capture:
        _, weights = model(x)
    torch.testing.assert_close(capture.maps[0], weights[:, None, 0].detach())
    assert seen == [0]
    capture.enabled = False
    with capture:
        model(x)
    assert seen == [0]


def test_hooks_are_removed_and_do_not_change_the_output():
    torch.manual_seed(4)
    model = TinyViT(depth=1, dim=16, num_heads=2).eval()
    images = torch.randn(2, 1, 28, 28)
    before = model(images)
    capture = AttentionCapture([model.blocks[0].attn]).attach()
    during = model(images)
    capture.remove()
    capture.clear()
    model(images)
    torch.testing.assert_close(before, during)
    assert capture.maps == [None]
    assert not model.blocks[0].attn.qkv._forward_hooks  # reading a private dict is how a test sees hooks are gone


def test_capture_carries_no_gradient():
    model = TinyViT(depth=1, dim=16, num_heads=2)
    with AttentionCapture([model.blocks[0].attn], rows="all") as capture:
        model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert not capture.maps[0].requires_grad
    torch.testing.assert_close(capture.maps[0].sum(-1), torch.ones(2, 2, 50))
