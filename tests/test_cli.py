"""The real CLI, end to end, on tiny-random: prepare -> train -> edit -> export -> eval."""

import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from typer.testing import CliRunner

from imvedit import __version__
from imvedit.cli.main import app
from imvedit.video.io import read_video

runner = CliRunner()


def imvedit(*args, cwd=None):
    """Run the installed console entry point in a fresh process, as a shell script would."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "imvedit", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env
    )


def strict_json(text: str):
    """Parse as jq or JavaScript would: Infinity and NaN are not JSON."""

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_machine_output_has_no_infinity_or_nan():
    from imvedit import jsonutil

    text = jsonutil.dumps({"psnr": float("inf"), "rows": [{"x": float("nan"), "y": -float("inf")}, 1.5], "n": 3})
    assert strict_json(text) == {"psnr": None, "rows": [{"x": None, "y": None}, 1.5], "n": 3}


def test_help_lists_the_five_commands_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in ("prepare", "train", "edit", "eval", "export"):
        assert cmd in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_end_to_end_prepare_train_edit_export(tmp_path, pairs_folder, clip):
    r = imvedit("prepare", pairs_folder, "-o", tmp_path / "prepared", "--limit", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert strict_json(r.stdout)["kept"] == 3

    r = imvedit(
        "train", tmp_path / "prepared", "-o", tmp_path / "run", "--model", "tiny-random", "--max-steps", "2", "--json"
    )
    assert r.returncode == 0, r.stderr
    summary = strict_json(r.stdout)
    assert summary["steps"] == 2
    for name in ("adapter.safetensors", "config.yaml", "log.jsonl", "summary.json"):
        assert (tmp_path / "run" / name).is_file()

    # --model is omitted: the adapter names its base
    r = imvedit(
        "edit",
        clip,
        "invert the colours",
        "-o",
        tmp_path / "out.mp4",
        "--adapter",
        tmp_path / "run",
        "--steps",
        "2",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert strict_json(r.stdout)["frames"] == 9
    frames_in, info_in = read_video(clip)
    frames_out, info_out = read_video(tmp_path / "out.mp4")
    assert frames_out.shape == frames_in.shape  # 9 frames, 64x48
    assert info_out.fps == info_in.fps == Fraction(8)
    assert info_out.has_audio

    r = imvedit("export", tmp_path / "run", "-o", tmp_path / "adapter.safetensors", "--json")
    assert r.returncode == 0, r.stderr
    assert strict_json(r.stdout)["base"] == "tiny-random"

    # the exported adapter gives the same edit as the run's own
    r = imvedit(
        "edit",
        clip,
        "invert the colours",
        "-o",
        tmp_path / "out2.mp4",
        "--adapter",
        tmp_path / "adapter.safetensors",
        "--steps",
        "2",
    )
    assert r.returncode == 0, r.stderr
    assert (read_video(tmp_path / "out2.mp4")[0] == frames_out).all()

    r = imvedit("eval", "--pred", tmp_path / "out.mp4", "--source", clip, "--json")
    assert r.returncode == 0, r.stderr
    metrics = strict_json(r.stdout)
    assert metrics["clips"] == 1 and metrics["per_clip"][0]["frames"] == 9 and metrics["overall"]["flicker"] >= 0

    # a copy of the source: its PSNR against the source is +inf, which strict JSON writes as null
    r = imvedit("eval", "--pred", clip, "--source", clip, "--json")
    assert r.returncode == 0, r.stderr
    assert strict_json(r.stdout)["overall"]["psnr_vs_source"] is None


def test_edit_an_image_gives_an_image(tmp_path):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "in.png")
    result = runner.invoke(
        app,
        [
            "edit",
            str(tmp_path / "in.png"),
            "make it blue",
            "-o",
            str(tmp_path / "out.png"),
            "--model",
            "tiny-random",
            "--steps",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (40, 30)


def test_flow_shift_changes_the_sampler_and_a_bad_one_is_refused(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "in.png")

    def edit(name, *flags):
        args = ["edit", str(tmp_path / "in.png"), "make it blue", "-o", str(tmp_path / name), "--model", "tiny-random"]
        return runner.invoke(app, [*args, "--steps", "2", *flags])

    for name, flags in (("base.png", ()), ("again.png", ()), ("shift12.png", ("--flow-shift", "12"))):
        assert edit(name, *flags).exit_code == 0
    pixels = {n: np.asarray(Image.open(tmp_path / n), dtype=np.int16) for n in ("base.png", "again.png", "shift12.png")}
    assert np.array_equal(pixels["base.png"], pixels["again.png"])  # the shift, not the run, makes the difference
    assert np.abs(pixels["base.png"] - pixels["shift12.png"]).max() > 0
    bad = edit("bad.png", "--flow-shift", "0")
    assert bad.exit_code == 2 and "--flow-shift must be positive" in bad.output
    assert not (tmp_path / "bad.png").exists()


def test_a_second_guidance_scale_below_a_boundary_changes_the_edit_and_bad_ones_are_refused(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "in.png")

    def edit(name, *flags):
        args = ["edit", str(tmp_path / "in.png"), "make it blue", "-o", str(tmp_path / name), "--model", "tiny-random"]
        return runner.invoke(app, [*args, "--steps", "3", "--guidance", "3", *flags])

    interval = ("--guidance-2", "1", "--guidance-boundary", "0.5")
    for name, flags in (
        ("full.png", ()),
        ("same.png", ("--guidance-2", "3", *interval[2:])),
        ("interval.png", interval),
    ):
        result = edit(name, *flags)
        assert result.exit_code == 0, result.output
    pixels = {n: np.asarray(Image.open(tmp_path / n), dtype=np.int16) for n in ("full.png", "same.png", "interval.png")}
    assert np.array_equal(pixels["full.png"], pixels["same.png"])
    assert np.abs(pixels["full.png"] - pixels["interval.png"]).max() > 0
    for name, flags, message in (
        ("one-expert.png", ("--guidance-2", "1"), "needs a boundary"),  # tiny-random has one transformer
        ("range.png", (*interval[:2], "--guidance-boundary", "1"), "--guidance-boundary must be a sigma in (0, 1)"),
        ("alone.png", ("--guidance-boundary", "0.5"), "--guidance-2"),
    ):
        bad = edit(name, *flags)
        assert bad.exit_code == 2 and message in bad.output, bad.output
        assert not (tmp_path / name).exists()


def _one_line_error(result, code):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.stderr
    return lines[0]


def test_bad_input_gets_a_one_line_error_and_writes_nothing(tmp_path, clip, pairs_folder):
    out = tmp_path / "out.mp4"
    line = _one_line_error(imvedit("edit", tmp_path / "missing.mp4", "x", "-o", out, "--model", "tiny-random"), 2)
    assert "does not exist" in line
    (tmp_path / "notes.mp4").write_text("not a video")
    line = _one_line_error(imvedit("edit", tmp_path / "notes.mp4", "x", "-o", out, "--model", "tiny-random"), 2)
    assert "no video stream" in line
    line = _one_line_error(imvedit("edit", clip, "x", "-o", clip, "--model", "tiny-random", "--overwrite"), 2)
    assert "is the input" in line
    line = _one_line_error(imvedit("train", tmp_path / "nowhere", "-o", tmp_path / "run"), 2)
    assert "imvedit prepare" in line
    assert not out.exists() and not (tmp_path / "run").exists()


def test_an_adapter_for_another_base_is_refused_by_the_cli(tmp_path, clip, tiny_base):
    from imvedit.models.adapter_file import save_adapter
    from imvedit.models.imvedit import ImVideoEditAdapter

    identity = dict(tiny_base.identity, fingerprint="0123456789abcdef")
    save_adapter(ImVideoEditAdapter.for_base(tiny_base.transformer), tmp_path / "other.safetensors", identity)
    r = imvedit(
        "edit",
        clip,
        "x",
        "-o",
        tmp_path / "out.mp4",
        "--model",
        "tiny-random",
        "--adapter",
        tmp_path / "other.safetensors",
    )
    assert "was trained for base" in _one_line_error(r, 2)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk"])
def test_prepare_reads_local_hugging_face_datasets(tmp_path, layout):
    import datasets
    from PIL import Image

    images = [Image.new("RGB", (48, 32), (i * 40, 0, 0)) for i in range(3)]
    ds = datasets.Dataset.from_dict(
        {
            "original_image": images,
            "edited_image": images[::-1],
            "edit_prompt": ["a", "b", ""],
            "edited_prompt": ["x", "y", "z"],
        },
        features=datasets.Features(
            {
                "original_image": datasets.Image(),
                "edited_image": datasets.Image(),
                "edit_prompt": datasets.Value("string"),
                "edited_prompt": datasets.Value("string"),
            }
        ),
    )
    src = tmp_path / "ds"
    if layout == "parquet":
        src.mkdir()
        ds.to_parquet(str(src / "train.parquet"))
    else:
        ds.save_to_disk(str(src))
    result = runner.invoke(app, ["prepare", str(src), "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kept"] == 2 and summary["dropped"] == {"empty_instruction": 1}
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == ["x", "y"]
