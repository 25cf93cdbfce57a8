"""Random draws shared by every mixer: Beta-distributed lam and the partner index.

Everything here runs on the requested device and takes an optional ``torch.Generator`` so a
caller can seed (and checkpoint) the whole mixing stream. ``torch.distributions.Beta`` and
``torch._standard_gamma`` accept no generator, so Beta draws are built from Gamma draws made with
the Marsaglia-Tsang method out of ``torch.randn``/``torch.rand``, which do.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = [
    "MODES",
    "PAIRINGS",
    "SIMPLE_PAIRINGS",
    "LABEL_PAIRINGS",
    "SYMMETRIC_PAIRINGS",
    "Mode",
    "Pairing",
    "sample_beta",
    "sample_lam",
    "pair_ids",
    "expand_draws",
    "label_kernel_probabilities",
    "make_pairing",
]

Mode = Literal["batch", "pair", "elem"]
Pairing = Literal["flip", "roll", "random", "label_kernel", "different_class", "same_class"]
MODES = ("batch", "pair", "elem")
SIMPLE_PAIRINGS = ("flip", "roll", "random")
LABEL_PAIRINGS = ("label_kernel", "different_class", "same_class")
PAIRINGS = SIMPLE_PAIRINGS + LABEL_PAIRINGS
# Pairings whose index is an involution (index[index[i]] == i), which ``mode="pair"`` needs.
SYMMETRIC_PAIRINGS = ("flip", "random")

# Marsaglia-Tsang accepts a candidate with probability >= 0.95 for shape >= 1; with this many
# candidates per draw the chance that all are rejected is below 1e-20.
_GAMMA_CANDIDATES = 16


def _log_standard_gamma(
    shape: float, n: int, generator: torch.Generator | None, device, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``log`` of ``n`` Gamma(shape, 1) draws (in ``dtype``), vectorised Marsaglia-Tsang without a loop.

    Working in log space keeps small shapes (alpha = 0.1 gives Gamma values like 1e-30) exact when
    two draws are combined into a Beta draw.
    """
    boosted = shape < 1.0
    a = shape + 1.0 if boosted else shape
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn((n, _GAMMA_CANDIDATES), generator=generator, device=device, dtype=dtype)
    u = torch.rand((n, _GAMMA_CANDIDATES), generator=generator, device=device, dtype=dtype)
    v = (1.0 + c * z) ** 3
    log_v = torch.log(v.clamp_min(1e-30))
    accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
    first = accept.to(torch.uint8).argmax(dim=1, keepdim=True)  # first accepted candidate
    log_g = math.log(d) + log_v.gather(1, first).squeeze(1)
    if boosted:
        # Gamma(a) = Gamma(a + 1) * U^(1/a)
        u_boost = torch.rand((n,), generator=generator, device=device, dtype=dtype)
        log_g = log_g + torch.log(u_boost) / shape
    return log_g


def sample_beta(
    alpha: float,
    beta: float,
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` draws of Beta(alpha, beta) as a ``dtype`` tensor on ``device``, reproducible under ``generator``.

    Computed as ``X / (X + Y) = sigmoid(log X - log Y)`` with ``X ~ Gamma(alpha)``,
    ``Y ~ Gamma(beta)``, in float64 (float32 on MPS, which has no float64) and then rounded to
    ``dtype``; Beta(1, 1) is drawn directly as U(0, 1). ``dtype=torch.float64`` gives draws that
    follow Beta(alpha, beta) to float64 precision, small alpha included (at alpha = 0.1 about 9%
    of the mass lies within 6e-8 of 1, so float32 draws there round to exactly 1.0, the nearest
    float32; no mixed float32 pixel can tell 1.0 from the exact value).
    """
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"Beta parameters must be positive, got alpha={alpha}, beta={beta}.")
    if device is None and generator is not None:
        device = generator.device
    wide = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
    if alpha == 1.0 and beta == 1.0:  # Beta(1, 1) is U(0, 1): one kernel instead of a dozen
        return torch.rand((n,), generator=generator, device=device, dtype=dtype)
    if alpha == beta:  # one call draws both Gamma variates
        log_x, log_y = _log_standard_gamma(float(alpha), 2 * n, generator, device, wide).view(2, n)
    else:
        log_x = _log_standard_gamma(float(alpha), n, generator, device, wide)
        log_y = _log_standard_gamma(float(beta), n, generator, device, wide)
    return torch.sigmoid(log_x - log_y).to(dtype)


def pair_ids(index: torch.Tensor) -> torch.Tensor:
    """For a symmetric pairing, an id shared by ``i`` and ``index[i]`` (the smaller of the two)."""
    return torch.minimum(torch.arange(index.shape[0], device=index.device), index)


def expand_draws(draws: torch.Tensor, batch_size: int, mode: str, index: torch.Tensor) -> torch.Tensor:
    """Spread per-sample draws (first dimension ``batch_size``) according to ``mode``.

    ``batch``: row 0 for everyone; ``pair``: row ``min(i, index[i])`` so a pair shares its draw;
    ``elem``: unchanged. Used for lam and for any other per-sample randomness (box centres, masks).
    """
    if mode == "elem":
        return draws
    if mode == "batch":
        return draws[:1].expand(batch_size, *draws.shape[1:])
    if mode == "pair":
        return draws.index_select(0, pair_ids(index))
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")


def sample_lam(
    alpha: float,
    batch_size: int,
    mode: str,
    index: torch.Tensor,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-sample lam (B,) drawn from Beta(alpha, alpha) on ``device``.

    Args:
        alpha: Beta concentration, > 0.
        batch_size: B.
        mode: ``"batch"`` (one draw for the batch), ``"pair"`` (one per pair ``(i, index[i])``;
            ``index`` must then be symmetric, ``index[index[i]] == i``, as ``flip`` and
            ``make_pairing(..., symmetric=True)`` give) or ``"elem"`` (one per sample).
        index: LongTensor (B,), the partner of each sample (only read in ``pair`` mode).
        generator: optional ``torch.Generator`` on ``device``.
        device: where the draws live (defaults to ``index.device``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if device is None:
        device = index.device
    n = 1 if mode == "batch" else batch_size
    draws = sample_beta(alpha, alpha, n, generator, device)
    return expand_draws(draws, batch_size, mode, index).contiguous()


def _class_ids(labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    if labels.shape[0] != batch_size:
        raise ValueError(f"labels have {labels.shape[0]} rows for a batch of {batch_size}.")
    if labels.is_floating_point() and labels.dim() == 2:
        return labels.argmax(dim=1)  # dense (possibly smoothed) targets: the main class
    if not labels.is_floating_point() and labels.dim() == 1:
        return labels
    raise ValueError(
        "class-based pairings need class indices (B,) or dense class targets (B, C), "
        f"got dtype {labels.dtype} and shape {tuple(labels.shape)}."
    )


def _draw_rows(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One column index per row of a non-negative (B, B) weight matrix (every row has a positive entry)."""
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def label_kernel_probabilities(labels: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """C-Mixup partner probabilities (B, B): ``P(j | i)`` proportional to ``exp(-|y_i - y_j|^2 / (2 s^2))``, ``j != i``.

    ``labels`` are regression values (B,) or (B, d), or dense class targets (B, C). The diagonal is
    excluded (mixing a sample with itself changes nothing); a batch of one gets ``P(0 | 0) = 1``.
    Computed in log space with the row maximum subtracted, so a tiny bandwidth tends to the
    nearest label and an infinite one to the uniform distribution over the others.
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth}.")
    y = labels.reshape(labels.shape[0], -1).float()
    b = y.shape[0]
    if b == 1:
        return torch.ones((1, 1), device=y.device)
    sq_dist = torch.cdist(y, y).square()
    logits = sq_dist * (-0.5 / (bandwidth * bandwidth)) if math.isfinite(bandwidth) else torch.zeros_like(sq_dist)
    logits.fill_diagonal_(float("-inf"))
    logits = logits - logits.amax(dim=1, keepdim=True)
    probs = logits.exp()
    return probs / probs.sum(dim=1, keepdim=True)


def make_pairing(
    batch_size: int,
    pairing: str,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    labels: torch.Tensor | None = None,
    bandwidth: float = 1.0,
    symmetric: bool = False,
) -> torch.Tensor:
    """The partner index (LongTensor (B,)) of each sample under a pairing rule.

    Rules:

    - ``flip``: ``i`` with ``B - 1 - i`` (timm); symmetric; the middle sample of an odd batch is
      its own partner (it stays unchanged).
    - ``roll``: ``i`` with ``i - 1`` (mod B), as torchvision's ``MixUp``/``CutMix``; never self.
    - ``random``: a random permutation; with ``symmetric=True`` a random perfect matching
      instead (an odd batch leaves one sample paired with itself).
    - ``label_kernel``: C-Mixup; ``j`` drawn with ``P(j | i)`` proportional to
      ``exp(-|y_i - y_j|^2 / (2 bandwidth^2))`` over ``j != i`` (see
      :func:`label_kernel_probabilities`). ``labels``: regression values (B,) or (B, d).
    - ``different_class``: ``j`` uniform among samples of another class; when every sample of
      the batch shares ``i``'s class, uniform among the others.
    - ``same_class``: ``j`` uniform among the other samples of ``i``'s class; when ``i`` is the
      only one of its class in the batch it is its own partner (stays unmixed), so the rule
      never mixes two classes.

    The class rules read class indices (B,) or dense targets (B, C) (class = argmax).

    Args:
        batch_size: B.
        pairing: one of the rules above.
        generator: optional ``torch.Generator`` on ``device``.
        device: where the index lives (defaults to the generator's, then the labels', device).
        labels: needed by the label-based rules.
        bandwidth: the kernel width ``s`` of ``label_kernel``.
        symmetric: require ``index[index[i]] == i`` (what ``mode="pair"`` needs); only ``flip``
            and ``random`` can give it.
    """
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}.")
    if symmetric and pairing not in SYMMETRIC_PAIRINGS:
        raise ValueError(
            f"pairing {pairing!r} is not symmetric (index[index[i]] != i), which mode='pair' needs; "
            f"use pairing='flip' or 'random' with mode='pair', or mode='elem' with {pairing!r}."
        )
    if device is None:
        device = generator.device if generator is not None else (labels.device if labels is not None else "cpu")
    if pairing == "flip":  # one kernel: the reversed arange
        return torch.arange(batch_size - 1, -1, -1, device=device)
    arange = torch.arange(batch_size, device=device)
    if pairing == "roll":
        return arange.roll(1)
    if pairing == "random":
        perm = torch.randperm(batch_size, generator=generator, device=device)
        if not symmetric:
            return perm
        # Pair consecutive entries of a random permutation: a uniformly random perfect matching.
        n_pairs = batch_size // 2
        first, second = perm[0 : 2 * n_pairs : 2], perm[1 : 2 * n_pairs : 2]
        index = arange.clone()
        index[first] = second
        index[second] = first
        return index
    if labels is None:
        raise ValueError(f"pairing {pairing!r} chooses partners by label; pass labels (the targets).")
    labels = labels.to(device)
    if batch_size == 1:
        return arange
    if pairing == "label_kernel":
        if labels.shape[0] != batch_size:
            raise ValueError(f"labels have {labels.shape[0]} rows for a batch of {batch_size}.")
        return _draw_rows(label_kernel_probabilities(labels, bandwidth), generator)
    classes = _class_ids(labels, batch_size)
    same = classes.view(-1, 1) == classes.view(1, -1)
    eye = torch.eye(batch_size, dtype=torch.bool, device=device)
    if pairing == "different_class":
        weights = ~same
        fallback = ~eye  # everyone shares i's class: any other sample
    else:  # same_class
        weights = same & ~eye
        fallback = eye  # alone in its class: itself
    empty = ~weights.any(dim=1, keepdim=True)
    weights = torch.where(empty, fallback, weights)
    return _draw_rows(weights.float(), generator)
