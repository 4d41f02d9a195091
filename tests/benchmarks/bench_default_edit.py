"""The embedded default, as a new user meets it: `imvedit edit examples/shapes.mp4 "<edit>" -o out.mp4`.

    python tests/benchmarks/bench_default_edit.py [--runs 1] [--clip examples/shapes.mp4] [--edit ...]

Runs the installed CLI exactly as a user would (a fresh process each time, so model loading counts, no flags),
checks that the output has the input's frame count, fps and size, and prints one JSON line per edit with the
seconds of each run and what the edit did, read off the frames with the clip's own scene
(`examples/make_shapes.py`): the object's and the background's mean colour per frame, the share of frames in
which each moved to the colour the instruction names, the rest of the frame's PSNR against the source, and
each region's mean saturation. The targets (under 30 s on a 2-core CPU; the checks of each edit) are the
embedded-default issue's. Not a test.
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imvedit.evaluation.metrics import psnr
from imvedit.toy.world import PALETTE, coverage
from imvedit.video.io import read_video

EDITS = ("make the circle red", "remove the circle", "make the background pink", "make it black and white")


def _scene(clip: str):
    spec = importlib.util.spec_from_file_location("make_shapes", Path(clip).with_name("make_shapes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SCENE


def _closer(rgb: np.ndarray, a: str, b: str) -> bool:
    """Is the mean colour `rgb` (0-255) closer to palette colour `a` than to `b`?"""
    return np.linalg.norm(rgb - PALETTE[a]) < np.linalg.norm(rgb - PALETTE[b])


def _saturation(rgb: np.ndarray) -> float:
    hi, lo = rgb.max(), rgb.min()
    return float((hi - lo) / hi) if hi > 0 else 0.0


def read_edit(source: np.ndarray, edited: np.ndarray, scene) -> dict:
    """What the edit did, per region of the clip's one object (masks from the scene that rendered it)."""
    (obj,) = [o for o in scene.objects if o.shape == "circle"] or scene.objects[:1]
    size = source.shape[1]
    inside = np.stack([coverage(obj, t, size, scene.world) > 0.5 for t in range(len(source))])
    outside = np.stack(
        [~(sum(coverage(o, t, size, scene.world) for o in scene.objects) > 0.01) for t in range(len(source))]
    )
    obj_rgb = [edited[t][inside[t]].astype(float).mean(0) for t in range(len(edited))]
    bg_rgb = [edited[t][outside[t]].astype(float).mean(0) for t in range(len(edited))]
    bg = scene.background.color
    return {
        "object_red_not_blue": float(np.mean([_closer(c, "red", obj.color) for c in obj_rgb])),
        "object_background_not_blue": float(np.mean([_closer(c, bg, obj.color) for c in obj_rgb])),
        "object_stays_blue_not_pink": float(np.mean([_closer(c, obj.color, "pink") for c in obj_rgb])),
        "background_pink_not_green": float(np.mean([_closer(c, "pink", bg) for c in bg_rgb])),
        "rest_psnr": psnr(edited / 255.0, source / 255.0, np.repeat(~inside[..., None], 3, -1)),
        "max_saturation": max(
            max(_saturation(c / 255.0) for c in obj_rgb), max(_saturation(c / 255.0) for c in bg_rgb)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--clip", default="examples/shapes.mp4")
    parser.add_argument("--edit", action="append", help="an instruction (repeatable); default: the issue's four")
    args = parser.parse_args()
    exe = shutil.which("imvedit") or sys.exit("imvedit is not on PATH: pip install -e . first")
    source, info = read_video(args.clip)
    scene = _scene(args.clip)
    with tempfile.TemporaryDirectory() as tmp:
        for instruction in args.edit or EDITS:
            seconds = []
            for i in range(args.runs):
                out = Path(tmp) / f"out{i}.mp4"
                start = time.perf_counter()
                subprocess.run([exe, "edit", args.clip, instruction, "-o", str(out), "--overwrite"], check=True,
                               capture_output=True)  # noqa: S603  # fmt: skip
                seconds.append(round(time.perf_counter() - start, 2))
                frames, out_info = read_video(out)
                assert frames.shape == source.shape, (frames.shape, source.shape)
                assert (out_info.fps, out_info.width, out_info.height) == (info.fps, info.width, info.height)
            record = {"command": f'imvedit edit {args.clip} "{instruction}" -o out.mp4', "seconds": seconds}
            record.update(read_edit(source, frames, scene), frames=int(source.shape[0]), fps=str(out_info.fps))
            record.update(cpus=os.cpu_count(), machine=platform.machine())
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
