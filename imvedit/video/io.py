"""Video and image I/O through ffmpeg (driven by ffmpeg-python), behind one small interface.

Which ffmpeg: `$IMVEDIT_FFMPEG` if set, else an `ffmpeg` on PATH, else the binary that the
`imageio-ffmpeg` wheel ships, so a plain `pip install` is enough. Every command is an argument list
(never a shell string), and every output is written to a temporary file and renamed into place.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess  # noqa: S404 - argument lists only, never a shell
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImveditError, UsageError
from ..fsutil import atomic_path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
MAX_PIXELS = 7680 * 4320  # 8K: a larger declared size is a corrupt or hostile header


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
    fps: Fraction  # the average frame rate (what a constant-rate copy of the video would use)
    has_audio: bool
    duration: float | None  # seconds, from the container
    rotation: int = 0  # degrees of rotation metadata; decoded frames are already upright
    pix_fmt: str | None = None  # e.g. "yuv420p"
    audio_streams: int = 0
    audio_codec: str | None = None  # of the first audio stream, e.g. "aac"
    variable_frame_rate: bool = False  # the container's nominal and average rates differ
    still: bool = False  # an image, read as a one-frame clip (`probe_clip`)

    @property
    def frame_count_estimate(self) -> int | None:
        if self.still:
            return 1
        return None if self.duration is None else int(round(self.duration * self.fps))


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
    if not os.access(path, os.R_OK):
        raise UsageError(f"Input {path} is not readable.", "Check its permissions.")
    if path.stat().st_size == 0:
        raise UsageError(f"Input {path} is empty (0 bytes).", "Give a video or image file with content.")


def _ffmpeg_text(args: list[str]) -> str:
    proc = subprocess.run(  # noqa: S603 - argument list
        [ffmpeg_exe(), "-hide_banner", *args], capture_output=True, text=True, errors="replace", check=False
    )
    return proc.stderr


def ff_path(path: str | Path) -> str:
    """A path as ffmpeg must get it: absolute (a name starting with '-' is never read as an option) and
    behind the `file:` protocol (a name with ':' is never read as another protocol, e.g. `concat:`)."""
    return f"file:{Path(path).absolute()}"


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, audio, pixel format and rotation of a video, from ffmpeg's own description.

    (The `imageio-ffmpeg` wheel ships ffmpeg without ffprobe, so this reads `ffmpeg -i`.)
    """
    path = Path(path)
    _check_input(path)
    text = _ffmpeg_text(["-i", ff_path(path)])
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
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise UsageError(
            f"{path} declares a {width}x{height} frame, outside what imvedit decodes (up to 8K).",
            "Scale the video down with ffmpeg first.",
        )
    rot = re.search(r"rotation of (-?[\d.]+) degrees", text)
    rotation = int(round(float(rot.group(1)))) % 360 if rot else 0
    if rotation in (90, 270):
        width, height = height, width
    dur = re.search(r"Duration: (\d+):(\d+):([\d.]+)", text)
    duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else None
    audio = re.findall(r"Stream #\S+.*?: Audio: (\w+)", text)
    pix = re.search(r"Video: [^,]+, (\w+)", line)
    tbr = re.search(r", ([\d.]+) tbr", line)
    vfr = bool(tbr) and abs(float(tbr.group(1)) - float(fps.group(1))) > 0.01 * float(fps.group(1))
    return VideoInfo(
        width, height, _parse_fps(fps.group(1)), bool(audio), duration, rotation,
        pix.group(1) if pix else None, len(audio), audio[0] if audio else None, vfr,
    )  # fmt: skip


def count_frames(path: str | Path) -> int:
    """The exact number of video frames, by reading the packets without decoding them."""
    text = _ffmpeg_text(["-i", ff_path(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"])
    found = re.findall(r"frame=\s*(\d+)", text)
    return int(found[-1]) if found else 0


def _trim_args(start: float | None, end: float | None) -> dict:
    args = {}
    if start:
        args["ss"] = f"{start:.6f}"
    if end is not None:
        args["t" if start else "to"] = f"{end - (start or 0):.6f}"
    return args


def iter_frames(
    path: str | Path,
    info: VideoInfo | None = None,
    size: tuple[int, int] | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Decode frames one at a time as uint8 (height, width, 3), optionally scaled to `size` (w, h) by
    ffmpeg on the way out, so a long 4K clip never sits in memory at full size. Frames are taken as
    they are stored (`-fps_mode passthrough`): a variable-frame-rate clip gives every frame once."""
    info = info or probe(path)
    w, h = size or (info.width, info.height)
    stream = ffmpeg.input(ff_path(path), **_trim_args(start, end)).video
    if size is not None and (w, h) != (info.width, info.height):
        stream = stream.filter("scale", w, h, flags="bicubic")
    out_args = {"format": "rawvideo", "pix_fmt": "rgb24", "fps_mode": "passthrough"}
    if max_frames is not None:
        out_args["frames:v"] = max_frames
    proc = ffmpeg.output(stream, "pipe:", **out_args).run_async(cmd=ffmpeg_exe(), pipe_stdout=True, pipe_stderr=True)
    frame_bytes, n = w * h * 3, 0
    try:
        while True:
            buf = proc.stdout.read(frame_bytes)
            if len(buf) < frame_bytes:
                break
            n += 1
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        code = proc.wait()
    if n == 0:
        last = (err.strip().splitlines() or ["no frames"])[-1]
        if code != 0:
            raise UsageError(f"ffmpeg could not decode {path}: {last}", "The file may be truncated or corrupt.")
        raise UsageError(f"{path} has no decodable frames.", "Give a video with at least one frame.")


def read_video(
    path: str | Path,
    size: tuple[int, int] | None = None,
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
) -> tuple[np.ndarray, VideoInfo]:
    """All frames as uint8 (frames, height, width, 3) (scaled to `size` when given), with the description."""
    info = probe(path)
    frames = np.stack(list(iter_frames(path, info, size, start, end, max_frames)))
    return frames, info


class VideoWriter:
    """Stream uint8 frames into a video file: `with VideoWriter(path, fps, size) as w: w.write(frame)`.

    The file appears at `path` only when the block ends without an error; audio from `audio_from`
    (trimmed to `audio_start`/`audio_end` seconds) is copied when the output container takes it, and
    re-encoded to AAC otherwise.
    """

    def __init__(
        self,
        path: str | Path,
        fps: Fraction,
        size: tuple[int, int],
        audio_from: str | Path | None = None,
        audio_start: float | None = None,
        audio_end: float | None = None,
        crf: int = 18,
        codec: str = "libx264",
    ):
        self.path, self.fps, self.size = Path(path), Fraction(fps), size
        self.audio = (audio_from, audio_start, audio_end) if audio_from is not None else None
        self.crf, self.codec = crf, codec
        self.frames = 0

    def __enter__(self) -> VideoWriter:
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._video_tmp = self._tmp.with_name(self._tmp.stem + ".video" + self._tmp.suffix)
        w, h = self.size
        # yuv420p (what players expect) needs even sizes; odd sizes keep full chroma instead of being cropped.
        pix_fmt = "yuv420p" if (w % 2 == 0 and h % 2 == 0) else "yuv444p"
        target = self._video_tmp if self.audio else self._tmp
        rate = f"{self.fps.numerator}/{self.fps.denominator}"
        out_args = {"vcodec": self.codec, "pix_fmt": pix_fmt}
        if self.codec in ("libx264", "libx265"):
            out_args["crf"] = self.crf
        self._proc = (
            ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=rate)
            .output(ff_path(target), r=rate, **out_args)
            .overwrite_output()
            .run_async(cmd=ffmpeg_exe(), pipe_stdin=True, pipe_stderr=True, quiet=False)
        )
        return self

    def write(self, frame: np.ndarray) -> None:
        w, h = self.size
        if frame.shape != (h, w, 3):
            raise ValueError(f"frame shaped {frame.shape}, writer expects {(h, w, 3)}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        except BrokenPipeError:
            pass  # ffmpeg exited: its message is raised at close
        self.frames += 1

    def _finish_video(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        err = self._proc.stderr.read().decode(errors="replace")
        if self._proc.wait() != 0:
            last = err.strip().splitlines()[-1:] or ["unknown error"]
            if "No space left on device" in err or "Disk quota exceeded" in err:
                raise ImveditError(
                    f"The disk is full: ffmpeg could not write {self.path}.",
                    "Free some space or write to another disk; no partial output was kept.",
                )
            raise ImveditError(
                f"ffmpeg could not write {self.path}: {last[0]}", "Try another --codec or output format."
            )

    def _mux_audio(self) -> None:
        src, start, end = self.audio
        # The audio is cut to the video's own length (`-shortest` drops video frames when stream-copying).
        length = float(self.frames / self.fps)
        end = min(end, (start or 0) + length) if end is not None else (start or 0) + length
        video = ffmpeg.input(ff_path(self._video_tmp))
        audio = ffmpeg.input(ff_path(src), **_trim_args(start, end)).audio
        for acodec in ("copy", "aac"):  # copy when the container takes the codec, else re-encode
            try:
                (
                    ffmpeg.output(video.video, audio, ff_path(self._tmp), vcodec="copy", acodec=acodec)
                    .overwrite_output()
                    .run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
                )
                return
            except ffmpeg.Error as e:
                text = e.stderr.decode(errors="replace")
                if "No space left on device" in text or "Disk quota exceeded" in text:
                    raise ImveditError(
                        f"The disk is full: ffmpeg could not write {self.path}.",
                        "Free some space or write to another disk; no partial output was kept.",
                    ) from e
                last = text.strip().splitlines()[-1:] or ["unknown error"]
        raise ImveditError(f"ffmpeg could not add the audio to {self.path}: {last[0]}", "Try another output format.")

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._finish_video()
                if self.audio:
                    self._mux_audio()
            else:
                with contextlib.suppress(Exception):
                    self._proc.stdin.close()
                self._proc.kill()
                self._proc.wait()
        except BaseException as e:
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._video_tmp.unlink()
        self._atomic.__exit__(exc_type, exc, tb)
        return False


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: Fraction,
    audio_from: str | Path | None = None,
    crf: int = 18,
    codec: str = "libx264",
) -> Path:
    """Encode uint8 frames (frames, height, width, 3); copy (or re-encode) the audio of `audio_from`."""
    n, h, w, _ = frames.shape
    with VideoWriter(path, fps, (w, h), audio_from=audio_from, crf=crf, codec=codec) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)


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


# ---------------------------------------------------------------- one interface for videos and images


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 (h, w, 3) frame at `size` (w, h), bicubic; the frame itself when it already has that size."""
    if frame.shape[1] == size[0] and frame.shape[0] == size[1]:
        return frame
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC))


def probe_clip(path: str | Path) -> VideoInfo:
    """`probe` for a video; for an image, its size as a one-frame clip (`still`, no audio, 1 fps)."""
    if not is_image(path):
        return probe(path)
    height, width = read_image(path).shape[1:3]
    return VideoInfo(width, height, Fraction(1), has_audio=False, duration=None, still=True)


def iter_clip(
    path: str | Path,
    info: VideoInfo,
    size: tuple[int, int],
    start: float | None = None,
    end: float | None = None,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """The frames of a video (`iter_frames`) or the one frame of an image, at `size` (w, h). An image is
    scaled whole in memory (it is one frame), a video by ffmpeg while it decodes."""
    if info.still:
        yield resize_frame(read_image(path)[0], size)
        return
    yield from iter_frames(path, info, size, start, end, max_frames)


class _StillWriter:
    """`VideoWriter`'s interface for an image file: a still of a clip is its first frame."""

    def __init__(self, path: str | Path):
        self.path, self.frames, self._first = Path(path), 0, None

    def __enter__(self) -> _StillWriter:
        return self

    def write(self, frame: np.ndarray) -> None:
        if self._first is None:
            self._first = frame
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and self._first is not None:
            write_image(self.path, self._first)  # atomically, like every output
        return False


def clip_writer(path: str | Path, fps: Fraction, size: tuple[int, int], **video_options) -> VideoWriter | _StillWriter:
    """A writer for `path`: a video file gets `VideoWriter(path, fps, size, **video_options)`, an image file
    the first frame written."""
    return _StillWriter(path) if is_image(path) else VideoWriter(path, fps, size, **video_options)
