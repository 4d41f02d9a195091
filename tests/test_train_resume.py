"""Training survives being killed: a resumed run ends with the adapter an uninterrupted run makes."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import popen_interruptible
from safetensors.torch import load_file

from imvedit.data.prepare import PrepareConfig, prepare
from imvedit.training.config import resolve_checkpoint

COMMON = ["--model", "tiny-random", "--max-steps", "12", "--batch-size", "2", "--lr", "1e-3", "--seed", "1"]


def train_cmd(pairs, run, *extra):
    return [sys.executable, "-m", "imvedit", "train", str(pairs), "-o", str(run), *COMMON, *extra]


def same_adapter(a, b):
    ta = load_file(str(a / "adapter.safetensors"))
    tb = load_file(str(b / "adapter.safetensors"))
    assert ta.keys() == tb.keys()
    return max((ta[k] - tb[k]).abs().max().item() for k in ta)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "pairs"
    prepare(PrepareConfig("toy", out, limit=10, seed=0, toy_size=32))  # 5 batches per epoch: resumes mid-epoch
    return out


@pytest.fixture(scope="module")
def straight(pairs, tmp_path_factory):
    run = tmp_path_factory.mktemp("s") / "run"
    subprocess.run(train_cmd(pairs, run), check=True, capture_output=True)
    return run


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_the_same_adapter(pairs, straight, tmp_path, sig):
    run = tmp_path / "run"
    proc = popen_interruptible(
        train_cmd(pairs, run, "--save-every", "3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    # the checkpoint the program itself would resume from: a folder still being staged does not count
    while time.time() < deadline and proc.poll() is None and resolve_checkpoint(run, "latest") is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the run finished before it could be killed"
    assert not (run / "adapter.safetensors").exists()  # no final adapter from an unfinished run
    saved = json.loads((resolve_checkpoint(run, "latest") / "state.json").read_text())
    assert 0 < saved["step"] < 12
    r = subprocess.run(train_cmd(pairs, run, "--save-every", "3", "--resume", "--json"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 12
    assert same_adapter(run, straight) < 1e-5
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == list(range(1, 13))  # one line per step, none repeated
    straight_log = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    assert torch.allclose(
        torch.tensor([x["loss"] for x in log]), torch.tensor([x["loss"] for x in straight_log]), rtol=1e-4
    )


def test_resume_without_a_checkpoint_is_a_usage_error(pairs, tmp_path):
    r = subprocess.run(train_cmd(pairs, tmp_path / "run", "--resume"), capture_output=True, text=True)
    assert r.returncode == 2 and "No checkpoint" in r.stderr and "\n" not in r.stderr.strip()


def test_init_starts_from_a_finished_adapter(pairs, straight, tmp_path):
    """--init: the run starts from the given adapter's weights, not a fresh init. At a learning rate too small
    to move them the result is that adapter; a fresh run at the same rate is not."""
    tiny_lr = ["--max-steps", "2", "--lr", "1e-12"]
    fresh, warm = tmp_path / "fresh", tmp_path / "warm"
    for run, extra in ((fresh, []), (warm, ["--init", str(straight)])):
        r = subprocess.run(train_cmd(pairs, run, *extra) + tiny_lr, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    assert same_adapter(warm, straight) < 1e-6
    assert same_adapter(fresh, straight) > 1e-3
    (tmp_path / "other.yaml").write_text("adapter:\n  rank: 3\n")
    r = subprocess.run(
        train_cmd(pairs, tmp_path / "bad", "--init", str(straight), "--config", str(tmp_path / "other.yaml")),
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "other adapter switches (rank)" in r.stderr and "\n" not in r.stderr.strip()
    assert not (tmp_path / "bad").exists()  # refused before the run folder is made
    r = subprocess.run(
        train_cmd(pairs, tmp_path / "none", "--init", str(tmp_path / "nope")), capture_output=True, text=True
    )
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_init_may_gain_frame_position(pairs, straight, tmp_path):
    """A later stage may switch frame_position on: its new layers start at zero, so the run starts as the
    init (at a rate too small to move anything the result is the init, plus zeroed position layers), and
    `new_layer_lr` trains them at their own rate."""

    def warm(name, config_text, init=straight):
        (tmp_path / f"{name}.yaml").write_text(config_text)
        cmd = train_cmd(pairs, tmp_path / name, "--init", str(init), "--config", str(tmp_path / f"{name}.yaml"))
        return subprocess.run([*cmd, "--max-steps", "2", "--lr", "1e-12"], capture_output=True, text=True)

    r = warm("pos", "adapter:\n  frame_position: true\n")
    assert r.returncode == 0, r.stderr
    init = load_file(str(straight / "adapter.safetensors"))
    gained = load_file(str(tmp_path / "pos" / "adapter.safetensors"))
    new = sorted(gained.keys() - init.keys())
    assert new and all("position" in k for k in new)
    assert all(gained[k].abs().max() < 1e-9 for k in new)  # zero, but for two steps at lr 1e-12
    assert max((gained[k] - init[k]).abs().max().item() for k in init) < 1e-6
    r = warm("faster", "adapter:\n  frame_position: true\nnew_layer_lr: 1.0e-2\n")
    assert r.returncode == 0, r.stderr
    moved = load_file(str(tmp_path / "faster" / "adapter.safetensors"))
    assert all(moved[k].abs().max() > 1e-3 for k in new)  # the new layers moved; the rest, at 1e-12, did not
    assert max((moved[k] - init[k]).abs().max().item() for k in init) < 1e-6
    r = subprocess.run(
        train_cmd(pairs, tmp_path / "alone", "--config", str(tmp_path / "faster.yaml")), capture_output=True, text=True
    )  # no init, so no new layers for the rate to apply to
    assert r.returncode == 2 and "set with init" in r.stderr and not (tmp_path / "alone").exists()
    r = warm("same", "adapter:\n  frame_position: true\nnew_layer_lr: 1.0e-2\n", init=tmp_path / "pos")
    assert r.returncode == 2 and "has all of this run's" in r.stderr and not (tmp_path / "same").exists()
    r = warm("off", "adapter:\n  frame_position: false\n", init=tmp_path / "pos")  # dropping it is refused
    assert r.returncode == 2 and "other adapter switches (frame_position)" in r.stderr


def test_warmup_and_cosine_schedule(pairs, tmp_path):
    r = subprocess.run(
        train_cmd(pairs, tmp_path / "run", "--warmup-steps", "4", "--lr-schedule", "cosine"), capture_output=True
    )
    assert r.returncode == 0, r.stderr
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(2e-3 / 4 * 1) and lrs[0] < lrs[3]  # the first of 4 warm-up steps, then rising
    assert lrs[:4] == sorted(lrs[:4]) and lrs[4:] == sorted(lrs[4:], reverse=True) and lrs[-1] < 1e-4


def test_two_processes_train_one_adapter(pairs, tmp_path):
    """Data parallel on the CPU (gloo), launched by torchrun as `accelerate launch` would on GPUs:
    each process takes half of every epoch's batches and only the main process writes the run."""
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "imvedit", "train", str(pairs),
         "-o", str(run), "--model", "tiny-random", "--max-steps", "4", "--batch-size", "2", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (summary,) = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]  # one report, from rank 0
    assert summary["processes"] == 2 and summary["pairs_seen"] == 16
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(x["processes"] == 2 and x["pairs_per_s_per_process"] > 0 for x in log)
    from imvedit.models.adapter_file import load_adapter
    from imvedit.models.bases import load_base

    adapter, meta = load_adapter(run / "adapter.safetensors", load_base("tiny-random").fingerprint)
    assert meta["training"]["steps"] == 4


def test_validation_pictures_and_model_card(pairs, tmp_path):
    from PIL import Image

    run = tmp_path / "run"
    r = subprocess.run(train_cmd(pairs, run, "--validate-every", "6"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pictures = sorted(p.name for p in (run / "validation").iterdir())
    assert pictures == ["step-00000006.png", "step-00000012.png"]
    with Image.open(run / "validation" / pictures[0]) as im:
        import numpy as np

        assert im.width == im.height  # 4 pairs in rows, each: source, edit, target, gate
        assert np.asarray(im).std() > 10  # pictures, not a blank sheet
    card = (run / "README.md").read_text()
    assert "tiny-random" in card and "| training steps | 12 × batch 2 × 1 process(es) |" in card
    # `imvedit export` writes the same card: only its title, its own version and the run's files differ
    from imvedit import __version__
    from imvedit.export import ExportConfig, export

    export(ExportConfig(run, tmp_path / "exported"))
    exported = (tmp_path / "exported" / "README.md").read_text()
    only_run = [x for x in card.splitlines() if x not in exported.splitlines()]
    only_export = [x for x in exported.splitlines() if x not in card.splitlines()]
    assert only_run[0] == "# ImVideoEdit adapter" and only_export[0] == "# ImVideoEdit adapter (adapter export)"
    assert only_export[1:] == [only_run[1] + f" Exported with imvedit {__version__}."]
    assert only_run[2:] == ["The full training config is in `config.yaml`, the loss per step in `log.jsonl`."]


def test_ema_weights_are_written_resumed_and_exported(pairs, straight, tmp_path):
    """--ema-decay writes the averaged adapter beside the trained one; a run resumed from a checkpoint
    ends with the same average (the EMA state is in the checkpoint); export --ema picks it."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    r = subprocess.run(
        train_cmd(pairs, whole, "--ema-decay", "0.9", "--save-every", "6"), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    # the EMA does not change the training itself
    assert same_adapter(whole, straight) < 1e-6
    ema = load_file(str(whole / "adapter_ema.safetensors"))
    last = load_file(str(whole / "adapter.safetensors"))
    assert max((ema[k] - last[k]).abs().max().item() for k in ema) > 1e-4  # an average, not the last weights
    # resume from step 6 in a fresh folder: same average at step 12
    (part / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(sorted((whole / "checkpoints").iterdir())[0], part / "checkpoints" / "checkpoint-00000006")
    r = subprocess.run(train_cmd(pairs, part, "--ema-decay", "0.9", "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    resumed = load_file(str(part / "adapter_ema.safetensors"))
    assert max((ema[k] - resumed[k]).abs().max().item() for k in ema) < 1e-5
    r = subprocess.run(
        [sys.executable, "-m", "imvedit", "export", str(whole), "--ema", "-o", str(tmp_path / "e.safetensors")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    exported = load_file(str(tmp_path / "e.safetensors"))
    assert all(torch.equal(exported[k], ema[k]) for k in ema)
    r = subprocess.run(
        [sys.executable, "-m", "imvedit", "export", str(straight), "--ema", "-o", str(tmp_path / "f.safetensors")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--ema-decay" in r.stderr and not (tmp_path / "f.safetensors").exists()


def test_fused_adamw_trains_the_same_adapter_and_8bit_needs_bitsandbytes(pairs, straight, tmp_path):
    r = subprocess.run(
        train_cmd(pairs, tmp_path / "fused", "--optimizer", "adamw-fused"), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert same_adapter(tmp_path / "fused", straight) < 1e-4  # the same update rule, another kernel
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        r = subprocess.run(train_cmd(pairs, tmp_path / "b", "--optimizer", "adamw8bit"), capture_output=True, text=True)
        assert r.returncode == 2 and "needs bitsandbytes" in r.stderr and not (tmp_path / "b").exists()


def test_a_diverged_loss_is_a_training_failure_not_a_usage_error(pairs, tmp_path, monkeypatch):
    """Exit 1 (the run failed), one line that says what to try, and no adapter written."""
    from typer.testing import CliRunner

    from imvedit.cli.main import app
    from imvedit.training import train as train_module

    monkeypatch.setattr(
        train_module, "flow_matching_loss", lambda *a, **kw: torch.tensor(float("nan"), requires_grad=True)
    )
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", str(pairs), "-o", str(run), "--model", "tiny-random", "--max-steps", "2"])
    assert r.exit_code == 1, r.output
    assert "The loss became nan at step 1" in r.output and "--lr" in r.output
    assert not (run / "adapter.safetensors").exists()
