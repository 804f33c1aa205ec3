"""Image-quality metrics as SR papers report them: PSNR and SSIM on the Y channel with a border
crop, and IDM's Consistency (MSE between the LR input and the bicubic-downscaled output); the fine
detail an output holds beyond what the LR can (:func:`detail_fractions`); and the one protocol that the
evaluation tables and the trainer's validation both measure with (:func:`make_pair`, :func:`measure`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from idm_rt.resize import bicubic_upscale, downscale


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of RGB in [0, 1], in [16/255, 235/255] (MATLAB's rgb2ycbcr), (..., 3, H, W) -> (..., H, W)."""
    r, g, b = img.unbind(-3)
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _crop(y: torch.Tensor, border: int) -> torch.Tensor:
    return y[..., border:-border, border:-border] if border > 0 else y


def psnr_y(out: torch.Tensor, ref: torch.Tensor, border: int = 0) -> float:
    """PSNR in dB on Y of RGB images in [0, 1] (3, H, W), ``border`` pixels cut on each side."""
    mse = F.mse_loss(_crop(rgb_to_y(out.double()), border), _crop(rgb_to_y(ref.double()), border)).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_y(out: torch.Tensor, ref: torch.Tensor, border: int = 0) -> float:
    """SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1) on Y;
    NaN for images smaller than the window."""
    x = _crop(rgb_to_y(out.double()), border)[None, None]
    y = _crop(rgb_to_y(ref.double()), border)[None, None]
    if min(x.shape[-2:]) < 11:
        return float("nan")
    w = _gaussian_window().to(x.device)
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean().item()


def lr_consistency(out: torch.Tensor, lr: torch.Tensor) -> float:
    """MSE between the LR input and the output bicubic-downscaled to the LR size, images in [0, 1]
    (IDM Table 2 reports it x1e-5)."""
    down = (downscale(out[None].double() * 2 - 1, tuple(lr.shape[-2:])) + 1) / 2
    return F.mse_loss(down[0], lr.double()).item()


DETAIL_RINGS = 8  # annuli of the correlated detail fraction; each holds >= ~1000 frequencies of a 176 px crop


def _spectrum(y: torch.Tensor) -> torch.Tensor:
    """2D DFT of a (H, W) image after subtracting its window-weighted mean and multiplying by a separable
    symmetric Hann window (w(i) = 0.5 - 0.5 cos(2 pi i / (n - 1)), zero on the edges): the crop's edges
    then add no broadband energy of their own, and the windowed image has no DC term."""
    h, w = y.shape
    win = torch.outer(
        torch.hann_window(h, periodic=False, dtype=y.dtype), torch.hann_window(w, periodic=False, dtype=y.dtype)
    )
    return torch.fft.fft2((y - (win * y).sum() / win.sum()) * win)


def detail_band(shape: tuple[int, int], s: float) -> torch.Tensor:
    """Each DFT frequency's normalised radius r = |f| / 0.5, f in cycles per pixel along each axis (so a
    non-square crop keeps r = 1 at Nyquist on both axes, and one r the same frequency on both), where it lies
    in the band the LR of scale ``s`` cannot hold, 1/s <= r <= 1; NaN elsewhere (the corners beyond Nyquist
    and the LR's disc)."""
    fy = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(shape[1], dtype=torch.float64)[None, :]
    r = torch.hypot(fy, fx) / 0.5
    return torch.where((r >= 1 / s) & (r <= 1), r, torch.nan)


def detail_fractions(out: torch.Tensor, hr: torch.Tensor, s: float, border: int = 0) -> dict[str, float]:
    """How much of the HR's fine detail an output holds, on Y of RGB images (3, H, W) in [0, 1] with
    ``border`` pixels cut; both NaN when the HR has no energy in the band (below 1e-15 per pixel, round-off).

    ``detail``: the output's energy in the band 1/s <= r <= 1 (:func:`detail_band`, spectra as
    :func:`_spectrum` makes them) as a fraction of the HR's. Any energy counts, noise included.
    ``detail_corr``: only the part of the output's band that lies along the HR's: in each of
    :data:`DETAIL_RINGS` annuli of equal width over the band, the energy of the projection of the output's
    spectrum onto the HR's, max(0, Re<O, H>)^2 / |H|^2, summed over the annuli as a fraction of the HR's band
    energy. Noise independent of the HR adds about 1/(2 n) of its energy for n frequencies per annulus; a
    filtered HR counts (almost) fully, the annuli following its frequency response. It is at most ``detail``
    (Cauchy-Schwarz) and exceeds 1 only when the HR's own detail is amplified (over-sharpening)."""
    o, h = (_spectrum(_crop(rgb_to_y(t.double()), border)) for t in (out, hr))
    r = detail_band(tuple(h.shape), s)
    inside = ~r.isnan()
    e_hr = (h.abs() ** 2)[inside]
    total = e_hr.sum().item()
    if total <= 1e-15 * h.numel() ** 2:  # Parseval: the band's power per pixel is the sum / pixels^2
        return {"detail": float("nan"), "detail_corr": float("nan")}
    ring = ((r[inside] - 1 / s) / (1 - 1 / s) * DETAIL_RINGS).long().clamp(max=DETAIL_RINGS - 1)
    cross = torch.zeros(DETAIL_RINGS, dtype=torch.float64).index_add_(0, ring, (o * h.conj()).real[inside])
    energy = torch.zeros(DETAIL_RINGS, dtype=torch.float64).index_add_(0, ring, e_hr)
    held = energy > 0
    corr = (cross[held].clamp(min=0) ** 2 / energy[held]).sum().item()
    return {"detail": (o.abs() ** 2)[inside].sum().item() / total, "detail_corr": corr / total}


def protocol_side(side: int, s: float) -> int:
    """The HR side measured at scale ``s``: the usual protocol crops it to a multiple of an integer scale."""
    return side // int(s) * int(s) if float(s).is_integer() else side


def quantize(t: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] rounded to the 8-bit levels a file holds (still in [-1, 1])."""
    return ((t.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def make_pair(img: torch.Tensor, s: float, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(hr, lr) in [-1, 1], (1, 3, H, W) and (1, 3, h, w), from an 8-bit (3, H, W) image at scale ``s``: the
    HR cropped to :func:`protocol_side`, the LR made by antialiased bicubic downscaling and rounded to 8 bits."""
    img = img[:, : protocol_side(img.shape[1], s), : protocol_side(img.shape[2], s)]
    hr = img.float()[None].to(device) / 127.5 - 1
    h, w = hr.shape[-2:]
    return hr, quantize(downscale(hr, (max(1, round(h / s)), max(1, round(w / s)))))


def as_saved(t: torch.Tensor) -> torch.Tensor:
    """An image (1, 3, H, W) in [-1, 1] as an 8-bit file holds it: (3, H, W) float64 in [0, 1], on the CPU."""
    return (quantize(t[0].double()).cpu() + 1) / 2


def measure(out: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, s: float) -> dict[str, float]:
    """PSNR(Y), SSIM(Y) (border ceil(s)) and Consistency x1e-5 of an output (1, 3, H, W) in [-1, 1], rounded
    to 8 bits as it would be saved."""
    border = math.ceil(s)
    out, hr, lr = as_saved(out), as_saved(hr), as_saved(lr)
    return {"psnr": psnr_y(out, hr, border), "ssim": ssim_y(out, hr, border), "cons": lr_consistency(out, lr) * 1e5}


def bicubic(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The baseline every table compares with: the bicubic upscale, clamped to [-1, 1]."""
    return bicubic_upscale(lr, size).clamp(-1, 1)
