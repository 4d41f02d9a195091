import math

import numpy as np

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
