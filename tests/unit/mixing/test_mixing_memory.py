"""Huge-page-backed mixer outputs: same values as the plain ops, the advice covers exactly the buffer's
whole pages, a refusal or LIGHTNING_MIX_HUGEPAGES=0 switches it off, gradients still flow."""

from __future__ import annotations

import mmap

import pytest
import torch

from lightning_mix.mixing import CutMix, FMix, Mixup, ResizeMix, _memory
from lightning_mix.mixing.targets import dense_targets


class MadviseRecorder:
    def __init__(self, result: int = 0) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.result = result

    def __call__(self, address: int, length: int, advice: int) -> int:
        self.calls.append((address, length, advice))
        return self.result


@pytest.fixture
def advised(monkeypatch):
    """Every CPU output goes through the advised path, with madvise recorded instead of called."""
    recorder = MadviseRecorder()
    monkeypatch.setattr(_memory, "HUGEPAGE_MIN_BYTES", 0)
    monkeypatch.setattr(_memory, "_enabled", True)
    monkeypatch.setattr(_memory, "_madvise", recorder)
    return recorder


MIXERS = [
    CutMix(1.0, mode="batch"),
    CutMix(1.0, mode="pair"),
    CutMix(1.0, mode="elem"),
    Mixup(1.0, mode="elem"),
    FMix(1.0, mode="elem"),
    FMix(1.0, mode="elem", max_soft=0.1),
    ResizeMix(mode="batch"),
]


@pytest.mark.parametrize("mixer", MIXERS, ids=repr)
def test_advised_outputs_equal_the_plain_ones(mixer, advised, monkeypatch):
    inputs = torch.randn(6, 3, 80, 72)  # rows of 72 elements: CutMix takes its row-gather path
    targets = dense_targets(torch.tensor([0, 1, 2, 0, 1, 2]), 3)
    got = mixer(inputs, targets, generator=torch.Generator().manual_seed(1))
    assert advised.calls, "the output should have been advised"
    monkeypatch.setattr(_memory, "_enabled", False)
    expected = mixer(inputs, targets, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got.inputs, expected.inputs)
    assert torch.equal(got.lam, expected.lam)
    assert got.inputs.is_contiguous()


def test_helpers_match_torch(advised):
    source = torch.randn(5, 4, 3)
    index = torch.tensor([4, 0, 0, 2])
    for dim in range(3):
        assert torch.equal(_memory.index_select(source, dim, index[index < source.shape[dim]]),
                           source.index_select(dim, index[index < source.shape[dim]]))
    copy = _memory.clone(source)
    assert torch.equal(copy, source) and copy.data_ptr() != source.data_ptr()
    images = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    copy = _memory.clone(images)  # a channels-last batch stays channels-last
    assert torch.equal(copy, images) and copy.is_contiguous(memory_format=torch.channels_last)


def test_advice_covers_exactly_the_whole_pages_of_the_buffer(advised):
    like = torch.empty(0)
    out = _memory.new_empty((3, 1000, 777), like)  # 9.3 MB, not a whole number of pages
    (address, length, advice), = advised.calls
    page = mmap.PAGESIZE
    start, end = out.data_ptr(), out.data_ptr() + out.numel() * out.element_size()
    assert advice == 14  # MADV_HUGEPAGE
    assert address % page == 0 and length % page == 0
    assert start <= address < start + page and end - page < address + length <= end


def test_a_refusal_switches_the_advice_off(monkeypatch):
    refusing = MadviseRecorder(result=-1)
    monkeypatch.setattr(_memory, "HUGEPAGE_MIN_BYTES", 0)
    monkeypatch.setattr(_memory, "_enabled", True)
    monkeypatch.setattr(_memory, "_madvise", refusing)
    source = torch.randn(4, 1024)
    first = _memory.index_select(source, 0, torch.tensor([3, 2]))
    second = _memory.index_select(source, 0, torch.tensor([1]))
    assert len(refusing.calls) == 1 and not _memory.hugepages_enabled()
    assert torch.equal(first, source[[3, 2]]) and torch.equal(second, source[[1]])


def test_environment_variable_switches_it_off(monkeypatch):
    monkeypatch.setenv("LIGHTNING_MIX_HUGEPAGES", "0")
    monkeypatch.setattr(_memory, "_enabled", None)
    assert _memory.hugepages_enabled() is False


def test_small_and_gradient_outputs_use_the_ordinary_ops(monkeypatch):
    recorder = MadviseRecorder()
    monkeypatch.setattr(_memory, "_enabled", True)
    monkeypatch.setattr(_memory, "_madvise", recorder)
    _memory.clone(torch.randn(16, 16))  # far below HUGEPAGE_MIN_BYTES
    assert recorder.calls == []
    monkeypatch.setattr(_memory, "HUGEPAGE_MIN_BYTES", 0)
    leaf = torch.randn(4, 3, requires_grad=True)
    picked = _memory.index_select(leaf, 0, torch.tensor([1, 1, 0]))
    picked.sum().backward()
    assert recorder.calls == []
    assert torch.equal(leaf.grad, torch.tensor([[1.0] * 3, [2.0] * 3, [0.0] * 3, [0.0] * 3]))
