"""Each command hands the library the config its flags say: the library call is replaced by one that records
its argument, so these run in a moment and check the CLI layer alone (the other tests run it end to end)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imvedit.cli.main import app

runner = CliRunner()


@pytest.fixture
def recorded(monkeypatch):
    """Replace a library function with a recorder returning `result`; returns the calls made."""
    calls = []

    def install(module, name, result):
        def record(config, *args, **kwargs):
            calls.append(config)
            return result

        monkeypatch.setattr(module, name, record)
        return calls

    return install


def test_edit_hands_its_flags_to_the_library(recorded, tmp_path):
    import imvedit.editing.edit as editing

    calls = recorded(editing, "edit", {"output": "o.mp4", "frames": 3, "seconds": 0.1})
    args = ["edit", "in.mp4", "make it winter", "-o", str(tmp_path / "o.mp4"), "--model", "tiny-random",
            "--adapter", "a.safetensors", "--steps", "7", "--seed", "3", "--strength", "0.6", "--offload", "group",
            "--lora", "x.safetensors:0.5", "--overwrite", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = calls
    assert (config.input, config.prompt, config.output) == (Path("in.mp4"), "make it winter", tmp_path / "o.mp4")
    assert (config.model, config.adapter, config.steps, config.seed) == ("tiny-random", "a.safetensors", 7, 3)
    assert (config.strength, config.offload, config.lora, config.overwrite) == (
        0.6,
        "group",
        ["x.safetensors:0.5"],
        True,
    )
    assert config.guidance is None and config.source_cache == "auto"  # unset flags: the library's defaults
    assert json.loads(result.stdout)["frames"] == 3


def test_export_hands_its_flags_to_the_library(recorded, tmp_path):
    import imvedit.export as export

    calls = recorded(export, "export", {"parameters": 10, "base": "tiny-random"})
    out = tmp_path / "x"
    result = runner.invoke(app, ["export", "run", "-o", str(out), "-f", "diffusers", "--dtype", "bf16", "--ema",
                                 "--link-base", "--overwrite", "--model", "m"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = calls
    assert (config.source, config.output, config.format, config.dtype) == (Path("run"), out, "diffusers", "bf16")
    assert (config.model, config.link_base, config.ema, config.overwrite) == ("m", True, True, True)


def test_eval_bench_hands_its_flags_to_the_library(recorded):
    import imvedit.evaluation.toy_bench as toy_bench

    empty = {"overall": dict.fromkeys(toy_bench.BENCH_METRICS) | {"clips": 0}, "per_kind": {}, "clips": 0,
             "seconds": 0}  # fmt: skip
    calls = recorded(toy_bench, "run_toy_bench", empty)
    args = ["eval", "--bench", "toy", "--clips", "5", "--seed", "2", "--frames", "9", "--edits", "recolor,remove",
            "--steps", "4", "--model", "m", "--adapter", "a", "--world", "simple", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = calls
    assert (config.clips, config.seed, config.frames, config.edits) == (5, 2, 9, ("recolor", "remove"))
    assert (config.steps, config.model, config.adapter, config.world) == (4, "m", "a", "simple")
    assert json.loads(result.stdout)["clips"] == 0


def test_shared_options_read_the_same_in_every_command():
    """--json, --overwrite and --model are declared once (cli/_options.py): the same words in every --help."""
    helps = {c: runner.invoke(app, [c, "--help"], env={"COLUMNS": "400"}).output for c in ("prepare", "train",
             "edit", "eval", "export")}  # fmt: skip

    def line(text, flag):
        return next(x for x in text.splitlines() if f" {flag} " in x).split("│")[1].split(flag, 1)[1].split()

    for flag, commands in (("--json", helps), ("--overwrite", ("prepare", "train", "edit", "export"))):
        wordings = {" ".join(line(helps[c], flag)) for c in commands}
        assert len(wordings) == 1, (flag, wordings)
    assert all("a diffusers Wan folder, a hub id" in helps[c] for c in helps)
    assert "(default: 5)" in helps["train"]  # a default in the help text is shown, not eaten as markup


def test_prepare_hands_its_flags_to_the_library(recorded, tmp_path):
    import imvedit.data.pairs as pairs

    calls = recorded(pairs, "prepare", {"kept": 3, "dropped": {}})
    args = ["prepare", "toy", "-o", str(tmp_path / "p"), "--limit", "3", "--seed", "4", "--toy-frames", "17",
            "--world", "simple", "--cache", "--model", "shapes-wan", "--overwrite", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = calls
    assert (config.source, config.output, config.limit, config.seed) == ("toy", tmp_path / "p", 3, 4)
    assert (config.cache_model, config.overwrite, config.toy_world, config.toy_frames) == (
        "shapes-wan",
        True,
        "simple",
        17,
    )


def test_train_hands_flags_over_its_config_file_to_the_library(recorded, tmp_path):
    import imvedit.training.train as training

    summary = {"steps": 2, "final_loss": 0.5, "output": str(tmp_path / "r")}
    calls = recorded(training, "train", summary)
    (tmp_path / "c.yaml").write_text("lr: 0.002\nbatch_size: 4\nadapter:\n  rank: 8\n")
    (tmp_path / "pairs").mkdir()
    args = ["train", str(tmp_path / "pairs"), "-o", str(tmp_path / "r"), "--config", str(tmp_path / "c.yaml"),
            "--batch-size", "2", "--max-steps", "2", "--model", "tiny-random", "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = calls
    assert (config.lr, config.batch_size, config.max_steps, config.model) == (0.002, 2, 2, "tiny-random")  # flags win
    assert config.adapter.rank == 8 and config.pairs_dir == tmp_path / "pairs"
