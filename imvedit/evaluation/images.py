"""Pictures made of frames, for people to look at: the contact sheets of the toy bench, of a report's clips
and of training's preview.

Its own module, below both training and evaluation, because both draw them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def contact_sheet(rows: list[np.ndarray], path: Path, max_columns: int = 9) -> Path:
    """Rows of frames (each (f, h, w, 3) float [0, 1] or (f, h, w) gray) side by side in one PNG."""
    f = rows[0].shape[0]
    cols = np.unique(np.linspace(0, f - 1, min(f, max_columns)).round().astype(int))
    strips = []
    for r in rows:
        r = r if r.ndim == 4 else np.repeat(r[..., None], 3, axis=-1)
        tiles = [np.pad(r[c], ((1, 1), (1, 1), (0, 0)), constant_values=1.0) for c in cols]
        strips.append(np.concatenate(tiles, axis=1))
    sheet = (np.concatenate(strips, axis=0).clip(0, 1) * 255).round().astype(np.uint8)
    scale = max(1, 256 // rows[0].shape[1])
    img = Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.Resampling.NEAREST)
    img.save(path)
    return path
