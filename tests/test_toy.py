"""The embedded default: toy pairs, the toy bench, and the bundled shapes-wan base and adapter."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_killed_then_resumed
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.evaluation.metrics import psnr
from imvedit.evaluation.toy_bench import (
    BENCH_SEED_OFFSET,
    ToyBenchConfig,
    encode_frames,
    gate_iou,
    gate_iou_ceiling,
    gate_target_iou,
    run_toy_bench,
)
from imvedit.models.bases import SHAPES_WAN, SHAPES_WAN_ADAPTER, SHAPES_WAN_DIR, load_base
from imvedit.toy.world import DEFAULT_WORLD, LOCAL_KINDS, sample_example

runner = CliRunner()
bundled = pytest.mark.skipif(not SHAPES_WAN_ADAPTER.exists(), reason="this build has no toy edit adapter")
base_shipped = pytest.mark.skipif(
    not (SHAPES_WAN_DIR / "model_index.json").is_file(), reason="the toy base is built by imvedit.toy.pretrain"
)


def test_prepare_toy_renders_image_pairs(tmp_path):
    result = runner.invoke(app, ["prepare", "toy", "-o", str(tmp_path / "pairs"), "--limit", "12", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "pairs" / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all(r["width"] == r["height"] == 64 for r in rows)
    assert all(r["instruction"] and r["caption"] for r in rows)
    assert len({r["kind"] for r in rows}) >= 3
    again = runner.invoke(app, ["prepare", "toy", "-o", str(tmp_path / "pairs2"), "--limit", "12"])
    assert again.exit_code == 0
    assert (tmp_path / "pairs" / "images" / "000005_target.png").read_bytes() == (
        tmp_path / "pairs2" / "images" / "000005_target.png"
    ).read_bytes()


def test_prepare_toy_needs_a_limit(tmp_path):
    result = runner.invoke(app, ["prepare", "toy", "-o", str(tmp_path / "p")])
    assert result.exit_code == 2 and "--limit" in result.output


def test_gate_iou():
    mask = np.zeros((2, 4, 4), bool)
    mask[:, :2] = True
    gate = np.where(mask, 0.9, 0.2)
    assert gate_iou(gate, mask) == 1.0
    assert gate_iou(np.where(mask, 0.2, 0.9), mask) == 0.0


def test_gate_iou_ceiling_is_what_a_per_token_gate_can_reach():
    aligned = np.zeros((2, 16, 16), bool)
    aligned[:, 4:8, 8:12] = True  # exactly one 4-pixel token
    assert gate_iou_ceiling(aligned, token=4) == 1.0
    small = np.zeros((2, 16, 16), bool)
    small[:, 5:7, 9:11] = True  # a quarter of that token: no per-token gate can draw it
    assert 0.0 < gate_iou_ceiling(small, token=4) < 0.5
    assert gate_iou_ceiling(small, token=1) == 1.0


@base_shipped
def test_the_gate_target_marks_the_edit_not_the_ring_the_codec_spreads():
    """gate_supervision's target through the bundled base's VAE, on the bench's first local clips: counting only
    changes above EDIT_THRESHOLD traces the edited object far better than counting any change, which takes in
    the weaker change the VAE spreads a latent position past it (docs/toy.md, eighth run: 0.71 against 0.41)."""
    from imvedit.training.flow_matching import CHANGE_THRESHOLD, EDIT_THRESHOLD

    base = load_base(SHAPES_WAN, torch_dtype=torch.float32, components=("vae", "transformer"))
    patch = base.transformer.config.patch_size
    edited, changed = [], []
    for i in range(12):
        ex = sample_example(BENCH_SEED_OFFSET + i, frames=1, size=64)
        if ex.kind in LOCAL_KINDS:
            latents = [encode_frames(base.vae, v) for v in (ex.source, ex.target)]
            iou = gate_target_iou(*latents, ex.mask, patch, (EDIT_THRESHOLD, CHANGE_THRESHOLD))
            edited.append(iou[0])
            changed.append(iou[1])
    assert len(edited) >= 6
    assert np.mean(edited) >= 0.6 and np.mean(edited) >= np.mean(changed) + 0.15, (edited, changed)


def test_bench_runs_on_any_base_and_writes_contact_sheets(tmp_path):
    cfg = ToyBenchConfig(
        model="tiny-random", clips=3, frames=5, size=32, steps=1, edits=("recolor", "global"), report=tmp_path
    )
    result = run_toy_bench(cfg)
    assert result["clips"] == 3 and set(result["per_kind"]) <= {"recolor", "global"}
    for key in ("edit_psnr", "temporal_error", "edit_psnr_ceiling", "edit_region_psnr_ceiling", "temporal_error_floor"):
        assert result["overall"][key] is not None and math.isfinite(result["overall"][key])
    # doing nothing: each clip's source against its ground truth inside the mask, the clips drawn as the bench draws
    rows = json.loads((tmp_path / "metrics.json").read_text())["per_clip"]
    for i, row in enumerate(rows):
        ex = sample_example(BENCH_SEED_OFFSET + i, frames=5, size=32, kinds=("recolor", "global"))
        assert row["edit_region_psnr_unedited"] == pytest.approx(psnr(ex.source, ex.target, ex.mask))
        assert row["edit_region_psnr_unedited"] < 30  # the region really changes
    assert result["overall"]["gate_iou"] is None and result["arch"] is None  # no adapter: the base alone
    # an ideal gate's score is reported on local edits even without a gate, and only there
    assert 0.0 < result["per_kind"]["recolor"]["gate_iou_ceiling"] < 1.0
    assert result["per_kind"]["global"]["gate_iou_ceiling"] is None
    assert list(tmp_path.glob("contact_*.png")) and (tmp_path / "metrics.json").is_file()


@base_shipped
def test_the_bundled_base_loads_offline_from_the_package():
    base = load_base(SHAPES_WAN, torch_dtype=torch.float32)  # HF_HUB_OFFLINE=1 (conftest)
    assert base.tokenizer("make the circle red").input_ids[-1] == 1  # every word known, then </s>
    assert base.tokenizer.unk_token_id not in base.tokenizer("make the circle red").input_ids
    assert base.vae.config.patch_size == 4 and base.transformer.config.num_layers == 4
    adapter = SHAPES_WAN_ADAPTER.stat().st_size if SHAPES_WAN_ADAPTER.exists() else 0
    total = sum(p.stat().st_size for p in SHAPES_WAN_DIR.rglob("*") if p.is_file()) + adapter
    assert total <= 25 * 2**20


@base_shipped
def test_the_bundled_folder_by_its_path_edits_at_the_toy_size_as_the_name_does(tmp_path):
    """A toy base given as a folder (the bundled one, or one `imvedit.toy.pretrain` wrote) gets the toy's
    working size and windows from its pretraining report, not Wan's 480x832 (which made a 64-px edit take
    minutes); a folder without that report keeps Wan's defaults."""
    from imvedit.memory.spec import read_base_spec
    from imvedit.models.bases import toy_defaults

    fields = ("default_area", "default_steps", "default_guidance", "default_guidance_2", "default_guidance_boundary")
    fields += ("window_frames", "window_overlap")
    by_name = load_base(SHAPES_WAN, components=("transformer",))
    by_path = load_base(str(SHAPES_WAN_DIR), components=("transformer",))
    expected = [64 * 64, 20, 1.5, 1.0, 0.8, 17, 8]
    assert [getattr(by_path, f) for f in fields] == [getattr(by_name, f) for f in fields] == expected
    spec = read_base_spec(str(SHAPES_WAN_DIR))
    got = (spec.default_area, spec.window_frames, spec.window_overlap, spec.default_guidance, spec.default_guidance_2)
    assert got == (64 * 64, 17, 8, 1.5, 1.0)
    assert read_base_spec(SHAPES_WAN).default_area == 64 * 64
    (tmp_path / "pretrain_report.json").write_text("{}")  # a report without the config: not a toy base
    assert toy_defaults(tmp_path) is None and toy_defaults(tmp_path / "missing") is None


@base_shipped
def test_the_bundled_base_draws_what_it_is_told_and_keeps_it_steady():
    """A text-to-video check of the pretrained base (no adapter): the background colour follows the
    caption, and consecutive frames agree (its 3D attention learned coherent video)."""
    from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline

    base = load_base(SHAPES_WAN, torch_dtype=torch.float32)
    pipe = ImVideoEditPipeline.from_base(base)
    pipe.set_progress_bar_config(disable=True)
    blank = np.zeros((9, 64, 64, 3), np.uint8)
    means = {}
    for colour in ("red", "blue"):
        out = pipe(blank, f"a white circle on a {colour} background", num_inference_steps=10, guidance_scale=3.0,
                   generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
        means[colour] = out.reshape(-1, 3).mean(0)
        assert np.abs(np.diff(out, axis=0)).mean() < 0.05  # steady from frame to frame
    assert means["red"][0] > means["red"][2] + 0.2 and means["blue"][2] > means["blue"][0] + 0.2


@bundled
def test_edit_with_no_model_uses_the_bundle_and_edits(tmp_path):
    """With no --model the bundle edits: "make it night" darkens every frame to under half its brightness,
    even at 4 steps (docs/toy.md: night is among the global edits the bundled adapter does in every frame)."""
    from imvedit.toy.world import render, sample_scene
    from imvedit.video.io import read_video, write_video

    source = render(sample_scene(np.random.default_rng(3)), 9, 64)
    clip = write_video(tmp_path / "in.mp4", source, fps=8)
    result = runner.invoke(app, ["edit", str(clip), "make it night", "-o", str(tmp_path / "out.mp4"), "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert "bundled toy model shapes-wan" in result.output
    frames, info = read_video(tmp_path / "out.mp4")
    assert frames.shape == (9, 64, 64, 3) and info.fps == 8
    assert all(frames[t].mean() < 0.5 * source[t].mean() for t in range(9))


@bundled
def test_quiet_edit_prints_no_progress_bars_of_the_libraries(tmp_path, clip):
    result = runner.invoke(
        app, ["edit", str(clip), "make it night", "-o", str(tmp_path / "o.mp4"), "--steps", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "Loading" not in result.output and "it/s" not in result.output, result.output


def test_without_the_bundle_edit_asks_for_a_model(tmp_path, clip, monkeypatch):
    import imvedit.models.bases as bases

    monkeypatch.setattr(bases, "SHAPES_WAN_ADAPTER", tmp_path / "missing.safetensors")  # a build without it
    result = runner.invoke(app, ["edit", str(clip), "make it red", "-o", str(tmp_path / "out.mp4")])
    assert result.exit_code == 2 and "--model" in result.output
    assert not (tmp_path / "out.mp4").exists()


def test_the_hard_worlds_pretraining_recipe_runs_end_to_end_in_miniature(tmp_path):
    from imvedit.toy.bundle import CONFIGS, load_config
    from imvedit.toy.pretrain import main

    config = load_config(CONFIGS / "pretrain-hard.yaml")  # the bundled (simple) recipe's stages: test_pretrain_text
    config["vae"]["steps"] = 2
    config["transformer"].update(steps=2, dataset_clips=4, batch_size=2)
    config["refine"]["vae"]["steps"] = config["refine"]["transformer"]["steps"] = 2  # the refine phase runs too
    config["refine"]["vae"]["edge_weight"] = 4.0  # the edge-weighted VAE loss runs too
    import yaml

    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config))
    main(["--config", str(tmp_path / "small.yaml"), "-o", str(tmp_path / "base")])
    report = json.loads((tmp_path / "base" / "pretrain_report.json").read_text())
    assert {"vae_seconds", "transformer_seconds", "refine_vae_seconds", "refine_transformer_seconds"} <= set(report)
    base = load_base(str(tmp_path / "base"), torch_dtype=torch.float32)
    assert base.vae.config.scale_factor_spatial == 4 and base.vae.config.patch_size == 4
    assert len(base.vae.config.latents_std) == config["vae"]["z_dim"]
    assert base.tokenizer.unk_token_id not in base.tokenizer("make the circle red").input_ids


def test_vae_edge_weights_mark_the_outline_of_a_shape_and_not_a_flat_background():
    from imvedit.toy.pretrain import _edges, _to_tensor
    from imvedit.toy.world import Background, Obj, Scene, render

    scene = Scene(Background("flat", "blue", "blue"), [Obj("square", "yellow", 0.5, 0.5, 0.0, 0.0, 0.3)])
    edges = _edges(_to_tensor(render(scene, 1, 64))[None])[0, 0, 0].numpy()
    assert edges[:8].sum() == 0 and edges[:, :8].sum() == 0  # flat background far from the square
    assert edges[32, 32] == 0  # the square's flat inside
    assert edges[32].sum() > 0 and edges[:, 32].sum() > 0  # its left/right and top/bottom borders


def test_prepare_toy_renders_the_world_asked_for(tmp_path):
    rows = [json.loads(line) for line in _prepared(tmp_path / "p").read_text().splitlines()]  # simple: the default
    # one object per scene: a caption names at most one shape, never "and"
    assert all(" and " not in r["caption"] or "black and white" in r["caption"] for r in rows)
    result = runner.invoke(app, ["prepare", "toy", "-o", str(tmp_path / "h"), "--limit", "12", "--world", "hard"])
    assert result.exit_code == 0, result.output
    hard = [json.loads(line) for line in (tmp_path / "h" / "manifest.jsonl").read_text().splitlines()]
    assert any(" and " in r["caption"].replace("black and white", "") for r in hard)  # several objects
    assert [r["caption"] for r in rows] != [r["caption"] for r in hard]
    bad = runner.invoke(app, ["prepare", "toy", "-o", str(tmp_path / "q"), "--limit", "2", "--world", "medium"])
    assert bad.exit_code == 2 and "--world" in bad.output


def _prepared(out):
    assert runner.invoke(app, ["prepare", "toy", "-o", str(out), "--limit", "12"]).exit_code == 0
    return out / "manifest.jsonl"


def test_bench_world_option_reaches_the_bench_and_it_feeds_the_instruction(monkeypatch):
    """--world picks the clips' world; with no --prompt the bench prompts as `imvedit edit` does, with the
    instruction, and both defaults are the library's (the CLI repeats neither)."""
    import imvedit.evaluation.toy_bench as toy_bench

    seen = {}

    def fake(config, progress=None):
        config.validate()
        seen["world"], seen["prompt"], seen["flow_shift"] = config.world, config.prompt, config.flow_shift
        seen["guidance"] = config.guidance
        return {
            "overall": dict.fromkeys(toy_bench.BENCH_METRICS) | {"clips": 0},
            "per_kind": {},
            "clips": 0,
            "seconds": 0,
        }

    monkeypatch.setattr(toy_bench, "run_toy_bench", fake)
    result = runner.invoke(app, ["eval", "--bench", "toy", "--world", "simple", "--json"])
    assert result.exit_code == 0, result.output
    assert seen == {"world": "simple", "prompt": "instruction", "flow_shift": None, "guidance": None}
    assert (ToyBenchConfig().world, ToyBenchConfig().prompt) == (DEFAULT_WORLD, "instruction")
    flags = ["--prompt", "description", "--flow-shift", "12", "--guidance", "2"]
    assert runner.invoke(app, ["eval", "--bench", "toy", *flags, "--json"]).exit_code == 0
    assert seen == {"world": DEFAULT_WORLD, "prompt": "description", "flow_shift": 12.0, "guidance": 2.0}
    # unset, the bench guides as `imvedit edit` does on the base, SDEdit as it was benched (3 throughout)
    base = load_base(SHAPES_WAN, components=("transformer",))
    assert ToyBenchConfig().resolved_guidance(base) == (1.5, 1.0, 0.8)
    assert ToyBenchConfig(guidance=2.5).resolved_guidance(base) == (2.5, None, None)
    assert ToyBenchConfig(arch="sdedit").resolved_guidance(base) == (3.0, None, None)
    # the bench samples with that shift, and the base's own scheduler is left as it was
    pipe, _, _, _ = toy_bench.bench_pipeline(ToyBenchConfig(model="tiny-random", flow_shift=12.0))
    assert pipe.scheduler.config.shift == 12.0
    assert toy_bench.bench_pipeline(ToyBenchConfig(model="tiny-random"))[0].scheduler.config.shift == 3.0
    with pytest.raises(Exception, match="world"):
        ToyBenchConfig(world="medium").validate()


def test_frame_independent_vae_gives_each_frame_its_latent_alone_and_resumes(tmp_path, monkeypatch):
    """The simple world's codec: past-frame taps zeroed and trained on single frames stay zero, so a clip's
    latents are its frames' latents as images; a killed `--stage vae` run resumes from its checkpoint."""
    import yaml

    import imvedit.toy.pretrain as pretrain
    from imvedit.toy.bundle import CONFIGS, load_config

    config = load_config(CONFIGS / "pretrain.yaml")
    assert config["world"] == "simple" and config["vae"]["z_dim"] == 48 and config["vae"]["frame_independent"]
    config["size"] = 32
    config["vae"].update(base_dim=16, steps=4, batch_images=2, checkpoint_every=1, report_clips=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "c.yaml"), "--stage", "vae", "--dtype", "fp32", "-o"]
    pretrain.main([*args, str(tmp_path / "whole")])

    # one call per step at this batch: killed during step 2, then run again
    run_killed_then_resumed(
        monkeypatch, pretrain, "sample_example", 3, lambda: pretrain.main([*args, str(tmp_path / "resumed")])
    )
    log = (tmp_path / "resumed" / "pretrain_log.jsonl").read_text()
    assert '"resumed_at": 2' in log

    whole = load_base(str(tmp_path / "whole"), torch_dtype=torch.float32).vae
    resumed = load_base(str(tmp_path / "resumed"), torch_dtype=torch.float32).vae
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    past = [m.weight[:, :, :-1] for m in whole.modules() if isinstance(m, torch.nn.Conv3d) and m.kernel_size[0] > 1]
    assert len(past) > 5 and all((w == 0).all() for w in past)  # trained, and still exactly zero
    assert whole.config.z_dim == 48 and whole.config.patch_size == 4

    x = torch.rand(2, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        clip = whole.encode(x).latent_dist.mode()
        alone = whole.encode(x.transpose(1, 2).reshape(18, 3, 1, 32, 32)).latent_dist.mode()
        alone = alone.reshape(2, 9, 48, 8, 8).transpose(1, 2)
        assert (clip - alone).abs().max() <= 1e-5 * clip.abs().max()
        # the control: the same VAE with its past taps given weight reads earlier frames
        for w in past:
            w.add_(0.1)
        assert (whole.encode(x).latent_dist.mode() - clip)[:, :, 1:].abs().max() > 1e-3
    report = json.loads((tmp_path / "resumed" / "pretrain_report.json").read_text())["codec"]
    assert set(report["edit_region_psnr_ceiling"]) == {"recolor", "replace", "remove", "add", "background", "global"}
    assert report["clip_vs_alone_rms"] < 1e-4


def test_the_weights_shipped_in_the_package_stay_under_25_mb():
    """Everything under imvedit/assets ships in every install: the bundled base, its adapter, whatever else."""
    assets = SHAPES_WAN_DIR.parent
    total = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert 0 < total <= 25_000_000, f"imvedit/assets holds {total / 1e6:.1f} MB"


def test_the_bundled_adapter_recipe_is_the_run_docs_toy_reports():
    """configs/adapter.yaml (stage 1) and adapter-gate.yaml (stage 2, from stage 1's run) load as training
    configs; stage 2 sets every option it names as the bundled adapter's own training record says (so the recipe
    is the run that made the bundle) and starts from stage 1's adapter with the same switches but for
    frame_position, which it adds; each plans the adapter of the run docs/toy.md measured (1,579,332 parameters,
    then 1,591,876)."""
    from pathlib import Path

    import yaml

    from imvedit.models.adapter_format import read_adapter_metadata
    from imvedit.models.bases import SHAPES_WAN_ADAPTER
    from imvedit.training.config import TrainConfig

    configs = Path(__file__).parent.parent / "imvedit/toy/configs"
    first, second = configs / "adapter.yaml", configs / "adapter-gate.yaml"
    stage1 = TrainConfig.from_sources(first, {}, required=())
    stage2 = TrainConfig.from_sources(second, {}, required=())
    assert stage1.flow_shift == 12.0 and stage1.adapter.text_difference and stage1.epochs == 5
    assert stage2.init == "run-toy" and stage2.gate_supervision == 0.25 and stage2.max_steps == 3450
    first_switches, second_switches = stage1.adapter.switches(), stage2.adapter.switches()
    assert not first_switches.get("frame_position") and second_switches.pop("frame_position")
    assert second_switches == first_switches and stage2.model == stage1.model
    if SHAPES_WAN_ADAPTER.exists():
        trained = read_adapter_metadata(SHAPES_WAN_ADAPTER)["training"]["config"]
        for option, value in yaml.safe_load(second.read_text()).items():
            assert trained[option] == value, (option, trained[option], value)
    for recipe, parameters in ((first, 1_579_332), (second, 1_591_876)):
        result = runner.invoke(app, ["train", "--dry-run", "--config", str(recipe), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["adapter_parameters"] == parameters
