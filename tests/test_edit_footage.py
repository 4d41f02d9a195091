"""`imvedit edit` on real footage: what comes out looks like what went in, only edited.

Clips are made by ffmpeg's lavfi sources with a sine audio track; the model is the tiny random Wan,
so these tests check the plumbing (sizes, rates, lengths, audio, windows, batches, interruptions),
not edit quality.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_clip, popen_interruptible

from imvedit.models.bases import SHAPES_WAN_DIR
from imvedit.models.loading import load_model
from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline, temporal_windows, window_weights
from imvedit.video.io import count_frames, probe, read_video

FAST = ["--model", "tiny-random", "--steps", "2"]


def imvedit(*args, **kw):
    return subprocess.run([sys.executable, "-m", "imvedit", *map(str, args)], capture_output=True, text=True, **kw)


def make_vfr_clip(path: Path) -> Path:
    """12 frames whose timestamps jump after the 6th (a gap of 0.5 s): a variable frame rate."""
    from imvedit.video.io import ffmpeg_exe

    cmd = [
        ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10",
        "-f", "lavfi", "-i", "sine=frequency=440", "-frames:v", "12",
        "-vf", "setpts='(N+if(gte(N,6),5,0))/(10*TB)'", "-fps_mode", "vfr",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", "1.7", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return path


@pytest.mark.parametrize(
    "name, size, rate, frames",
    [
        ("landscape", "96x54", "12", 13),
        ("portrait", "54x96", "10", 9),
        ("odd", "53x39", "30000/1001", 7),
    ],
)
def test_output_matches_the_input_clip(tmp_path, name, size, rate, frames):
    clip = make_clip(
        tmp_path / f"{name}.mp4", size=size, rate=rate, frames=frames, pix_fmt="yuv420p" if name != "odd" else "yuv444p"
    )
    r = imvedit("edit", clip, "make it winter", "-o", tmp_path / "out.mp4", *FAST, "--json")
    assert r.returncode == 0, r.stderr
    a, b = probe(clip), probe(tmp_path / "out.mp4")
    assert (b.width, b.height, b.fps) == (a.width, a.height, a.fps)
    assert count_frames(tmp_path / "out.mp4") == count_frames(clip) == frames
    assert abs(b.duration - a.duration) <= 1 / float(a.fps) + 1e-3
    assert b.has_audio and b.audio_streams == 1


@pytest.mark.slow
def test_working_size_from_resolution_or_area(tmp_path):
    clip = make_clip(tmp_path / "wide.mp4", size="96x54", frames=5, audio=False)
    sizes = {}
    for flag, value in (("--resolution", 32), ("--max-area", 64 * 32)):
        out = tmp_path / f"out{flag}.mp4"
        r = imvedit("edit", clip, "make it winter", "-o", out, *FAST, flag, value, "--json")
        assert r.returncode == 0, r.stderr
        sizes[flag] = json.loads(r.stdout)["working_size"]
        assert probe(out).width == 96 and probe(out).height == 54  # back to the input's size
    # shorter side 32 px, aspect 16:9 kept, sides multiples of 16 (tiny-random: VAE stride 8 x patch 2)
    assert sizes["--resolution"] == [64, 32] == sizes["--max-area"]
    r = imvedit("edit", clip, "x", "-o", tmp_path / "o.mp4", *FAST, "--resolution", 32, "--max-area", 999)
    assert r.returncode == 2 and "not both" in r.stderr


def test_variable_frame_rate_clip_keeps_frames_and_duration(tmp_path):
    clip = make_vfr_clip(tmp_path / "vfr.mp4")
    a = probe(clip)
    r = imvedit("edit", clip, "make it winter", "-o", tmp_path / "out.mp4", *FAST)
    assert r.returncode == 0, r.stderr
    b = probe(tmp_path / "out.mp4")
    assert count_frames(tmp_path / "out.mp4") == count_frames(clip) == 12  # every stored frame, once
    assert (b.width, b.height) == (a.width, a.height) and b.fps == a.fps  # the average rate, as a rational
    assert abs(b.duration - a.duration) <= 1 / float(a.fps) + 1e-3
    assert b.has_audio


@pytest.mark.slow
def test_trim_and_max_frames(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=24, rate="8")
    r = imvedit("edit", clip, "x", "-o", tmp_path / "a.mp4", *FAST, "--start", "1", "--end", "2.5")
    assert r.returncode == 0, r.stderr
    assert count_frames(tmp_path / "a.mp4") == 12
    r = imvedit("edit", clip, "x", "-o", tmp_path / "b.mp4", *FAST, "--max-frames", "5", "--json")
    assert r.returncode == 0, r.stderr
    assert count_frames(tmp_path / "b.mp4") == 5 and probe(tmp_path / "b.mp4").has_audio


def test_model_fps_runs_fewer_frames_and_keeps_the_rate(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", frames=16, rate="8")
    r = imvedit("edit", clip, "x", "-o", tmp_path / "out.mp4", *FAST, "--model-fps", "4", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["model_frames"] == 8 and result["frames"] == 16
    frames, info = read_video(tmp_path / "out.mp4")
    assert len(frames) == 16 and info.fps == 8


def test_windows_cover_the_clip_and_weights_sum_to_one():
    for length, window, overlap in [(21, 21, 4), (45, 21, 4), (15, 5, 2), (7, 5, 4), (12, 4, 0)]:
        windows = temporal_windows(length, window, overlap)
        assert windows[0][0] == 0 and windows[-1][1] == length
        assert all(e - s <= window for s, e in windows)
        assert all(b[0] <= a[1] - overlap for a, b in zip(windows, windows[1:], strict=False))
        total = torch.zeros(length)
        for (s, e), w in zip(windows, window_weights(windows, length), strict=True):
            total[s:e] += w
        assert torch.allclose(total, torch.ones(length))


def _seam_ratio(frames: np.ndarray, boundaries: list[int]) -> float:
    """Change across window boundaries over the median change between other neighbouring frames."""
    d = np.abs(np.diff(frames.astype(np.float64), axis=0)).reshape(len(frames) - 1, -1).mean(axis=1)
    at = [d[b - 1] for b in boundaries]  # d[b - 1]: frame b - 1 -> frame b
    rest = np.delete(d, [b - 1 for b in boundaries])
    return max(at) / np.median(rest)


@pytest.mark.slow
@pytest.mark.skipif(not (SHAPES_WAN_DIR / "model_index.json").is_file(), reason="needs the bundled shapes-wan base")
def test_long_clip_is_edited_in_windows_without_a_seam():
    """A clip of 3x the model's window, edited in overlapping windows, against the same windows cut hard.

    The bundled toy base, run as the text-to-video model it is (no adapter), draws coherent videos, so
    frames that share a window change smoothly; a hard cut lets two windows draw the same moment
    differently. The check: the change across each cut is within 1.5x the median change between other
    neighbouring frames (the objects move at constant speed, so no frame has a reason to change more than
    another); the hard-cut control must exceed it. With the bundled edit adapter the source holds every
    window to the same scene, so that even hard cuts hardly show (seam ratio 1.2), and the control could
    not fail: the windowing is checked on the base alone.
    """
    from imvedit.models.bases import SHAPES_WAN
    from imvedit.toy.world import render, sample_scene

    base, _ = load_model(SHAPES_WAN, None, torch.device("cpu"), torch.float32)
    window = base.window_frames
    video = render(sample_scene(np.random.default_rng(5), n_objects=2, world="hard"), frames=3 * window, size=64)

    pipe = ImVideoEditPipeline.from_base(base)
    pipe.set_progress_bar_config(disable=True)

    def edited(overlap):
        return pipe(video, "make it night", num_inference_steps=10, guidance_scale=3.0, window_size=window,
                    window_overlap=overlap, generator=torch.Generator().manual_seed(0)).frames  # fmt: skip

    hard_windows = pipe.latent_windows(len(video), window, 0)
    cuts = [s for (_, e), (s, _) in zip(hard_windows, hard_windows[1:], strict=False) if s == e]
    assert len(pipe.latent_windows(len(video), window, base.window_overlap)) >= 3 and cuts
    hard, blended = edited(0), edited(base.window_overlap)
    print("seam ratio: hard", _seam_ratio(hard, cuts), "blended", _seam_ratio(blended, cuts))
    assert _seam_ratio(hard, cuts) > 1.5  # the check can fail: hard cuts do show
    assert _seam_ratio(blended, cuts) <= 1.5


def _write_jobs(tmp_path, clips, corrupt):
    jobs = tmp_path / "jobs.jsonl"
    rows = [{"input": str(c), "prompt": "make it winter", "output": str(tmp_path / "out" / c.name)} for c in clips]
    rows.insert(2, {"input": str(corrupt), "prompt": "make it night", "output": str(tmp_path / "out" / "bad.mp4")})
    jobs.write_text("\n".join(json.dumps(r) for r in rows))
    return jobs


@pytest.mark.slow
def test_batch_with_a_corrupt_input(tmp_path):
    clips = [make_clip(tmp_path / f"c{i}.mp4", frames=5) for i in range(4)]
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(clips[0].read_bytes()[:600])  # truncated: the header without the frames
    (tmp_path / "out").mkdir()
    jobs = _write_jobs(tmp_path, clips, corrupt)
    r = imvedit("edit", "--jobs", jobs, *FAST, "--json")
    assert r.returncode == 1
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["status"] for x in records].count("ok") == 4
    (bad,) = [x for x in records if x["status"] == "failed"]
    assert "corrupt.mp4" in bad["error"] and "\n" not in bad["error"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(c.name for c in clips)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}

    again = imvedit("edit", "--jobs", jobs, *FAST, "--json")
    assert again.returncode == 1  # the corrupt job still fails
    statuses = [json.loads(line)["status"] for line in again.stdout.splitlines()]
    assert statuses.count("skipped") == 4 and statuses.count("failed") == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()} == mtimes


@pytest.mark.slow
def test_several_inputs_into_a_folder_and_sharding(tmp_path):
    clips = [make_clip(tmp_path / f"c{i}.mp4", frames=5, audio=False) for i in range(3)]
    r = imvedit("edit", *clips, "make it night", "-o", tmp_path / "out", *FAST, "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c0.mp4", "c1.mp4", "c2.mp4"]
    # Two "processes" of a distributed launch split the jobs between them: together they do each once.
    seen = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2"}
        r = imvedit("edit", *clips, "make it night", "-o", tmp_path / "sharded", *FAST, "--json", env=env)
        assert r.returncode == 0, r.stderr
        seen += [json.loads(line)["input"] for line in r.stdout.splitlines()]
    assert sorted(seen) == sorted(map(str, clips))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_killing_an_edit_leaves_no_output(tmp_path, sig):
    clip = make_clip(tmp_path / "in.mp4", size="640x480", frames=60, rate="24")
    out = tmp_path / "out.mp4"
    proc = popen_interruptible(
        [sys.executable, "-m", "imvedit", "edit", str(clip), "make it winter", "-o", str(out), *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob(".out.*")):
        time.sleep(0.01)  # wait until the output is being written
    assert proc.poll() is None, "the edit finished before it could be interrupted"
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))  # the temporary files are gone too


def test_model_comes_from_flags_then_environment_then_config_file(tmp_path, monkeypatch):
    from imvedit.editing.edit import resolve_model
    from imvedit.errors import UsageError

    config = tmp_path / "config.yaml"
    config.write_text("model: from-config\nadapter: a.safetensors\n")
    monkeypatch.setenv("IMVEDIT_CONFIG", str(config))
    monkeypatch.setenv("IMVEDIT_MODEL", "from-env")
    monkeypatch.delenv("IMVEDIT_ADAPTER", raising=False)
    assert resolve_model("flag", None) == ("flag", None, "flags")
    assert resolve_model(None, None) == ("from-env", None, "environment")
    monkeypatch.delenv("IMVEDIT_MODEL")
    assert resolve_model(None, None) == ("from-config", "a.safetensors", "config file")
    config.write_text("model: x\nlearning_rate: 3\n")
    with pytest.raises(UsageError, match="may only set"):
        resolve_model(None, None)
    config.write_text("model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        resolve_model(None, None)


def test_hostile_file_names_are_only_names(tmp_path):
    """Names that start with '-', hold spaces, quotes, a newline or ':' (ffmpeg's protocol separator)
    reach ffmpeg as file names, never as options or protocols; audio survives the trip."""
    name = "-y 'a' \"b\" concat:c\nd.mp4"
    src = tmp_path / name
    make_clip(tmp_path / "plain.mp4").rename(src)
    out = tmp_path / ("-out " + name)
    r = imvedit("edit", *FAST, "-o", f"./{out.name}", "--", f"./{name}", "make it winter", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    frames, info = read_video(out)
    assert frames.shape[0] == 9 and info.has_audio
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, out.name])
