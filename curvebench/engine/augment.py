"""Batched, per-sample augmentation on the device (GPU or CPU): reflect-pad crop and flip.

Every sample gets its own crop offset and flip from ``generator``; nothing leaves the device.
Reflect padding commutes with per-channel normalisation, so we pad the raw pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator,
                     pad_mode: str = "reflect") -> torch.Tensor:
    """images: uint8 or float [B, C, H, W] -> float [B, C, H, W] (same value scale).

    Crop: pad by ``pad`` on each side (``pad_mode`` reflect, as CurveNet/MW-Net, or constant zeros, as
    LDAM-style code), then take an HxW window at a uniform offset in
    {0..2*pad}^2 per sample. Flip: horizontal, with probability 1/2 per sample.
    """
    b, c, h, w = images.shape
    x = images.float()
    dev = x.device
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode=pad_mode)
        dy = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=dev, generator=generator)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # [B,1,H,1]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # [B,1,1,W]
        bidx = torch.arange(b, device=dev)[:, None, None, None]
        cidx = torch.arange(c, device=dev)[None, :, None, None]
        x = x[bidx, cidx, rows, cols]
    if flip:
        mask = torch.rand(b, device=dev, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class Normalize:
    """(x / 255 - mean) / std per channel, for float images on the 0..255 scale."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device) -> None:
        self.scale = (1.0 / (255.0 * torch.tensor(std, device=device))).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, device=device) / torch.tensor(std, device=device)).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale - self.shift
