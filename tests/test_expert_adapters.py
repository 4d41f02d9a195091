"""Wan2.2-A14B's two experts, on the training and sharing side: `train --expert high|low|both` writes one
adapter per expert as a pair of files that name each other, each trained on timesteps of its own expert
only; export and --inspect carry and show both; a pair that does not hold together is refused, and so is
an adapter for the other kind of base."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_a14b_folder, make_pairs_folder
from safetensors.torch import load_file

from imvedit.errors import UsageError
from imvedit.models.adapter_file import read_adapter_metadata
from imvedit.models.bases import load_base
from imvedit.models.loading import load_model
from imvedit.training.flow_matching import expert_sigma_range, pick_expert, sample_sigmas

CONFIGS = Path(__file__).parent / "data" / "wan_configs"
BOUNDARY = 0.875
# Seed 1 draws the experts low, high, low, low... for the first steps of `--expert both` (see pick_expert),
# so two steps train each expert once.
STEPS = ["--max-steps", "2", "--seed", "1"]


def imvedit(*args, ok=True):
    r = subprocess.run([sys.executable, "-m", "imvedit", *map(str, args)], capture_output=True, text=True)
    if ok:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def a14b(tmp_path_factory):
    return make_a14b_folder(tmp_path_factory.mktemp("base") / "a14b")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    pairs = make_pairs_folder(root / "pairs")
    imvedit("prepare", pairs, "-o", root / "prepared", "--max-area", 32 * 32)
    return root / "prepared"


@pytest.fixture(scope="module")
def both(a14b, prepared, tmp_path_factory):
    run = tmp_path_factory.mktemp("both") / "run"
    imvedit("train", prepared, "-o", run, "--model", a14b, *STEPS)  # --expert both is the default
    return run


def test_sigmas_drawn_for_an_expert_lie_in_its_range_with_the_runs_distribution():
    everything = sample_sigmas(200_000, 3.0, torch.Generator().manual_seed(0))
    for expert in ("high", "low"):
        low, high = expert_sigma_range(expert, BOUNDARY)
        drawn = sample_sigmas(50_000, 3.0, torch.Generator().manual_seed(1), (low, high))
        assert drawn.min() >= low and drawn.max() < high
        inside = everything[(everything >= low) & (everything < high)]  # the run's distribution, restricted
        q = torch.tensor([0.1, 0.5, 0.9])
        assert torch.allclose(torch.quantile(drawn, q), torch.quantile(inside, q), atol=5e-3)
    picks = [
        pick_expert(("high", "low"), BOUNDARY, 3.0, g) for g in [torch.Generator().manual_seed(2)] for _ in range(4000)
    ]
    # shift 3 puts sigma >= 0.875 at u >= 0.7: the high-noise expert gets 30 % of the steps
    assert abs(picks.count("high") / len(picks) - 0.3) < 0.03


@pytest.mark.parametrize("expert", ["both", "high", "low"])
def test_each_trained_expert_sees_only_its_own_timesteps(a14b, prepared, tmp_path, monkeypatch, expert):
    """The real training loop, with every denoising call of each expert's transformer recorded."""
    import imvedit.training.train as train_module

    seen = {"high": [], "low": []}

    def recording_load_base(*args, **kwargs):
        base = load_base(*args, **kwargs)
        for name in base.experts:

            def hook(module, args, name=name):
                if bool((args[1] > 0).all()):  # the source stream runs at t = 0
                    seen[name].extend(args[1].tolist())

            base.expert(name).register_forward_pre_hook(hook)
        return base

    monkeypatch.setattr(train_module, "load_base", recording_load_base)
    config = train_module.TrainConfig(
        pairs_dir=prepared, output=tmp_path / "run", model=str(a14b), max_steps=8, seed=1, batch_size=2,
        expert=None if expert == "both" else expert,
    )  # fmt: skip
    summary = train_module.train(config)
    trained = ["high", "low"] if expert == "both" else [expert]
    assert summary["experts"] == trained and summary["boundary_ratio"] == BOUNDARY
    assert all(t >= BOUNDARY * 1000 for t in seen["high"]) and all(t < BOUNDARY * 1000 for t in seen["low"])
    assert all(seen[e] for e in trained) and not any(seen[e] for e in {"high", "low"} - set(trained))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = {e: sum(x["expert"] == e for x in log) for e in ("high", "low")}
    assert {e: len(seen[e]) // 2 for e in trained} == {e: steps[e] for e in trained}  # batch 2: two t per step
    assert summary["steps_per_expert"] == {e: steps[e] for e in trained}


def test_both_experts_train_into_a_pair_of_files_that_name_each_other(both, a14b):
    high, low = (read_adapter_metadata(both / f) for f in ("adapter.safetensors", "adapter_2.safetensors"))
    assert (high["expert"], low["expert"]) == ("high", "low")
    assert high["pair"] == {"file": "adapter_2.safetensors", "payload_sha256": low["payload_sha256"]}
    assert low["pair"] == {"file": "adapter.safetensors", "payload_sha256": high["payload_sha256"]}
    base = load_base(str(a14b))
    assert high["base"]["fingerprint"] == base.identity_of("high")["fingerprint"]
    assert low["base"]["transformer_config"] == base.identity_of("low")["transformer_config"]
    assert high["training"]["steps_per_expert"] == {"high": 1, "low": 1}
    for name in ("adapter.safetensors", "adapter_2.safetensors"):  # either file loads both
        loaded = load_model(None, str(both / name), torch.device("cpu"), torch.float32)
        assert loaded.adapter is not None and loaded.adapter_2 is not None and loaded.base.boundary_ratio == BOUNDARY
        for a, f in ((loaded.adapter, "adapter.safetensors"), (loaded.adapter_2, "adapter_2.safetensors")):
            assert all(torch.equal(a.state_dict()[k], v) for k, v in load_file(str(both / f)).items())
        base_, adapter = loaded  # still unpacks as (base, adapter)
        assert adapter is loaded.adapter


@pytest.mark.parametrize("expert, file", [("high", "adapter.safetensors"), ("low", "adapter_2.safetensors")])
def test_one_expert_trained_alone_leaves_the_other_unadapted(a14b, prepared, tmp_path, expert, file):
    run = tmp_path / "run"
    r = imvedit("train", prepared, "-o", run, "--model", a14b, "--expert", expert, *STEPS, "--json")
    assert json.loads(r.stdout)["experts"] == [expert]
    assert sorted(p.name for p in run.glob("*.safetensors")) == [file]
    meta = read_adapter_metadata(run / file)
    assert meta["expert"] == expert and "pair" not in meta
    loaded = load_model(None, str(run), torch.device("cpu"), torch.float32)  # the run folder finds its one file
    assert (loaded.adapter is not None, loaded.adapter_2 is not None) == (expert == "high", expert == "low")
    info = json.loads(imvedit("export", "--inspect", run, "--json").stdout)
    assert info["expert"] == expert and "runs unadapted" in info["note"]
    assert "runs unadapted" in imvedit("export", "--inspect", run).stdout


@pytest.mark.slow
def test_the_expert_option_and_the_plan(a14b, prepared, tmp_path):
    r = imvedit("train", prepared, "-o", tmp_path / "r", "--model", "tiny-random", "--expert", "high", ok=False)
    assert r.returncode == 2 and "has one transformer" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = imvedit("train", prepared, "-o", tmp_path / "r", "--model", a14b, "--expert", "middle", ok=False)
    assert r.returncode == 2 and "--expert must be one of high, low, both" in r.stderr

    def plan(model, *args):
        return json.loads(imvedit("train", "--dry-run", "--model", CONFIGS / model, "--json", *args).stdout)

    one, both_, high = plan("wan2.1-t2v-14b"), plan("wan2.2-t2v-a14b"), plan("wan2.2-t2v-a14b", "--expert", "high")
    assert both_["experts"] == 2 and both_["expert_parameters"] == one["transformer_parameters"] == 14_288_491_584
    assert both_["transformer_parameters"] == 2 * one["transformer_parameters"]
    assert both_["adapter_parameters"] == 2 * one["adapter_parameters"] and high["experts"] == 1
    assert high["estimate"]["peak_gb"] < both_["estimate"]["peak_gb"]
    r = imvedit("train", "--dry-run", "--model", CONFIGS / "wan2.1-t2v-14b", "--expert", "both", ok=False)
    assert r.returncode == 2 and "has one transformer" in r.stderr


def test_a_run_of_both_experts_resumes_to_the_same_pair(a14b, prepared, tmp_path):
    args = ["--model", a14b, "--max-steps", "4", "--seed", "1", "--save-every", "2", "--ema-decay", "0.9"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    imvedit("train", prepared, "-o", straight, *args)
    checkpoint = straight / "checkpoints" / "checkpoint-00000002"
    assert sorted(p.name for p in checkpoint.glob("*.safetensors")) == ["adapter.safetensors", "adapter_2.safetensors"]
    shutil.copytree(straight, resumed, ignore=shutil.ignore_patterns("*.safetensors", "summary.json"))
    shutil.copytree(checkpoint, resumed / "checkpoints" / checkpoint.name, dirs_exist_ok=True)
    imvedit("train", prepared, "-o", resumed, *args, "--resume")
    experts = [json.loads(x)["expert"] for x in (straight / "log.jsonl").read_text().splitlines()]
    assert experts == ["low", "high", "high", "low"]  # both experts train before and after the checkpoint
    for name in ("adapter", "adapter_2", "adapter_ema", "adapter_ema_2"):
        a, b = (load_file(str(run / f"{name}.safetensors")) for run in (straight, resumed))
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6, name


@pytest.mark.parametrize(
    "fmt, output", [("adapter", "out"), ("adapter", "out.safetensors"), ("comfyui", "out"), ("diffusers", "out")]
)
def test_export_carries_both_experts_and_inspect_shows_them(both, tmp_path, fmt, output):
    out = tmp_path / output
    r = imvedit("export", both, "-o", out, "--format", fmt, "--dtype", "fp16", "--json")
    files = json.loads(r.stdout)["experts"]
    assert set(files) == {"high", "low"} and all(Path(p).is_file() for p in files.values())
    high, low = read_adapter_metadata(files["high"]), read_adapter_metadata(files["low"])
    assert (
        high["pair"]["payload_sha256"] == low["payload_sha256"]
        and low["pair"]["payload_sha256"] == high["payload_sha256"]
    )
    info = json.loads(imvedit("export", "--inspect", files["low"], "--json").stdout)
    assert info["hash_ok"] and [x["expert"] for x in info["experts"]] == ["high", "low"]
    assert all(x["dtype"] == ["float16"] for x in info["experts"])
    text = imvedit("export", "--inspect", files["high"]).stdout
    assert "high-noise expert" in text and "low-noise expert" in text
    model = str(out) if fmt == "diffusers" else None  # a diffusers export is the base and both adapters
    loaded = load_model(model, None if model else files["high"], torch.device("cpu"), torch.float32)
    assert loaded.adapter is not None and loaded.adapter_2 is not None and loaded.base.boundary_ratio == BOUNDARY
    trained = load_file(str(both / "adapter_2.safetensors"))
    assert all(np.allclose(loaded.adapter_2.state_dict()[k], v, atol=1e-3) for k, v in trained.items())
    if fmt == "diffusers":
        from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline

        pipe = ImVideoEditPipeline.from_pretrained(str(out))
        assert pipe.adapter_2 is not None and pipe.transformer_2 is not None and pipe.config.boundary_ratio == BOUNDARY


def test_pairs_that_do_not_hold_together_are_refused(both, a14b, prepared, tmp_path, clip):
    cpu = (torch.device("cpu"), torch.float32)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(both / "adapter.safetensors", alone)
    with pytest.raises(UsageError, match="is missing"):
        load_model(None, str(alone), *cpu)
    r = imvedit("export", "--inspect", alone, "--json", ok=False)
    assert r.returncode == 1 and "is missing" in json.loads(r.stdout)["problem"]

    other = tmp_path / "other"
    imvedit("train", prepared, "-o", other, "--model", a14b, "--max-steps", "2", "--seed", "2", "--lr", "1e-2")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(both / "adapter.safetensors", mixed)
    shutil.copy(other / "adapter_2.safetensors", mixed)
    with pytest.raises(UsageError, match="is not the pair of"):
        load_model(None, str(mixed / "adapter_2.safetensors"), *cpu)
    r = imvedit("edit", clip, "x", "-o", tmp_path / "o.mp4", "--adapter", mixed, "--max-area", 1024, ok=False)
    assert r.returncode == 2 and "is not the pair of" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = imvedit("export", mixed, "-o", tmp_path / "exported", ok=False)
    assert r.returncode == 2 and not (tmp_path / "exported").exists()


def test_an_adapter_for_the_other_kind_of_base_is_refused(both, a14b, prepared, tmp_path, clip):
    single = tmp_path / "single"
    imvedit("train", prepared, "-o", single, "--model", "tiny-random", "--max-steps", "1")
    common = [clip, "x", "-o", tmp_path / "o.mp4", "--steps", "1", "--max-area", 1024]
    r = imvedit("edit", *common, "--model", a14b, "--adapter", single, ok=False)
    assert r.returncode == 2 and "has two experts" in r.stderr  # the same architecture, the wrong kind of base
    r = imvedit("edit", *common, "--model", "tiny-random", "--adapter", both, ok=False)
    assert r.returncode == 2 and "has one transformer" in r.stderr
    assert not (tmp_path / "o.mp4").exists()
