"""Metrics that need no learned weights, on uint8 or [0, 1] frames shaped (frames, height, width, 3)."""

from __future__ import annotations

import math

import numpy as np


def _unit(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB on [0, 1] pixels (inside `mask` when given); identical inputs give +inf."""
    a, b = _unit(a), _unit(b)
    err = (a - b) ** 2
    if mask is not None:
        m = np.broadcast_to(mask[..., None] if mask.ndim == a.ndim - 1 else mask, err.shape).astype(bool)
        if not m.any():
            return float("nan")
        err = err[m]
    mse = float(err.mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def flicker(frames: np.ndarray) -> float:
    """Mean absolute difference between consecutive frames on [0, 1] pixels (0 for a static video)."""
    f = _unit(frames)
    if len(f) < 2:
        return 0.0
    return float(np.abs(np.diff(f, axis=0)).mean())


def temporal_error(pred: np.ndarray, reference: np.ndarray) -> float:
    """Mean |(y_t - y_{t-1}) - (r_t - r_{t-1})|: change between frames beyond the reference's own change."""
    p, r = _unit(pred), _unit(reference)
    if len(p) < 2:
        return 0.0
    return float(np.abs(np.diff(p, axis=0) - np.diff(r, axis=0)).mean())


def ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, window: int = 7) -> float:
    """Mean SSIM over frames, channels and pixels (inside `mask` when given), on [0, 1] pixels, with a
    uniform `window` x `window` window and the usual constants (K1 = 0.01, K2 = 0.03); 1 for identical."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(_unit(a)).permute(0, 3, 1, 2)  # (f, c, h, w)
    y = torch.from_numpy(_unit(b)).permute(0, 3, 1, 2)
    pad = window // 2

    def mean(t):
        return F.avg_pool2d(F.pad(t, (pad, pad, pad, pad), mode="replicate"), window, stride=1)

    mx, my = mean(x), mean(y)
    vx, vy, cov = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    s = s.mean(1).numpy()  # (f, h, w): channels averaged
    if mask is not None:
        if not mask.any():
            return float("nan")
        return float(s[np.broadcast_to(mask, s.shape).astype(bool)].mean())
    return float(s.mean())
