"""Reading frames back against the scene that rendered them: what a base drew for a caption (`read_object`, the
binding report's reader) and what an edit did to a clip whose scene is known (`read_edit`, the embedded default's
checks). Pixels and the world only, so tests, benchmarks and reports read frames the same way.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.metrics import psnr
from .world import PALETTE, SIMPLE_SHAPES, SQUARE_HALF, Obj, Scene, coverage, render_background

OBJECT_DISTANCE = 60.0  # RGB distance (0-255) from the named background that makes a pixel the object's
_SCALES = np.linspace(0.8, 1.25, 10)  # template sizes tried around the mask's own extent


def read_object(frame: np.ndarray, scene: Scene) -> dict:
    """The object of one uint8 frame (h, w, 3) drawn for `scene`'s caption: its colour, shape and IoU."""
    size = frame.shape[0]
    background = render_background(scene.background, size)
    mask = np.linalg.norm(frame.astype(float) - background, axis=-1) > OBJECT_DISTANCE
    if mask.sum() < 0.02 * mask.size:
        return {"color": None, "shape": None, "iou": 0.0, "area": float(mask.mean())}
    rgb = np.median(frame[mask].astype(float), axis=0)
    color = min(PALETTE, key=lambda c: np.linalg.norm(rgb - np.array(PALETTE[c])))
    ys, xs = np.nonzero(mask)
    centre = ((xs.min() + xs.max() + 1) / 2 / size, (ys.min() + ys.max() + 1) / 2 / size)
    extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / size
    best = max(
        (_iou(mask, _template(shape, centre, extent * s, size)), shape) for shape in SIMPLE_SHAPES for s in _SCALES
    )
    return {"color": color, "shape": best[1], "iou": round(float(best[0]), 3), "area": round(float(mask.mean()), 3)}


def _template(shape: str, centre: tuple[float, float], extent: float, size: int) -> np.ndarray:
    """`shape` drawn at `centre` with a bounding box `extent` across (canvas units), as a boolean mask."""
    across = extent / SQUARE_HALF if shape == "square" else extent  # a square's side is that share of its size
    return coverage(Obj(shape, "white", *centre, 0.0, 0.0, across), 0, size, world="simple") > 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())


def _closer(rgb: np.ndarray, a: str, b: str) -> bool:
    """Is the mean colour `rgb` (0-255) closer to palette colour `a` than to `b`?"""
    return np.linalg.norm(rgb - PALETTE[a]) < np.linalg.norm(rgb - PALETTE[b])


def _saturation(rgb: np.ndarray) -> float:
    hi, lo = rgb.max(), rgb.min()
    return float((hi - lo) / hi) if hi > 0 else 0.0


def read_edit(
    source: np.ndarray, edited: np.ndarray, scene: Scene, color: str = "red", background: str = "pink"
) -> dict:
    """What an edit of a clip of `scene` did, from the frames (uint8, (f, h, w, 3)) and the scene's exact masks:

    - `object_to_color`: share of frames whose object (its pixels in the source) is closer to `color` than to
      its own colour; `object_to_background`: closer to the background's colour than to its own (removed);
    - `object_kept`: closer to its own colour than to `background` (a background edit that spared it);
    - `background_to`: share of frames whose background (pixels no object touches) is closer to `background`
      than to its own colour;
    - `rest_psnr`: every pixel outside the object against the source, dB; `max_saturation`: the most saturated
      of the object's and the background's mean colours over all frames (0 is grey).
    """
    obj = scene.objects[0]
    size = source.shape[1]
    inside = np.stack([coverage(obj, t, size, scene.world) > 0.5 for t in range(len(source))])
    outside = np.stack(
        [~(sum(coverage(o, t, size, scene.world) for o in scene.objects) > 0.01) for t in range(len(source))]
    )
    obj_rgb = [edited[t][inside[t]].astype(float).mean(0) for t in range(len(edited))]
    bg_rgb = [edited[t][outside[t]].astype(float).mean(0) for t in range(len(edited))]
    share = lambda rgbs, a, b: float(np.mean([_closer(c, a, b) for c in rgbs]))  # noqa: E731
    return {
        "object_to_color": share(obj_rgb, color, obj.color),
        "object_to_background": share(obj_rgb, scene.background.color, obj.color),
        "object_kept": share(obj_rgb, obj.color, background),
        "background_to": share(bg_rgb, background, scene.background.color),
        "rest_psnr": psnr(edited / 255.0, source / 255.0, np.repeat(~inside[..., None], 3, -1)),
        "max_saturation": max(_saturation(c / 255.0) for c in obj_rgb + bg_rgb),
    }
