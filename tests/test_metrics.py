import math

import numpy as np
import pytest

from imvedit.evaluation.metrics import flicker, psnr, temporal_error


def test_static_video_has_no_flicker_and_a_copy_is_perfect():
    frame = np.random.default_rng(0).integers(0, 255, (1, 8, 8, 3), dtype=np.uint8)
    static = np.repeat(frame, 5, axis=0)
    assert flicker(static) == 0.0
    assert psnr(static, static.copy()) == math.inf
    assert temporal_error(static, static) == 0.0


def test_known_values():
    a = np.zeros((2, 4, 4, 3), np.float64)
    b = np.full((2, 4, 4, 3), 0.1, np.float64)
    assert abs(psnr(a, b) - 20.0) < 1e-9  # mse 0.01
    moving = np.stack([np.zeros((4, 4, 3)), np.ones((4, 4, 3))])
    assert flicker(moving) == 1.0
    assert temporal_error(moving, np.zeros_like(moving)) == 1.0
    mask = np.zeros((2, 4, 4), bool)
    mask[:, 0, 0] = True
    c = b.copy()
    c[:, 0, 0] = 0.0
    assert psnr(a, c, mask) == math.inf


def test_ssim_known_values():
    from imvedit.evaluation.metrics import ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, 24, 24, 3), dtype=np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    assert 0 < ssim(noisy, a) < 0.99
    mask = np.zeros((3, 24, 24), bool)
    mask[:, :8] = True  # more than half a window away from the changed half
    half = a.copy()
    half[:, 12:] = 255 - half[:, 12:]  # changed only outside the mask
    assert ssim(half, a, mask) == pytest.approx(1.0) and ssim(half, a, ~mask) < 0.5
