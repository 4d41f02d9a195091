"""Video and image I/O through ffmpeg (driven by ffmpeg-python), behind one small interface.

Which ffmpeg: `$IMVEDIT_FFMPEG` if set, else an `ffmpeg` on PATH, else the binary that the
`imageio-ffmpeg` wheel ships, so a plain `pip install` is enough. Every command is an argument list
(never a shell string), and every output is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess  # noqa: S404 - argument lists only, never a shell
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImveditError, UsageError
from ..fsutil import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@functools.cache
def ffmpeg_exe() -> str:
    env = os.environ.get("IMVEDIT_FFMPEG")
    if env:
        return env
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - it is a dependency
        raise ImveditError("No ffmpeg found.", "Install ffmpeg or `pip install imageio-ffmpeg`.") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


@dataclass
class VideoInfo:
    width: int  # displayed width (after rotation metadata is applied)
    height: int
    fps: Fraction
    has_audio: bool
    duration: float | None
    rotation: int = 0


_NTSC = [Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120)]


def _parse_fps(text: str) -> Fraction:
    value = float(text)
    for f in _NTSC:  # ffmpeg prints 29.97 for 30000/1001
        if abs(float(f) - value) < 0.006:
            return f
    return Fraction(text).limit_denominator(1001)


def _check_input(path: Path) -> None:
    if not path.exists():
        raise UsageError(f"Input {path} does not exist.", "Check the path.")
    if path.is_dir():
        raise UsageError(f"Input {path} is a directory.", "Give a video or image file.")
    if path.stat().st_size == 0:
        raise UsageError(f"Input {path} is empty (0 bytes).", "Give a video or image file with content.")


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, audio and rotation of a video, read from ffmpeg's own description of it."""
    path = Path(path)
    _check_input(path)
    proc = subprocess.run(  # noqa: S603 - argument list
        [ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, errors="replace", check=False
    )
    text = proc.stderr
    video = re.search(r"Stream #\S+.*?: Video: .*", text)
    if not video:
        raise UsageError(
            f"{path} has no video stream ffmpeg can read.", "Give a video file (mp4, mov, mkv, webm, ...)."
        )
    line = video.group(0)
    size = re.search(r", (\d{1,6})x(\d{1,6})", line)
    fps = re.search(r", ([\d.]+) fps", line) or re.search(r", ([\d.]+) tbr", line)
    if not size or not fps:
        raise UsageError(f"Could not read the size or frame rate of {path}.", "Re-encode it with ffmpeg and try again.")
    width, height = int(size.group(1)), int(size.group(2))
    rot = re.search(r"rotation of (-?[\d.]+) degrees", text)
    rotation = int(round(float(rot.group(1)))) % 360 if rot else 0
    if rotation in (90, 270):
        width, height = height, width
    dur = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else None
    has_audio = re.search(r"Stream #\S+.*?: Audio: ", text) is not None
    return VideoInfo(width, height, _parse_fps(fps.group(1)), has_audio, duration, rotation)


def read_video(path: str | Path) -> tuple[np.ndarray, VideoInfo]:
    """All frames as uint8 (frames, height, width, 3), with the video's description."""
    info = probe(path)
    try:
        out, _ = (
            ffmpeg.input(str(path))
            .output("pipe:", format="rawvideo", pix_fmt="rgb24")
            .run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
        )
    except ffmpeg.Error as e:
        last = e.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
        raise UsageError(f"ffmpeg could not decode {path}: {last[0]}", "The file may be truncated or corrupt.") from e
    frame_bytes = info.width * info.height * 3
    n = len(out) // frame_bytes
    if n == 0:
        raise UsageError(f"{path} has no decodable frames.", "Give a video with at least one frame.")
    frames = np.frombuffer(out[: n * frame_bytes], np.uint8).reshape(n, info.height, info.width, 3)
    return frames, info


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: Fraction,
    audio_from: str | Path | None = None,
    crf: int = 18,
    codec: str = "libx264",
) -> Path:
    """Encode uint8 frames (frames, height, width, 3); copy (or re-encode) the audio of `audio_from`."""
    path = Path(path)
    n, h, w, _ = frames.shape
    # yuv420p (what players expect) needs even sizes; odd sizes keep full chroma instead of being cropped.
    pix_fmt = "yuv420p" if (w % 2 == 0 and h % 2 == 0) else "yuv444p"
    with atomic_path(path) as tmp:
        video = ffmpeg.input(
            "pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=f"{fps.numerator}/{fps.denominator}"
        )
        streams = [video]
        audio_args = {}
        if audio_from is not None:
            streams.append(ffmpeg.input(str(audio_from)).audio)
            audio_args = {"acodec": "aac"}
        try:
            (
                ffmpeg.output(*streams, str(tmp), vcodec=codec, pix_fmt=pix_fmt, crf=crf, **audio_args)
                .overwrite_output()
                .run(
                    cmd=ffmpeg_exe(),
                    input=np.ascontiguousarray(frames, dtype=np.uint8).tobytes(),
                    capture_stdout=True,
                    capture_stderr=True,
                )
            )
        except ffmpeg.Error as e:
            last = e.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
            raise ImveditError(
                f"ffmpeg could not write {path}: {last[0]}", "Try another --codec or output format."
            ) from e
    return path


def read_image(path: str | Path) -> np.ndarray:
    """An image as uint8 (1, height, width, 3): alpha is dropped, grayscale and CMYK converted."""
    path = Path(path)
    _check_input(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))[None]
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"{path} is not a readable image.", "Give a png, jpg or webp file.") from e


def write_image(path: str | Path, frame: np.ndarray) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(frame).save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path
