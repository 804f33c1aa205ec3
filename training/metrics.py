"""Image-quality metrics as SR papers report them: PSNR and SSIM on the Y channel with a border
crop, and IDM's Consistency (MSE between the LR input and the bicubic-downscaled output); and the one
protocol that the evaluation tables and the trainer's validation both measure with (:func:`make_pair`,
:func:`measure`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from idm_rt.resize import downscale, upscale


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


def measure(out: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, s: float) -> dict[str, float]:
    """PSNR(Y), SSIM(Y) (border ceil(s)) and Consistency x1e-5 of an output (1, 3, H, W) in [-1, 1], rounded
    to 8 bits as it would be saved."""
    to01 = lambda t: (quantize(t[0].double()).cpu() + 1) / 2
    border = math.ceil(s)
    return {"psnr": psnr_y(to01(out), to01(hr), border), "ssim": ssim_y(to01(out), to01(hr), border),
            "cons": lr_consistency(to01(out), to01(lr)) * 1e5}


def bicubic(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The baseline every table compares with: the bicubic upscale, clamped to [-1, 1]."""
    return upscale(lr, size).clamp(-1, 1)
