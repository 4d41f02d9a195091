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
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imvedit import jsonutil
from imvedit.toy.reading import read_edit
from imvedit.video.io import read_video

EDITS = ("make the circle red", "remove the circle", "make the background pink", "make it black and white")


def _scene(clip: str):
    spec = importlib.util.spec_from_file_location("make_shapes", Path(clip).with_name("make_shapes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SCENE


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
            print(jsonutil.dumps(record), flush=True)  # an unchanged frame's PSNR is inf: null


if __name__ == "__main__":
    main()
