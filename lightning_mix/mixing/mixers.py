"""Batch mixers: Mixup, CutMix, FMix, ResizeMix, MidpointMixup and RandomChoice.

Every mixer is a callable ``mixer(inputs, targets, generator=None) -> MixedBatch`` (the contract in
DESIGN.md). The work is split in three steps that other helpers can reuse:

1. :meth:`BatchMixer.draw` picks partners and lam (``make_pairing`` + ``sample_lam``);
2. the mixer builds its per-sample mask (a box, a Fourier mask, a pasted thumbnail) from tensors;
3. :func:`~lightning_mix.mixing.targets.mix_targets` mixes targets with the area-corrected lam.

Everything is vectorised over the batch and stays on the inputs' device: box corners, FMix
thresholds and ResizeMix sizes are tensors, masks come from ``arange`` comparisons, and nothing
reads a value back to the host, except :class:`RandomChoice`'s single choice per batch and the
batch-mode slicing of CutMix/ResizeMix on CPU tensors (where a read costs no device sync).
SaliencyMix lives in :mod:`lightning_mix.mixing.saliency`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lightning_mix.mixing.batch import MixedBatch
from lightning_mix.mixing.sampling import (
    LABEL_PAIRINGS,
    MODES,
    PAIRINGS,
    SYMMETRIC_PAIRINGS,
    Mode,
    Pairing,
    expand_draws,
    make_pairing,
    sample_lam,
)
from lightning_mix.mixing.targets import mix_targets

__all__ = [
    "BatchMixer",
    "Mixup",
    "MidpointMixup",
    "CutMix",
    "FMix",
    "ResizeMix",
    "RandomChoice",
    "box_corners",
    "box_masks",
    "paste_boxes",
    "fourier_maps",
    "fmix_masks",
    "resize_paste",
]


def _wide(device) -> torch.dtype:
    """float64 for exact box and rank arithmetic, except on MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _check_targets(inputs: torch.Tensor, targets: torch.Tensor) -> None:
    if targets.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"inputs have batch size {inputs.shape[0]} but targets have {targets.shape[0]} rows; "
            "a mixer needs one target row per input."
        )


def _unchanged(inputs: torch.Tensor, targets: torch.Tensor) -> MixedBatch:
    """A batch of one (or zero) cannot be mixed: returned as it is, ``lam = 1``."""
    n = inputs.shape[0]
    return MixedBatch(
        inputs,
        targets,
        torch.arange(n, device=inputs.device),
        torch.ones(n, device=inputs.device),
    )


def _spatial_dims(inputs: torch.Tensor, name: str, allowed: tuple[int, ...] = (1, 2, 3)) -> int:
    n = inputs.dim() - 2
    if n not in allowed:
        shapes = {1: "(B, C, L)", 2: "(B, C, H, W)", 3: "(B, C, D, H, W)"}
        wanted = " or ".join(shapes[k] for k in allowed)
        raise ValueError(
            f"{name} needs inputs of shape {wanted} (channels first), got shape {tuple(inputs.shape)}; "
            "add a channel dimension with inputs.unsqueeze(1) if there is none."
        )
    return n


def _require_float(inputs: torch.Tensor, name: str) -> None:
    if not inputs.is_floating_point():
        raise TypeError(
            f"{name} interpolates between inputs and needs floating-point inputs, got {inputs.dtype}. "
            "Convert the images first (e.g. inputs.float() / 255, or torchvision's "
            "v2.ToDtype(torch.float32, scale=True)), or use a mask-based mixer (CutMix, FMix with "
            "max_soft=0, ResizeMix), which accepts integer images."
        )


def _paste(inputs: torch.Tensor, index: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``where(keep, x, x[index])`` with a boolean mask ``keep`` ``(B, 1, *spatial)`` broadcast over channels.

    The rule of every mask mixer: a pixel taken from one image is that pixel, bit for bit (a 0/1
    ``lerp`` would turn a clean pixel into NaN when the other image holds an inf there).
    """
    return _select_into(keep, inputs, inputs.index_select(0, index))


def _select_into(keep: torch.Tensor, inputs: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """``torch.where(keep, inputs, partner)`` written over ``partner`` (a new tensor of ours) when no
    gradient is recorded: an exact selection, without a fresh output buffer (on CPU a fresh 77 MB
    buffer costs more in page faults than the selection itself).
    """
    if inputs.requires_grad and torch.is_grad_enabled():
        return torch.where(keep, inputs, partner)
    return torch.where(keep, inputs, partner, out=partner)


# paste_boxes gathers whole rows along the first spatial dim when rows have at least this many
# elements (below it, gathering whole samples measured faster on CPU).
_MIN_GATHERED_ROW = 64


def paste_boxes(inputs: torch.Tensor, index: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Sample i gets its partner's pixels inside the box ``[lo[i], hi[i])`` and keeps its own elsewhere.

    ``lo``, ``hi``: (N, n) corners for the n spatial dims, N = B or 1 (one box for the batch).
    For 2D/3D contiguous inputs, one gather of whole rows along the first spatial dim builds the
    output (row ``(i, c, y)`` comes from the partner when ``y`` lies in the box's extent, else from
    ``i`` itself: an index of ``B * C * S_0`` rows, no per-pixel index); then, one remaining spatial dim
    at a time, the sample's own pixels outside the box's extent along that dim are restored: one
    pass over the output fewer than gathering whole samples (measured on 2 CPU cores: 10% faster at
    3x224x224, 15% at 3x128x128). 1D, non-contiguous or short-row inputs (rows under 64 elements,
    where a row gather is slower than a sample gather) start from the gathered partners and
    restore every dim. The per-dim masks are (N, 1, .., S_d, .., 1), so no ``(B, *spatial)`` mask is
    ever allocated (on CPU the page faults of such a mask cost more than the blend). Pixels are
    selected with ``torch.where``, never blended: each output pixel is one input pixel, bit for bit,
    whatever the values (inf and NaN included).
    """
    n_spatial = inputs.dim() - 2
    device = inputs.device
    row_length = math.prod(inputs.shape[3:])
    if n_spatial >= 2 and row_length >= _MIN_GATHERED_ROW and inputs.is_contiguous() and inputs.numel() > 0:
        b, c, s0 = inputs.shape[:3]
        pos = torch.arange(s0, device=device)
        in_box = (pos >= lo[:, 0:1]) & (pos < hi[:, 0:1])  # (N, S_0)
        source = torch.where(in_box, index.reshape(-1, 1), torch.arange(b, device=device).view(-1, 1))  # (B, S_0)
        rows = (source.view(b, 1, s0) * c + torch.arange(c, device=device).view(1, c, 1)) * s0 + pos
        partner = inputs.view(b * c * s0, row_length).index_select(0, rows.view(-1)).view(inputs.shape)
        first = 1
    else:
        partner = inputs.index_select(0, index)
        first = 0
    for d in range(first, n_spatial):
        size = inputs.shape[2 + d]
        pos = torch.arange(size, device=device)
        outside = (pos < lo[:, d : d + 1]) | (pos >= hi[:, d : d + 1])  # (N, S_d)
        shape = [outside.shape[0], 1] + [1] * n_spatial
        shape[2 + d] = size
        partner = _select_into(outside.view(shape), inputs, partner)
    return partner


def _self_pairs_unmixed(index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """A sample paired with itself (the middle of an odd batch under flip, a lone class under
    same_class) is unchanged whatever the mask; say so with lam = 1.
    """
    return torch.where(index == torch.arange(index.shape[0], device=index.device), 1.0, lam)


# Pairings that never pair a sample with itself in a batch of two or more (flip: even batches only).
_NEVER_SELF = ("roll", "label_kernel", "different_class")


class BatchMixer:
    """Shared machinery: validation, pairing, lam draws, the batch-of-one rule.

    Subclasses implement :meth:`mix_inputs`, which mixes inputs for a given ``index`` and raw
    ``lam`` and returns the mixed inputs and the area-corrected lam.
    """

    needs_float = True

    def __init__(self, alpha: float, mode: str, pairing: str, bandwidth: float) -> None:
        if not alpha > 0:
            raise ValueError(
                f"{type(self).__name__}: alpha must be positive (lam ~ Beta(alpha, alpha)), got {alpha}; "
                "to switch mixing off, do not add the mixer."
            )
        if mode not in MODES:
            raise ValueError(f"{type(self).__name__}: mode must be one of {MODES}, got {mode!r}.")
        if pairing not in PAIRINGS:
            raise ValueError(f"{type(self).__name__}: pairing must be one of {PAIRINGS}, got {pairing!r}.")
        if mode == "pair" and pairing not in SYMMETRIC_PAIRINGS:
            raise ValueError(
                f"{type(self).__name__}: mode='pair' gives each pair (i, index[i]) one lam and needs a "
                f"symmetric pairing ({SYMMETRIC_PAIRINGS}), got pairing={pairing!r}; "
                "use mode='elem' with this pairing."
            )
        if not bandwidth > 0:
            raise ValueError(f"{type(self).__name__}: bandwidth must be positive, got {bandwidth}.")
        self.alpha = float(alpha)
        self.mode = mode
        self.pairing = pairing
        self.bandwidth = float(bandwidth)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, mode={self.mode!r}, pairing={self.pairing!r})"

    def pair(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The partner index (B,) under this mixer's pairing (labels for the label-based rules)."""
        return make_pairing(
            batch_size,
            self.pairing,
            generator=generator,
            device=device,
            labels=labels if self.pairing in LABEL_PAIRINGS else None,
            bandwidth=self.bandwidth,
            symmetric=self.mode == "pair",
        )

    def draw(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Partners and lam for a batch, without touching any input: ``(index (B,), lam (B,))``.

        This is what a layer-level method (Manifold Mixup, mixing hidden states in a forward hook)
        needs: draw once, mix the hidden states with ``torch.lerp(h[index], h, lam)`` and the targets
        with ``mix_targets(targets, index, lam)``. ``lam`` here is the Beta draw before any area
        correction (mask-based mixers correct it in ``__call__``); a sample paired with itself gets
        lam = 1. ``labels`` are only read by the label-based pairings. A batch of one gets
        ``index = [0]``, ``lam = [1]``.
        """
        if device is None:
            device = generator.device if generator is not None else (labels.device if labels is not None else "cpu")
        if batch_size <= 1:
            return torch.arange(batch_size, device=device), torch.ones(batch_size, device=device)
        index, lam = self._draw(batch_size, generator, device, labels)
        return index, self._unmix_self_pairs(index, lam)

    def _unmix_self_pairs(self, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """:func:`_self_pairs_unmixed`, skipped (three small ops saved) when this mixer's own
        pairing rule cannot pair a sample with itself: flip with an even batch, roll, label_kernel,
        different_class.
        """
        if type(self).pair is BatchMixer.pair and type(self)._draw is BatchMixer._draw:
            b = index.shape[0]
            if self.pairing in _NEVER_SELF or (self.pairing == "flip" and b % 2 == 0):
                return lam
        return _self_pairs_unmixed(index, lam)

    def _draw(self, batch_size, generator, device, labels):
        index = self.pair(batch_size, generator, device, labels)
        return index, self.sample_lam(batch_size, index, generator, device)

    def sample_lam(self, batch_size, index, generator, device) -> torch.Tensor:
        return sample_lam(self.alpha, batch_size, self.mode, index, generator, device)

    def mix_inputs(
        self, inputs: torch.Tensor, index: torch.Tensor, lam: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def check_inputs(self, inputs: torch.Tensor) -> None:
        if self.needs_float:
            _require_float(inputs, type(self).__name__)

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> MixedBatch:
        """Mix a batch: ``inputs`` (B, ...) and dense float ``targets`` (B, ...) -> :class:`MixedBatch`."""
        self.check_inputs(inputs)
        _check_targets(inputs, targets)
        if generator is not None and generator.device.type != inputs.device.type:
            raise ValueError(
                f"the generator lives on {generator.device} but the inputs on {inputs.device}; "
                "create it on the inputs' device: torch.Generator(device=inputs.device).manual_seed(seed)."
            )
        if inputs.shape[0] <= 1:
            return _unchanged(inputs, targets)
        index, lam = self._draw(inputs.shape[0], generator, inputs.device, targets)
        mixed, lam = self.mix_inputs(inputs, index, lam, generator)
        lam = self._unmix_self_pairs(index, lam)
        return MixedBatch(mixed, mix_targets(targets, index, lam), index, lam)


class Mixup(BatchMixer):
    """Mixup (Zhang et al. 2018): ``x = lam * x_i + (1 - lam) * x_j``, ``lam ~ Beta(alpha, alpha)``.

    Works on inputs of any shape (images, sequences, features). Inputs must be floating point.

    Args:
        alpha: Beta concentration; 1.0 for CIFAR-sized data, 0.1-0.4 for ImageNet (authors' values).
        mode: ``"batch"`` (one lam per batch, timm's default), ``"pair"`` (one lam per pair; the
            partner gets the same lam for its own image, so the two outputs hold complementary
            weights) or ``"elem"`` (one lam per sample).
        pairing: ``"flip"`` (default; ``i`` with ``B-1-i`` as in timm, symmetric so it works in
            every mode), ``"roll"`` (torchvision), ``"random"``, or the label-based
            ``"label_kernel"`` (C-Mixup), ``"different_class"``, ``"same_class"``
            (see :func:`~lightning_mix.mixing.make_pairing`).
        bandwidth: kernel width of ``pairing="label_kernel"`` (C-Mixup); unused otherwise.

    Example::

        mixer = Mixup(alpha=0.2)
        out = mixer(images, dense_targets(labels, 10), generator=torch.Generator().manual_seed(0))
        loss = soft_cross_entropy(model(out.inputs), out.targets)
    """

    def __init__(
        self, alpha: float = 1.0, mode: Mode = "batch", pairing: Pairing = "flip", bandwidth: float = 1.0
    ) -> None:
        super().__init__(alpha, mode, pairing, bandwidth)

    def mix_inputs(self, inputs, index, lam, generator):
        weight = lam.to(inputs.dtype)
        partner = inputs.index_select(0, index)
        mixed = partner.lerp_(inputs, weight.view(-1, *([1] * (inputs.dim() - 1))))
        # report the lam the inputs actually got (rounded to half precision for fp16/bf16 inputs)
        return mixed, weight.to(lam.dtype) if weight.dtype != lam.dtype else lam


class MidpointMixup(Mixup):
    """Midpoint Mixup (Chidambaram et al. 2023): Mixup with lam fixed at 0.5.

    Args:
        pairing: ``"roll"`` by default (``i`` with ``i-1``): with lam = 0.5, a symmetric pairing
            such as ``flip`` would make ``i`` and its partner identical samples, half the batch
            wasted; rolling a shuffled batch gives B distinct midpoints.
    """

    def __init__(self, pairing: Pairing = "roll", bandwidth: float = 1.0) -> None:
        super().__init__(alpha=1.0, mode="batch", pairing=pairing, bandwidth=bandwidth)

    def __repr__(self) -> str:
        return f"MidpointMixup(pairing={self.pairing!r})"

    def sample_lam(self, batch_size, index, generator, device):
        return torch.full((batch_size,), 0.5, device=device)


def box_corners(lam: torch.Tensor, centres: torch.Tensor, spatial: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped CutMix box corners ``lo``, ``hi`` (N, n) (half-open) from lam (N,) and centres (N, n);
    see :func:`box_masks` for the rule.
    """
    sizes = torch.tensor(list(spatial), device=lam.device)
    ratio = (1.0 - lam.to(_wide(lam.device))).clamp_min(0.0)
    ratio = ratio.sqrt() if len(spatial) == 2 else ratio.pow(1.0 / len(spatial))
    side = torch.floor(ratio.view(-1, 1) * sizes).long()
    lo = torch.minimum((centres - torch.div(side, 2, rounding_mode="floor")).clamp_min(0), sizes)
    hi = torch.minimum((centres + torch.div(side + 1, 2, rounding_mode="floor")).clamp_min(0), sizes)
    return lo, hi


def box_masks(
    lam: torch.Tensor, centres: torch.Tensor, spatial: Sequence[int], dtype: torch.dtype = torch.bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix boxes as "keep own pixel" masks, from lam and box centres, all as tensors.

    For n spatial dims of sizes ``S_d``, the box side along ``d`` is ``floor(S_d * (1 - lam)^(1/n))``
    (``sqrt`` in 2D, as in the paper and timm), centred at ``centres[:, d]`` and clipped to the
    image: ``[clip(c - side // 2), clip(c + (side + 1) // 2))``, the corner convention of timm's
    ``rand_bbox`` (an unclipped box has exactly ``side`` pixels).

    Args:
        lam: (N,) draws.
        centres: (N, n) integer box centres.
        spatial: the n spatial sizes.
        dtype: of the returned mask (bool, or a float dtype for 0/1 weights).

    Returns:
        ``keep`` ``(N, 1, *spatial)``, 0/False inside the box (the partner's pixels), and
        ``lam_corrected`` (N,) = 1 - clipped box volume / image volume.
    """
    b, n = lam.shape[0], len(spatial)
    device = lam.device
    lo, hi = box_corners(lam, centres, spatial)
    inside = None
    for d, size in enumerate(spatial):
        pos = torch.arange(size, device=device)
        in_d = (pos >= lo[:, d : d + 1]) & (pos < hi[:, d : d + 1])  # (N, S_d)
        in_d = in_d.view(b, *([1] * d), size, *([1] * (n - d - 1)))
        inside = in_d if inside is None else inside & in_d
    keep = ~inside.unsqueeze(1)
    lam_corrected = (1.0 - (hi - lo).prod(dim=1).to(_wide(device)) / math.prod(spatial)).float()
    return keep.to(dtype), lam_corrected


def _uniform_ints(high: torch.Tensor | int, shape, generator, device) -> torch.Tensor:
    """Integers uniform on ``[0, high)`` (``high`` may be a tensor), drawn without host sync."""
    u = torch.rand(shape, generator=generator, device=device, dtype=_wide(device))
    return torch.floor(u * high).long()


class CutMix(BatchMixer):
    """CutMix (Yun et al. 2019): paste a box of the partner; lam = 1 - box area / image area.

    Boxes work on 1D (B, C, L), 2D (B, C, H, W) and 3D (B, C, D, H, W) inputs; the box side along
    each of the n spatial dims is ``size * (1 - lam)^(1/n)`` with a uniform centre, clipped to the
    image. Accepts any dtype (uint8 images included): pixels are copied, never interpolated.

    Args:
        alpha: Beta concentration (1.0 in the paper).
        mode: ``"batch"`` (one lam and one box for the batch), ``"pair"`` (one box per pair; the
            partner receives the complementary pixels), ``"elem"`` (one per sample).
        correct_lam: recompute lam from the clipped box (True, the paper's rule) or keep the Beta
            draw (False, timm's option) -- then lam is not the pasted area when the box is clipped.
        pairing: ``"flip"`` by default (timm); see :class:`Mixup`.
        bandwidth: kernel width for ``pairing="label_kernel"``.
    """

    needs_float = False

    def __init__(
        self,
        alpha: float = 1.0,
        mode: Mode = "batch",
        correct_lam: bool = True,
        pairing: Pairing = "flip",
        bandwidth: float = 1.0,
    ) -> None:
        super().__init__(alpha, mode, pairing, bandwidth)
        self.correct_lam = bool(correct_lam)

    def check_inputs(self, inputs):
        _spatial_dims(inputs, "CutMix")

    def mix_inputs(self, inputs, index, lam, generator):
        b, spatial = inputs.shape[0], inputs.shape[2:]
        n = 1 if self.mode == "batch" else b
        if n == 1 and inputs.device.type == "cpu":
            return self._copy_box_cpu(inputs, index, lam, generator)
        sizes = torch.tensor(list(spatial), device=inputs.device, dtype=_wide(inputs.device))
        centres = _uniform_ints(sizes, (n, len(spatial)), generator, inputs.device)
        if self.mode == "pair":
            centres = expand_draws(centres, b, self.mode, index)
        # device path (and pair/elem modes on CPU): corners as tensors, N = 1 box broadcast in batch mode
        lo, hi = box_corners(lam[:n], centres, spatial)
        if self.correct_lam:
            volume = (hi - lo).prod(dim=1).to(_wide(inputs.device))
            lam = (1.0 - volume / math.prod(spatial)).float().expand(b).contiguous()
        return paste_boxes(inputs, index, lo, hi), lam

    def _copy_box_cpu(self, inputs, index, lam, generator):
        """Batch mode on CPU, where reading lam and the centre costs no device sync: the rule of
        :func:`box_corners` in Python numbers, the centre drawn as :func:`_uniform_ints` draws it
        (same generator stream), then a copy of the batch and one gather of the box from the
        partners straight into it -- a few ops in all, the same pixels and lam as the tensor path.
        """
        b, spatial = inputs.shape[0], inputs.shape[2:]
        u = torch.rand((1, len(spatial)), generator=generator, dtype=_wide(inputs.device))[0].tolist()
        rest = max(1.0 - float(lam[0]), 0.0)
        ratio = math.sqrt(rest) if len(spatial) == 2 else rest ** (1.0 / len(spatial))
        box, volume = [], 1
        for size, r in zip(spatial, u):
            c, side = math.floor(r * size), math.floor(ratio * size)
            lo, hi = min(max(c - side // 2, 0), size), min(max(c + (side + 1) // 2, 0), size)
            box.append(slice(lo, hi))
            volume *= hi - lo
        mixed = inputs.clone()
        if volume > 0:
            region = (slice(None), slice(None), *box)
            if inputs.requires_grad and torch.is_grad_enabled():  # out= does not record autograd
                mixed[region] = inputs[region].index_select(0, index)
            else:  # gather the partners' boxes straight into the copy, no temporary
                torch.index_select(inputs[region], 0, index, out=mixed[region])
        if self.correct_lam:
            lam = torch.full((b,), 1.0 - volume / math.prod(spatial))
        return mixed, lam


def fourier_maps(
    n: int, spatial: Sequence[int], decay_power: float, generator: torch.Generator | None, device
) -> torch.Tensor:
    """``n`` low-frequency random maps ``(n, *spatial)``, float32: a complex Gaussian spectrum scaled
    by ``1 / f^decay_power`` (f clamped below at ``1 / max(spatial)``), inverse real FFT.
    """
    dims = len(spatial)
    freqs_sq = torch.zeros((), device=device)
    for d, size in enumerate(spatial):
        f = torch.fft.rfftfreq(size, device=device) if d == dims - 1 else torch.fft.fftfreq(size, device=device)
        shape = [1] * dims
        shape[d] = f.shape[0]
        freqs_sq = freqs_sq + f.view(shape) ** 2
    freq = freqs_sq.sqrt().clamp_min(1.0 / max(spatial))
    scale = freq.pow(-decay_power)
    spectrum = torch.randn((n, *scale.shape, 2), generator=generator, device=device)
    spectrum = torch.view_as_complex(spectrum) * scale
    return torch.fft.irfftn(spectrum, s=tuple(spatial), dim=tuple(range(1, dims + 1)))


def fmix_masks(maps: torch.Tensor, lam: torch.Tensor, max_soft: float = 0.0) -> torch.Tensor:
    """Threshold maps ``(B, *spatial)`` into masks whose mean is lam: the ``round(lam * N)`` largest
    entries of each map get 1, the rest 0; with ``max_soft > 0`` a linear ramp from 1 to 0 over
    ``2 * N * min(max_soft, lam, 1 - lam)`` entries around the threshold (FMix's soft edges).

    Returns a float32 mask ``(B, *spatial)``; rank-based, so the binary mean is exactly
    ``round(lam * N) / N`` whatever the ties.
    """
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    n = flat.shape[1]
    order = flat.argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(n, device=maps.device).expand(b, n))
    wide = _wide(maps.device)
    num = torch.round(lam.to(wide) * n).view(-1, 1)
    if max_soft <= 0:
        mask = (ranks < num).float()
    else:
        lam_d = lam.to(wide).view(-1, 1)
        eff = torch.minimum(torch.full_like(lam_d, max_soft), torch.minimum(lam_d, 1 - lam_d))
        soft = torch.floor(n * eff)
        low, high = num - soft, num + soft
        width = (high - low - 1).clamp_min(1)
        ramp = ((high - 1 - ranks) / width).clamp(0, 1)
        mask = torch.where(high - low > 1, ramp, (ranks < num).to(wide)).float()
    return mask.view_as(maps)


class FMix(BatchMixer):
    """FMix (Harris et al. 2020): masks from thresholded low-frequency Fourier noise.

    The mask is the ``round(lam * N)`` largest pixels of a random map whose spectrum decays as
    ``1 / f^decay_power``, so a binary mask's mean equals lam to within half a pixel; lam is set to
    the mask's actual mean. 1D/2D/3D inputs ``(B, C, *spatial)``; the mask is shared over channels.

    Args:
        alpha: Beta concentration (1.0 in the paper).
        decay_power: spectrum decay ``d``; larger gives smoother, blobbier masks (3.0 in the paper).
        max_soft: soft-edge width as a fraction of the pixels (0.0 = binary mask, the default).
            Binary masks accept any dtype (uint8 included) and copy every pixel bit for bit, as all
            mask mixers do. Soft masks copy the pixels of weight 0 or 1 and *blend* the ramp in
            between (``w * x + (1 - w) * x[index]``, so an inf or NaN there spreads to the blend);
            they need floats.
        mode, pairing, bandwidth: see :class:`Mixup` (``mode="batch"``: one mask for the batch).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        decay_power: float = 3.0,
        max_soft: float = 0.0,
        mode: Mode = "batch",
        pairing: Pairing = "flip",
        bandwidth: float = 1.0,
    ) -> None:
        super().__init__(alpha, mode, pairing, bandwidth)
        if not 0.0 <= max_soft <= 0.5:
            raise ValueError(f"FMix: max_soft must lie in [0, 0.5], got {max_soft}.")
        if not decay_power > 0:
            raise ValueError(f"FMix: decay_power must be positive, got {decay_power}.")
        self.decay_power = float(decay_power)
        self.max_soft = float(max_soft)

    def check_inputs(self, inputs):
        _spatial_dims(inputs, "FMix")
        if self.max_soft > 0:
            _require_float(inputs, "FMix with max_soft > 0")

    def mix_inputs(self, inputs, index, lam, generator):
        b, spatial = inputs.shape[0], inputs.shape[2:]
        n = 1 if self.mode == "batch" else b
        maps = fourier_maps(n, spatial, self.decay_power, generator, inputs.device)
        masks = fmix_masks(maps, lam[:n], self.max_soft).unsqueeze(1)  # (n, 1, *spatial)
        lam = masks.mean(dim=tuple(range(1, masks.dim())))
        if self.mode == "pair":
            masks = expand_draws(masks, b, self.mode, index)
            lam = expand_draws(lam, b, self.mode, index)
        elif self.mode == "batch":
            lam = lam.expand(b).contiguous()  # the (1, 1, *spatial) mask broadcasts over the batch
        if self.max_soft > 0:
            return _soft_paste(inputs, index, masks), lam
        return _paste(inputs, index, masks > 0.5), lam


def _soft_paste(inputs: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Soft-edged FMix: where the weight is 1 or 0 a pixel is copied (bit for bit, as every mask
    mixer); on the ramp in between it is the blend ``w * x + (1 - w) * x[index]``.
    """
    partner = inputs.index_select(0, index)
    weights = weights.to(inputs.dtype)
    blend = torch.lerp(partner, inputs, weights)
    return torch.where(weights == 1, inputs, torch.where(weights == 0, partner, blend))


def _to_dtype_of(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Resampled float values back to ``like``'s dtype (integers rounded and clamped to their range)."""
    if like.is_floating_point():
        return values.to(like.dtype)
    info = torch.iinfo(like.dtype)
    return values.round().clamp(info.min, info.max).to(like.dtype)


def resize_paste(
    inputs: torch.Tensor, index: torch.Tensor, tau: torch.Tensor, generator: torch.Generator | None, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste each partner, shrunk bilinearly to ``round(tau * H) x round(tau * W)``, at a random place.

    The thumbnail is what ``F.interpolate(partner, size=(h, w), mode="bilinear",
    align_corners=False)`` gives (no antialiasing, as mmpretrain's ResizeMix), computed for the
    whole batch at once by one ``grid_sample`` whose per-sample grid maps output pixel ``(y, x)``
    of the paste box to the partner's coordinates ``((y - top + 0.5) * H / h - 0.5, ...)``.
    Integer images are resampled in float32 and rounded back. Outside the box every pixel is the
    sample's own, bit for bit. Returns the mixed images and lam = 1 - h * w / (H * W).
    """
    b, _, height, width = inputs.shape
    device = inputs.device
    # tau = 0 (a sample paired with itself, lam = 1) pastes nothing; otherwise at least one pixel
    wide = _wide(device)
    h = torch.where(tau > 0, torch.round(tau.to(wide) * height).clamp(1, height), 0).long()
    w = torch.where(tau > 0, torch.round(tau.to(wide) * width).clamp(1, width), 0).long()
    n = 1 if mode == "batch" else b
    corners = torch.rand((n, 2), generator=generator, device=device, dtype=wide)
    corners = expand_draws(corners, b, mode, index)
    top = torch.floor(corners[:, 0] * (height - h + 1)).long()
    left = torch.floor(corners[:, 1] * (width - w + 1)).long()
    ys = torch.arange(height, device=device).view(1, -1) - top.view(-1, 1)  # (B, H)
    xs = torch.arange(width, device=device).view(1, -1) - left.view(-1, 1)  # (B, W)
    in_y = (ys >= 0) & (ys < h.view(-1, 1))
    in_x = (xs >= 0) & (xs < w.view(-1, 1))
    # normalised source coordinates (align_corners=False): 2 * (y - top + 0.5) / h - 1
    work = inputs.dtype if inputs.is_floating_point() else torch.float32
    grid_y = (2 * (ys + 0.5) / h.clamp_min(1).view(-1, 1) - 1).to(work)  # (B, H)
    grid_x = (2 * (xs + 0.5) / w.clamp_min(1).view(-1, 1) - 1).to(work)  # (B, W)
    grid = torch.stack(torch.broadcast_tensors(grid_x.unsqueeze(1), grid_y.unsqueeze(2)), dim=-1)  # (B, H, W, 2)
    partners = inputs.index_select(0, index).to(work)
    thumbs = F.grid_sample(partners, grid, mode="bilinear", padding_mode="border", align_corners=False)
    keep = ~(in_y.unsqueeze(2) & in_x.unsqueeze(1)).unsqueeze(1)
    mixed = torch.where(keep, inputs, _to_dtype_of(thumbs, inputs))
    lam = (1.0 - (h * w).to(wide) / (height * width)).float()
    return mixed, lam


class ResizeMix(BatchMixer):
    """ResizeMix (Qin et al. 2020): paste the whole partner, shrunk to ``tau * H x tau * W``.

    ``tau ~ U(scale)``; the thumbnail (a bilinear resize without antialiasing, as mmpretrain's
    ``F.interpolate(..., mode="bilinear", align_corners=False)``; integer images are resampled in
    float32 and rounded back) goes at a uniform random place and lam = 1 - pasted area / image
    area, from the integer thumbnail size. 2D images (B, C, H, W), any dtype (uint8 included).
    Outside the thumbnail each pixel is the sample's own, bit for bit.

    Args:
        scale: range of the thumbnail side ratio tau ((0.1, 0.8) in the paper).
        mode: ``"batch"`` (one size and place for the batch), ``"pair"``, ``"elem"``.
        pairing, bandwidth: see :class:`Mixup`.
    """

    needs_float = False

    def __init__(
        self,
        scale: tuple[float, float] = (0.1, 0.8),
        mode: Mode = "batch",
        pairing: Pairing = "flip",
        bandwidth: float = 1.0,
    ) -> None:
        super().__init__(1.0, mode, pairing, bandwidth)
        low, high = float(scale[0]), float(scale[1])
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"ResizeMix: scale must satisfy 0 < low <= high <= 1, got {scale}.")
        self.scale = (low, high)

    def __repr__(self) -> str:
        return f"ResizeMix(scale={self.scale}, mode={self.mode!r}, pairing={self.pairing!r})"

    def check_inputs(self, inputs):
        _spatial_dims(inputs, "ResizeMix", allowed=(2,))

    def _paste_box_cpu(self, inputs, index, tau, generator):
        """Batch mode on CPU, where reading the paste size costs no device sync: resize the
        partners to the one box size with ``F.interpolate`` and copy the box only. Same draws and
        same box as :func:`resize_paste`; the thumbnails agree with its ``grid_sample`` to float
        rounding.
        """
        b, _, height, width = inputs.shape
        h = min(max(round(float(tau) * height), 1), height)
        w = min(max(round(float(tau) * width), 1), width)
        corner_y, corner_x = torch.rand((1, 2), generator=generator, dtype=torch.float64)[0].tolist()
        top, left = math.floor(corner_y * (height - h + 1)), math.floor(corner_x * (width - w + 1))
        work = inputs.dtype if inputs.is_floating_point() else torch.float32
        small = F.interpolate(inputs.to(work), size=(h, w), mode="bilinear", align_corners=False)
        thumbs = _to_dtype_of(small, inputs).index_select(0, index)  # resize first: gather the small thumbnails
        mixed = inputs.clone()
        box = mixed[:, :, top : top + h, left : left + w]
        paired = (index != torch.arange(b)).view(-1, 1, 1, 1)
        box.copy_(torch.where(paired, thumbs, box))
        lam = torch.full((b,), 1.0 - (h * w) / (height * width))
        return mixed, lam

    def sample_lam(self, batch_size, index, generator, device):
        """Here the draw is tau (the thumbnail side ratio); lam = 1 - tau^2 before rounding."""
        n = 1 if self.mode == "batch" else batch_size
        u = torch.rand(n, generator=generator, device=device)
        tau = self.scale[0] + (self.scale[1] - self.scale[0]) * u
        return 1.0 - expand_draws(tau, batch_size, self.mode, index).contiguous() ** 2

    def mix_inputs(self, inputs, index, lam, generator):
        tau = (1.0 - lam).clamp_min(0).sqrt()
        if self.mode == "batch" and inputs.device.type == "cpu":
            return self._paste_box_cpu(inputs, index, tau[0], generator)
        # pasting a sample's own thumbnail onto itself would change it: no paste for self-pairs
        tau = torch.where(index == torch.arange(index.shape[0], device=index.device), 0.0, tau)
        return resize_paste(inputs, index, tau, generator, self.mode)


class RandomChoice:
    """Apply one mixer per batch, picked at random (the DeiT/timm "mixup or cutmix" recipe).

    ``RandomChoice([Mixup(0.8), CutMix(1.0)])`` is timm's ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0,
    switch_prob=0.5)``. The choice is drawn from ``generator``, so it is reproducible; it is the one
    value read back to the host (one scalar per batch; free on CPU).

    Args:
        mixers: the candidate mixers.
        weights: relative probabilities (default: uniform).
    """

    def __init__(self, mixers: Sequence[BatchMixer], weights: Sequence[float] | None = None) -> None:
        self.mixers = list(mixers)
        if not self.mixers:
            raise ValueError("RandomChoice needs at least one mixer.")
        if weights is None:
            weights = [1.0] * len(self.mixers)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.mixers) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"RandomChoice: weights must be {len(self.mixers)} non-negative numbers with a positive sum, "
                f"got {weights}."
            )
        total = sum(weights)
        self.weights = [w / total for w in weights]

    def __repr__(self) -> str:
        return f"RandomChoice({self.mixers!r}, weights={self.weights})"

    def choose(self, generator: torch.Generator | None = None, device=None) -> int:
        """Index of the mixer to use for the next batch."""
        if device is None:
            device = generator.device if generator is not None else "cpu"
        probs = torch.tensor(self.weights, device=device)
        return int(torch.multinomial(probs, 1, generator=generator))

    def __call__(
        self, inputs: torch.Tensor, targets: torch.Tensor, generator: torch.Generator | None = None
    ) -> MixedBatch:
        return self.mixers[self.choose(generator, inputs.device)](inputs, targets, generator)
