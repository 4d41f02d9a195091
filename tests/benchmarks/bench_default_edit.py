"""Wall time of the embedded default: `imvedit edit examples/shapes.mp4 "make the circle red" -o out.mp4`.

    python tests/benchmarks/bench_default_edit.py [--runs 3] [--clip examples/shapes.mp4]

Runs the installed CLI exactly as a user would (a fresh process each time, so model loading counts),
checks that the output has the input's frame count, fps and size, and prints one JSON line with the
seconds of each run. The target (under 30 s on a 2-core CPU) is the embedded-default issue's. Not a test.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imvedit.video.io import probe, read_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clip", default="examples/shapes.mp4")
    parser.add_argument("--instruction", default="make the circle red")
    args = parser.parse_args()
    exe = shutil.which("imvedit") or sys.exit("imvedit is not on PATH: pip install -e . first")
    source, info = read_video(args.clip)
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"out{i}.mp4"
            start = time.perf_counter()
            subprocess.run([exe, "edit", args.clip, args.instruction, "-o", str(out)], check=True, capture_output=True)  # noqa: S603
            seconds.append(round(time.perf_counter() - start, 2))
            frames, out_info = read_video(out)
            assert frames.shape == source.shape, (frames.shape, source.shape)
            assert (out_info.fps, out_info.width, out_info.height) == (info.fps, info.width, info.height)
        same = probe(out)
    print(
        json.dumps(
            {
                "command": f'imvedit edit {args.clip} "{args.instruction}" -o out.mp4',
                "seconds": seconds,
                "frames": int(source.shape[0]),
                "fps": str(same.fps),
                "size": [same.width, same.height],
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
