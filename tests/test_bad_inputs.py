"""The bad-input corpus: every item is generated here, fed to the commands that read such a thing, and
must give a one-line message that says what to do, exit code 2 (usage) or 1 (runtime), no traceback,
and nothing written at the destination. docs/reliability.md lists the same items and messages."""

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import make_clip, randomize_adapter
from PIL import Image
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.models.adapter_file import save_adapter
from imvedit.models.bases import build_tiny_random
from imvedit.models.imvedit import ImVideoEditAdapter
from imvedit.video.io import ffmpeg_exe

runner = CliRunner()
FAST = ["--model", "tiny-random", "--steps", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    clip = make_clip(d / "good.mp4", frames=5)
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n")
    (d / "truncated.mp4").write_bytes(clip.read_bytes()[:600])
    subprocess.run(
        [ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", str(d / "audio_only.mp4")],
        check=True,
    )  # fmt: skip
    for name, size in (("huge.mp4", "10000x10000"), ("one_pixel.mp4", "1x1")):  # declared sizes at both ends
        subprocess.run(
            [ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i", f"color=c=red:size={size}:d=0.5", "-r", "8",
             "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p", str(d / name)],
            check=True,
        )  # fmt: skip
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    Image.fromarray(np.full((32, 32), 90, np.uint8), "L").save(d / "gray.png")
    Image.new("CMYK", (32, 32), (10, 200, 30, 0)).save(d / "cmyk.jpg")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(d / "one_pixel.png")
    (d / "no_dir").mkdir()
    base = build_tiny_random()
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(base.transformer, rank=2))
    good_adapter = save_adapter(adapter, d / "adapter.safetensors", base.identity)
    raw = good_adapter.read_bytes()
    (d / "adapter_truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[-3] ^= 1
    (d / "adapter_flipped.safetensors").write_bytes(bytes(flipped))
    other = dict(base.transformer.config)
    other_identity = {**base.identity, "fingerprint": "0" * 16, "name": "another-base"}
    save_adapter(adapter, d / "adapter_other_base.safetensors", other_identity)
    torch.save({"w": torch.zeros(2)}, d / "adapter_pickle.safetensors")
    del other
    return d


def check_refused(result, code: int, words: str, dest=None):
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert words.lower() in err.lower(), err
    assert "Traceback" not in result.output
    if dest is not None:
        assert not dest.exists()
        assert not any(p.name.startswith(f".{dest.stem}") for p in dest.parent.iterdir())


def edit(*args):
    return runner.invoke(app, ["edit", *FAST, *map(str, args)])


@pytest.mark.parametrize(
    "name, code, words",
    [
        ("missing.mp4", 2, "does not exist"),
        ("empty.mp4", 2, "empty"),
        ("text.mp4", 2, "no video stream"),
        ("truncated.mp4", 2, "video"),
        ("audio_only.mp4", 2, "no video stream"),
        ("no_dir", 2, "directory"),
        ("huge.mp4", 2, "declares a 10000x10000 frame"),
    ],
)
def test_edit_refuses_unreadable_inputs(corpus, tmp_path, name, code, words):
    out = tmp_path / "out.mp4"
    check_refused(edit(corpus / name, "make it winter", "-o", out), code, words, out)


@pytest.mark.parametrize("name", ["alpha.png", "gray.png", "cmyk.jpg", "one_pixel.png"])
def test_edit_takes_unusual_but_valid_images(corpus, tmp_path, name):
    out = tmp_path / ("out" + (".jpg" if name.endswith(".jpg") else ".png"))
    r = edit(corpus / name, "make it red", "-o", out)
    assert r.exit_code == 0, r.output
    with Image.open(out) as im, Image.open(corpus / name) as src:
        assert im.size == src.size and im.mode == "RGB"  # alpha dropped, modes converted, size kept


def test_edit_takes_a_one_pixel_video(corpus, tmp_path):
    r = edit(corpus / "one_pixel.mp4", "make it red", "-o", tmp_path / "out.mp4")
    assert r.exit_code == 0, r.output
    from imvedit.video.io import read_video

    frames, info = read_video(tmp_path / "out.mp4")
    source, _ = read_video(corpus / "one_pixel.mp4")
    assert (info.width, info.height) == (1, 1) and frames.shape == source.shape


def test_edit_refuses_bad_outputs_and_prompts(corpus, tmp_path):
    clip = corpus / "good.mp4"
    before = clip.read_bytes()
    check_refused(edit(clip, "make it winter", "-o", clip), 2, "is the input")
    assert clip.read_bytes() == before  # the input is untouched
    check_refused(edit(clip, "x", "-o", tmp_path / "nowhere" / "out.mp4"), 2, "does not exist")
    out = tmp_path / "out.mp4"
    check_refused(edit(clip, "   ", "-o", out), 2, "prompt is empty", out)
    check_refused(edit(clip, "a" * 100_000, "-o", out), 2, "100000 characters", out)
    check_refused(edit(clip, "x", "-o", tmp_path / "out.png"), 2, "matching extension")


def test_edit_takes_right_to_left_and_odd_unicode_prompts(corpus, tmp_path):
    out = tmp_path / "out.mp4"
    r = edit(corpus / "good.mp4", "اجعلها شتاءً \u202e ✨ make it winter", "-o", out)
    assert r.exit_code == 0, r.output
    assert out.exists()


def test_non_utf8_prompt_from_a_shell_is_a_usage_error(corpus, tmp_path):
    import os
    import sys

    out = tmp_path / "out.mp4"
    # a shell passes raw bytes; Python decodes invalid UTF-8 to surrogates
    cmd = [sys.executable.encode(), b"-m", b"imvedit", b"edit", *[a.encode() for a in FAST], str(corpus / "good.mp4").encode(), b"make it \xff\xfe winter", b"-o", str(out).encode()]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    err = r.stderr.decode(errors="replace").strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "UTF-8" in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "name, words",
    [
        ("adapter_truncated.safetensors", "not a readable safetensors"),
        ("adapter_flipped.safetensors", "corrupted"),
        ("adapter_other_base.safetensors", "was trained for base 'another-base'"),
        ("adapter_pickle.safetensors", "not a readable safetensors"),
    ],
)
def test_edit_refuses_bad_adapters(corpus, tmp_path, name, words):
    out = tmp_path / "out.mp4"
    r = runner.invoke(
        app,
        [
            "edit",
            "--model",
            "tiny-random",
            "--adapter",
            str(corpus / name),
            str(corpus / "good.mp4"),
            "x",
            "-o",
            str(out),
        ],
    )
    check_refused(r, 2, words, out)


def _manifest(root, rows):
    root.mkdir()
    Image.new("RGB", (32, 32)).save(root / "a.png")
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


@pytest.mark.parametrize(
    "rows, words",
    [
        ([{"source": "a.png", "instruction": "x"}], "column"),
        ([{"source": "../../etc/passwd", "target": "a.png", "instruction": "x"}], "outside the dataset folder"),
        ([{"source": 5, "target": "a.png", "instruction": "x"}], "no usable pairs"),
    ],
)
def test_prepare_refuses_bad_manifests(tmp_path, rows, words):
    src = _manifest(tmp_path / "ds", rows)
    out = tmp_path / "out"
    r = runner.invoke(app, ["prepare", str(src), "-o", str(out)])
    check_refused(r, 2, words, out)


def test_train_refuses_bad_configs(tmp_path, pairs_folder):
    pairs = tmp_path / "prepared"
    assert runner.invoke(app, ["prepare", str(pairs_folder), "-o", str(pairs)]).exit_code == 0
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 3\n")
    check_refused(
        runner.invoke(app, ["train", str(pairs), "-o", str(tmp_path / "run"), "--config", str(cfg)]),
        2,
        "learning_rate",
        tmp_path / "run",
    )
    cfg.write_text("epochs: [1, 2\n")
    check_refused(
        runner.invoke(app, ["train", str(pairs), "-o", str(tmp_path / "run"), "--config", str(cfg)]),
        2,
        "yaml",
        tmp_path / "run",
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    (d / "empty_dir").mkdir()
    for name, data in (("empty.parquet", b""), ("text.parquet", b"hello\n"), ("empty.mp4", b""), ("text.mp4", b"hello\n"),
                       ("empty.safetensors", b""), ("text.safetensors", b"hello\n"), ("a_file", b"x")):  # fmt: skip
        (d / name).write_bytes(data)
    return d


@pytest.mark.parametrize(
    "args, words",
    [
        (["prepare", "{d}/missing", "-o", "{o}"], "does not exist"),
        (["prepare", "{d}/empty.parquet", "-o", "{o}"], "could not read"),
        (["prepare", "{d}/text.parquet", "-o", "{o}"], "could not read"),
        (["prepare", "{d}/empty_dir", "-o", "{o}"], "holds no manifest"),
        (["train", "{d}/missing", "-o", "{o}"], "does not exist"),
        (["train", "{d}/a_file", "-o", "{o}"], "is a file"),
        (["train", "{d}/empty_dir", "-o", "{o}"], "not a prepared pairs folder"),
        (["eval", "--pred", "{d}/missing.mp4", "--source", "{d}/text.mp4"], "does not exist"),
        (["eval", "--pred", "{d}/empty.mp4", "--source", "{d}/empty.mp4"], "empty"),
        (["eval", "--pred", "{d}/text.mp4", "--source", "{d}/text.mp4"], "no video stream"),
        (["eval", "--manifest", "{d}/text.mp4", "--report", "{o}"], "holds no rows"),
        (["export", "{d}/missing.safetensors", "-o", "{o}"], "does not exist"),
        (["export", "{d}/empty.safetensors", "-o", "{o}"], "not a readable safetensors"),
        (["export", "{d}/text.safetensors", "-o", "{o}"], "not a readable safetensors"),
        (["export", "{d}/empty_dir", "-o", "{o}"], "does not exist"),
    ],
)
def test_every_command_refuses_missing_empty_and_wrong_files(files, tmp_path, args, words):
    out = tmp_path / "out"
    r = runner.invoke(app, [a.format(d=files, o=out) for a in args])
    check_refused(r, 2, words)
    assert not out.exists() or args[0] == "eval"  # eval --manifest may make its report folder, never its results
    assert not (out / "metrics.json").exists()
