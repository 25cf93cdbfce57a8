"""SaliencyMix (Uddin et al. 2021): CutMix whose box is centred on the partner's most salient pixel.

Saliency here is the spectral residual of Hou and Zhang (CVPR 2007), as OpenCV's
``StaticSaliencySpectralResidual`` computes it, in torch for the whole batch at once.

Departure from the authors: their code (SaliencyMix_CIFAR/saliencymix.py and the ImageNet
train.py of afm-shahab-uddin/SaliencyMix) calls OpenCV's ``StaticSaliencyFineGrained_create()``
(Montabone and Soto 2010, centre-surround differences over integral images), one image at a time
on the CPU, on the normalised float tensor. We use the spectral residual instead because it is a
few FFTs that run batched on the inputs' device with no host round trip, and the paper discusses
the spectral residual among the saliency detectors it could use. On synthetic images with one
textured patch on a smooth background our peak falls in the patch at least as often as OpenCV's
spectral residual (tests/unit/mixing/test_mixing_saliency.py; figures in docs/guide/mixing.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_mix.mixing.mixers import BatchMixer, _spatial_dims, _wide, box_corners, paste_boxes
from lightning_mix.mixing.sampling import Mode, Pairing, pair_ids


def _gaussian_weights(size: int, sigma: float) -> list[float]:
    g = [math.exp(-((i - (size - 1) / 2) ** 2) / (2 * sigma**2)) for i in range(size)]
    return [v / sum(g) for v in g]


def spectral_residual_saliency(images: torch.Tensor, working_size: int = 64) -> torch.Tensor:
    """Spectral-residual saliency maps (B, H, W) of images (B, C, H, W), float32.

    The steps of Hou and Zhang (CVPR 2007) as OpenCV's ``StaticSaliencySpectralResidual`` computes
    them: grey image (here the channel mean; OpenCV weights B, G, R) resized bilinearly to
    ``working_size`` squared; log amplitude ``L = log(1 + |F|)`` and phase ``P`` of its spectrum; spectral
    residual ``R = L - mean3x3(L)``, the 3x3 mean with reflected borders (OpenCV's
    ``BORDER_REFLECT_101``: the unshifted spectrum's DC term sits in a corner, and replicated
    borders would copy it into the padding and pull the peak to the image border); magnitude
    ``|IFFT(exp(R + iP))|`` blurred by a 5x5 Gaussian (sigma 8, reflected borders) and squared
    after the blur; resized back to (H, W) bilinearly. Any image dtype is accepted.
    """
    if images.dim() != 4:
        raise ValueError(f"saliency needs images (B, C, H, W), got shape {tuple(images.shape)}.")
    b, _, height, width = images.shape
    grey = images.float().mean(dim=1, keepdim=True)
    small = F.interpolate(grey, size=(working_size, working_size), mode="bilinear", align_corners=False)
    spectrum = torch.fft.fft2(small[:, 0])
    amplitude = _power(spectrum).sqrt()
    log_amp = torch.log1p(amplitude)  # OpenCV takes log(1 + |F|)
    padded = F.pad(log_amp.unsqueeze(1), (1, 1, 1, 1), mode="reflect")  # reflect without the edge: REFLECT_101
    # exp(R + iP) = (1 + |F|) exp(-mean3x3(L)) F / |F|: a real rescaling of the spectrum, which
    # spares the (slow on CPU) complex angle/polar round trip
    mean_log = _blur(padded, [1.0 / 3, 1.0 / 3, 1.0 / 3], [1.0 / 3, 1.0 / 3, 1.0 / 3]).squeeze(1)
    residual_amp = torch.exp(log_amp - mean_log)
    rescaled = spectrum * (residual_amp / amplitude.clamp_min(1e-30))
    rescaled = torch.where(amplitude > 0, rescaled, residual_amp.to(rescaled.dtype))  # |F| = 0: phase 0, as OpenCV
    magnitude = _power(torch.fft.ifft2(rescaled)).sqrt()
    gauss = _gaussian_weights(5, 8.0)
    smoothed = _blur(F.pad(magnitude.unsqueeze(1), (2, 2, 2, 2), mode="reflect"), gauss, gauss).square()
    return F.interpolate(smoothed, size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def _power(z: torch.Tensor) -> torch.Tensor:
    """``|z|^2`` of a complex tensor without the complex ``abs`` kernel."""
    return torch.addcmul(z.real * z.real, z.imag, z.imag)


def _blur(padded: torch.Tensor, k_cols: list[float], k_rows: list[float]) -> torch.Tensor:
    """Separable filter of a (B, 1, H + K - 1, W + K - 1) map, ``k_cols`` along W then ``k_rows``
    along H, as in-place multiply-adds of shifted slices (a one-channel convolution or pooling
    is several times slower on CPU).
    """
    taps = len(k_cols)
    h, w = padded.shape[-2] - taps + 1, padded.shape[-1] - taps + 1
    rows = padded[..., :, 0:w] * k_cols[0]
    for i in range(1, taps):
        rows.add_(padded[..., :, i : i + w], alpha=k_cols[i])
    out = rows[..., 0:h, :] * k_rows[0]
    for i in range(1, taps):
        out.add_(rows[..., i : i + h, :], alpha=k_rows[i])
    return out


def saliency_peaks(images: torch.Tensor, working_size: int = 64) -> torch.Tensor:
    """(B, 2) integer (row, column) of each image's most salient pixel (first one on ties)."""
    sal = spectral_residual_saliency(images, working_size)
    flat = sal.flatten(1).argmax(dim=1)
    width = images.shape[-1]
    return torch.stack((torch.div(flat, width, rounding_mode="floor"), flat % width), dim=1)


class SaliencyMix(BatchMixer):
    """SaliencyMix (Uddin et al. 2021): paste a CutMix box of the partner centred on its saliency peak.

    The box has sides ``H * sqrt(1 - lam)``, ``W * sqrt(1 - lam)`` (``lam ~ Beta(alpha, alpha)``),
    is centred on the partner's most salient pixel (spectral residual, see
    :func:`spectral_residual_saliency`) and clipped to the image; lam is then set to
    1 - pasted area / image area. 2D images, any dtype (uint8 included).

    Args:
        alpha: Beta concentration (1.0 in the paper, applied with probability 0.5 there: use
            ``MixingCallback(p=0.5)``).
        mode: ``"batch"``: one lam and one box for the batch, centred on the peak of sample 0's
            partner (as the authors' code does); ``"pair"``: one box per pair ``(i, j)``, ``i < j``,
            centred on ``j``'s peak, and ``j`` receives the complementary pixels; ``"elem"``: each
            sample gets its own lam and a box on its own partner's peak.
        pairing, bandwidth: see :class:`~lightning_mix.mixing.Mixup` (default ``"flip"``).
        working_size: side of the square grey image the saliency is computed on (64, as in the
            spectral-residual paper).
    """

    needs_float = False

    def __init__(
        self,
        alpha: float = 1.0,
        mode: Mode = "batch",
        pairing: Pairing = "flip",
        bandwidth: float = 1.0,
        working_size: int = 64,
    ) -> None:
        super().__init__(alpha, mode, pairing, bandwidth)
        if working_size < 4:
            raise ValueError(f"SaliencyMix: working_size must be at least 4, got {working_size}.")
        self.working_size = int(working_size)

    def check_inputs(self, inputs):
        _spatial_dims(inputs, "SaliencyMix", allowed=(2,))

    def mix_inputs(self, inputs, index, lam, generator):
        b, spatial = inputs.shape[0], inputs.shape[2:]
        if self.mode == "batch":
            owners = index[:1]  # the partner whose peak places the batch's single box
        elif self.mode == "pair":
            owners = index.index_select(0, pair_ids(index))
        else:
            owners = index
        # saliency of each distinct image once, then gathered
        peaks = saliency_peaks(inputs, self.working_size).index_select(0, owners)
        n = peaks.shape[0]
        lo, hi = box_corners(lam[:n], peaks, spatial)
        lam_corrected = 1.0 - (hi - lo).prod(dim=1).to(_wide(inputs.device)) / (spatial[0] * spatial[1])
        return paste_boxes(inputs, index, lo, hi), lam_corrected.float().expand(b).contiguous()

    def __repr__(self) -> str:
        return f"SaliencyMix(alpha={self.alpha}, mode={self.mode!r}, pairing={self.pairing!r})"


__all__ = ["SaliencyMix", "saliency_peaks", "spectral_residual_saliency"]
