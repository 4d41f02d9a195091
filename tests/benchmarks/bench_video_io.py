"""Decode + encode throughput of imvedit's video I/O against a plain ffmpeg transcode, as a ratio.

    python tests/benchmarks/bench_video_io.py [--frames 240] [--size 1280x720] [--repeats 3]

Makes a 720p test clip with audio, then times, interleaved in one process: (a) `ffmpeg -i clip -c:v
libx264 -crf 18 -c:a copy out.mp4`; (b) imvedit's path: `iter_frames` (rgb24 frames into Python)
-> `VideoWriter` (frames back into libx264, audio copied). Reports frames per second of each and
(b)/(a) as a ratio of medians (this machine is shared and noisy: only the ratio means anything). Not a test.
"""

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from imvedit.video.io import VideoWriter, ffmpeg_exe, iter_frames, probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    exe = ffmpeg_exe()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        subprocess.run(  # noqa: S603
            [exe, "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={args.size}:rate=24",
             "-f", "lavfi", "-i", "sine=frequency=440", "-frames:v", str(args.frames), "-c:v", "libx264",
             "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(clip)],
            check=True,
        )  # fmt: skip
        info = probe(clip)
        plain, ours = [], []
        for i in range(args.repeats):
            start = time.perf_counter()
            subprocess.run(  # noqa: S603
                [exe, "-loglevel", "error", "-y", "-i", str(clip), "-c:v", "libx264", "-crf", "18",
                 "-pix_fmt", "yuv420p", "-c:a", "copy", str(Path(tmp) / f"plain{i}.mp4")],
                check=True,
            )  # fmt: skip
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            with VideoWriter(Path(tmp) / f"ours{i}.mp4", info.fps, (info.width, info.height), audio_from=clip) as w:
                for frame in iter_frames(clip, info):
                    w.write(frame)
            ours.append(time.perf_counter() - start)
    a, b = statistics.median(plain), statistics.median(ours)
    print(
        json.dumps(
            {
                "clip": f"{args.size}, {args.frames} frames, with audio",
                "ffmpeg_fps": round(args.frames / a, 1),
                "imvedit_fps": round(args.frames / b, 1),
                "imvedit_over_ffmpeg_time": round(b / a, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
