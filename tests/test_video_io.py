from fractions import Fraction

import numpy as np
import pytest
from conftest import make_clip

from imvedit.errors import UsageError
from imvedit.video.io import probe, read_image, read_video, write_image, write_video


def test_probe_and_read_a_clip_with_audio(clip):
    info = probe(clip)
    assert (info.width, info.height, info.fps, info.has_audio) == (64, 48, Fraction(8), True)
    frames, _ = read_video(clip)
    assert frames.shape == (9, 48, 64, 3) and frames.dtype == np.uint8


def test_write_keeps_rate_size_frames_and_audio(clip, tmp_path):
    frames, info = read_video(clip)
    out = write_video(tmp_path / "out.mp4", frames, info.fps, audio_from=clip)
    again, info2 = read_video(out)
    assert again.shape == frames.shape
    assert info2.fps == info.fps and info2.has_audio
    assert np.abs(again.astype(int) - frames.astype(int)).mean() < 8  # lossy, but the same picture


def test_odd_sizes_and_ntsc_rates(tmp_path):
    clip = make_clip(tmp_path / "odd.mp4", size="63x47", rate="30000/1001", frames=5, audio=False, pix_fmt="yuv444p")
    frames, info = read_video(clip)
    assert info.fps == Fraction(30000, 1001)
    out = write_video(tmp_path / "odd-out.mp4", frames, info.fps)
    again, info2 = read_video(out)
    assert again.shape[1:3] == frames.shape[1:3] and len(again) == len(frames) and info2.fps == info.fps


def test_images_drop_alpha_and_convert_modes(tmp_path):
    from PIL import Image

    Image.new("RGBA", (5, 4), (10, 20, 30, 40)).save(tmp_path / "a.png")
    Image.new("L", (5, 4), 7).save(tmp_path / "g.png")
    Image.new("CMYK", (5, 4)).save(tmp_path / "c.jpg")
    for name in ("a.png", "g.png", "c.jpg"):
        assert read_image(tmp_path / name).shape == (1, 4, 5, 3)
    write_image(tmp_path / "w.png", np.zeros((4, 5, 3), np.uint8))
    assert read_image(tmp_path / "w.png").shape == (1, 4, 5, 3)


def test_bad_files(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("hello")
    with pytest.raises(UsageError, match="empty"):
        probe(tmp_path / "empty.mp4")
    with pytest.raises(UsageError, match="no video stream"):
        probe(tmp_path / "text.mp4")
    with pytest.raises(UsageError, match="does not exist"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(UsageError, match="not a readable image"):
        read_image(tmp_path / "text.mp4")


def test_an_ffmpeg_named_in_the_environment_wins(monkeypatch, tmp_path):
    from imvedit.video import io

    fake = tmp_path / "my-ffmpeg"
    monkeypatch.setenv("IMVEDIT_FFMPEG", str(fake))
    io.ffmpeg_exe.cache_clear()
    try:
        assert io.ffmpeg_exe() == str(fake)
    finally:
        monkeypatch.delenv("IMVEDIT_FFMPEG")
        io.ffmpeg_exe.cache_clear()
    assert io.ffmpeg_exe() != str(fake)


def test_relative_names_that_look_like_options_or_protocols(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_clip(tmp_path / "x.mp4").rename(tmp_path / "concat:-y.mp4")
    frames, info = read_video("concat:-y.mp4")  # a file, not ffmpeg's concat protocol
    assert frames.shape == (9, 48, 64, 3) and info.has_audio
    out = write_video("-o.mp4", frames, info.fps, audio_from="concat:-y.mp4")  # a file, not an option
    assert out.exists() and read_video(out)[0].shape == frames.shape


def test_an_image_is_a_one_frame_clip_behind_the_same_reader_and_writer(clip, tmp_path):
    """edit() reads and writes through probe_clip / iter_clip / clip_writer and never asks which it has."""
    from imvedit.video.io import clip_writer, iter_clip, probe_clip

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    image = write_image(tmp_path / "in.png", picture)
    info = probe_clip(image)
    assert (info.width, info.height, info.still, info.has_audio, info.frame_count_estimate) == (40, 30, True, False, 1)
    frames = list(iter_clip(image, info, (40, 30), start=1.0, max_frames=5))
    assert len(frames) == 1 and np.array_equal(frames[0], picture)  # same size: the pixels as read
    assert list(iter_clip(image, info, (20, 16)))[0].shape == (16, 20, 3)
    video = probe_clip(clip)
    assert not video.still and len(list(iter_clip(clip, video, (32, 24), max_frames=4))) == 4

    with clip_writer(tmp_path / "out.png", info.fps, (40, 30)) as writer:
        writer.write(picture)
        writer.write(255 - picture)  # a still keeps the first frame
    assert np.array_equal(read_image(tmp_path / "out.png")[0], picture)
    with pytest.raises(RuntimeError), clip_writer(tmp_path / "never.png", info.fps, (40, 30)) as writer:
        writer.write(picture)
        raise RuntimeError("the edit failed")
    assert not (tmp_path / "never.png").exists()  # nothing partial
    with clip_writer(tmp_path / "out.mp4", Fraction(8), (40, 30)) as writer:
        for _ in range(3):
            writer.write(picture)
    assert read_video(tmp_path / "out.mp4")[0].shape == (3, 30, 40, 3)
