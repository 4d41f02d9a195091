"""The embedded default, as a new user meets it: `imvedit edit examples/shapes.mp4 "<edit>" -o out.mp4`.

    python tests/benchmarks/bench_default_edit.py [--runs 1] [--clip examples/shapes.mp4] [--edit ...]
        [--versus "--guidance 1"]

Runs the installed CLI exactly as a user would (a fresh process each time, so model loading counts, no flags),
checks that the output has the input's frame count, fps and size, and prints one JSON line per edit with the
seconds of each run and what the edit did, read off the frames with the clip's own scene
(`imvedit.toy.world.EXAMPLE_SCENE`; give --clip only a clip rendered from it): the object's and the
background's mean colour per frame, the share of frames in which each moved to the colour the instruction
names, the rest of the frame's PSNR against the source, and each region's mean saturation. The targets (under 30 s on a 2-core CPU; the checks of each edit) are the
embedded-default issue's. With --versus FLAGS each run is followed by the same edit with those flags, and the
line also gives those runs' seconds and the ratio of the mean times (the default's over theirs). Not a test.
"""

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imvedit import jsonutil
from imvedit.evaluation.images import contact_sheet
from imvedit.toy.reading import read_edit
from imvedit.toy.world import EXAMPLE_SCENE
from imvedit.video.io import read_video

EDITS = ("make the circle red", "remove the circle", "make the background pink", "make it black and white")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--clip", default="examples/shapes.mp4")
    parser.add_argument("--edit", action="append", help="an instruction (repeatable); default: the issue's four")
    parser.add_argument(
        "--keep",
        help="a folder for each edit's last output (edit-1.mp4, ... in order) and sheet.png (source, then edits)",
    )
    parser.add_argument("--versus", help='flags for a second edit after each run, timed beside it, e.g. "--guidance 1"')
    args = parser.parse_args()
    exe = shutil.which("imvedit") or sys.exit("imvedit is not on PATH: pip install -e . first")
    source, info = read_video(args.clip)
    edited = [source]
    with tempfile.TemporaryDirectory() as tmp:
        for n, instruction in enumerate(args.edit or EDITS, 1):
            seconds, versus = [], []
            for i in range(args.runs):
                out = Path(tmp) / f"out{i}.mp4"
                seconds.append(_timed([exe, "edit", args.clip, instruction, "-o", str(out), "--overwrite"]))
                if args.versus:  # taken in turn with the default's runs, so both see the same machine
                    other = [exe, "edit", args.clip, instruction, "-o", str(Path(tmp) / "versus.mp4"), "--overwrite"]
                    versus.append(_timed([*other, *shlex.split(args.versus)]))
                frames, out_info = read_video(out)
                assert frames.shape == source.shape, (frames.shape, source.shape)
                assert (out_info.fps, out_info.width, out_info.height) == (info.fps, info.width, info.height)
            edited.append(frames)
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(out, Path(args.keep) / f"edit-{n}.mp4")
            record = {"command": f'imvedit edit {args.clip} "{instruction}" -o out.mp4', "seconds": seconds}
            if versus:
                record.update(versus=args.versus, versus_seconds=versus, ratio=round(sum(seconds) / sum(versus), 3))
            record.update(read_edit(source, frames, EXAMPLE_SCENE), frames=int(source.shape[0]), fps=str(out_info.fps))
            record.update(cpus=os.cpu_count(), machine=platform.machine())
            print(jsonutil.dumps(record), flush=True)  # an unchanged frame's PSNR is inf: null
    if args.keep:
        contact_sheet([clip / 255.0 for clip in edited], Path(args.keep) / "sheet.png", max_columns=5)


def _timed(command: list[str]) -> float:
    """Seconds one CLI run takes, loading included."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)  # noqa: S603
    return round(time.perf_counter() - start, 2)


if __name__ == "__main__":
    main()
