"""The memory savers users know from diffusers, with an adapter attached: model CPU offload, group offloading,
fp8 layerwise casting of the frozen base, a standard Wan LoRA stacked on it, and compiled blocks."""

import numpy as np
import pytest
import torch
from conftest import randomize_adapter
from diffusers import WanPipeline
from diffusers.hooks import HookRegistry
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from typer.testing import CliRunner

from imvedit.editing.edit import load_loras, place_models
from imvedit.errors import UsageError
from imvedit.models.bases import build_tiny_random
from imvedit.models.imvedit import ImVideoEditAdapter
from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline


def make_pipe(base=None):
    base = base or build_tiny_random()
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(base.transformer, ffn_lora=True))
    pipe = ImVideoEditPipeline.from_base(base, adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kw):
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 48, 3), dtype=np.uint8)
    kw = {"num_inference_steps": 2, "guidance_scale": 3.0, **kw}
    return pipe(frames, "make it red", generator=torch.Generator().manual_seed(0), **kw).frames


def watch_devices(pipe):
    """A pre-hook on every SDA: where its weights and its block's frozen projections are when it runs."""
    seen = []

    def hook(module, args):
        attn = args[0]
        weights = [*module.parameters(), attn.to_q.weight, attn.to_out[0].weight]
        seen.append({p.device for p in weights})

    handles = [sda.register_forward_pre_hook(hook) for sda in pipe.adapter.sda.values()]
    return seen, handles


@pytest.mark.parametrize("offload", ["model", "group"])
def test_offload_runs_the_adapter_where_the_pass_runs(offload):
    reference = run(make_pipe())
    pipe = make_pipe()
    device = torch.device("cpu")
    place_models(pipe, offload, device)
    if offload == "model":  # diffusers' hooks on the models it moves, none on the adapter (it stays put)
        assert all(hasattr(m, "_hf_hook") for m in (pipe.text_encoder, pipe.transformer, pipe.vae))
        assert not hasattr(pipe.adapter, "_hf_hook")
    else:  # a group-offloading hook on every block of the transformer, none on the adapter
        registries = [HookRegistry.check_if_exists_or_initialize(b) for b in pipe.transformer.blocks]
        assert all(r.get_hook("group_offloading") is not None for r in registries)
        assert not any(hasattr(m, "_diffusers_hook") for m in pipe.adapter.modules())
    seen, handles = watch_devices(pipe)
    out = run(pipe, source_cache="cpu")
    for h in handles:
        h.remove()
    assert pipe._execution_device.type == device.type
    assert len(seen) == 2 * len(pipe.adapter.sda) and all({d.type for d in s} == {device.type} for s in seen)
    assert np.array_equal(out, reference)


def watch_model_offload(pipe):
    """[(model that ran, the models on the device as it ran)] for every forward under diffusers' model offload.
    A model comes on when its hook's pre_forward runs and goes off when its hook offloads it. accelerate also
    offloads the model before it in `model_cpu_offload_seq`, but only when that one is off the CPU: on this
    CPU-only machine every move is a no-op, so that is simulated here."""
    names = {id(m): n for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    on, runs = set(), []
    for user in pipe._all_hooks:
        name = names[id(user.model)]

        def offload(_offload=user.offload, _name=name):
            on.discard(_name)
            _offload()

        def pre_forward(module, *args, _hook=user.hook, _pre=user.hook.pre_forward, _name=name, **kwargs):
            if _hook.prev_module_hook is not None:
                on.discard(names[id(_hook.prev_module_hook.model)])
            on.add(_name)
            runs.append((_name, frozenset(on)))
            return _pre(module, *args, **kwargs)

        user.offload, user.hook.pre_forward = offload, pre_forward
    return runs


def phases(runs):
    """The models in the order they ran, each stretch of forwards of one model counted once."""
    return [name for i, (name, _) in enumerate(runs) if i == 0 or runs[i - 1][0] != name]


def two_expert_pipe():
    """A Wan2.2-A14B-shaped pipeline (a second expert with other weights, the real boundary), an adapter each."""
    base = build_tiny_random()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        base.transformer_2 = type(base.transformer).from_config(base.transformer.config).eval().requires_grad_(False)
    base.boundary_ratio = 0.875
    adapters = [
        randomize_adapter(ImVideoEditAdapter.for_base(t, ffn_lora=True), seed=s)
        for t, s in ((base.transformer, 1), (base.transformer_2, 2))
    ]
    pipe = ImVideoEditPipeline.from_base(base, *adapters)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("experts", "steps", "order"),
    [
        (1, 2, ["text_encoder", "vae", "transformer", "vae"]),
        (2, 4, ["text_encoder", "vae", "transformer", "transformer_2", "vae"]),
        # the high-noise expert alone: the VAE follows transformer_2 in the chain, so only an explicit offload
        # takes the first expert off before the decode
        (2, 1, ["text_encoder", "vae", "transformer", "vae"]),
    ],
)
def test_model_offload_holds_one_model_at_a_time(experts, steps, order):
    """diffusers moves a model off only when the next one in its sequence runs; the pipeline's order (text, VAE
    encode, denoise, VAE decode) differs, so each phase offloads its models itself, as the memory plan assumes."""
    pipe = make_pipe() if experts == 1 else two_expert_pipe()
    place_models(pipe, "model", torch.device("cpu"))
    runs = watch_model_offload(pipe)
    run(pipe, num_inference_steps=steps)
    assert phases(runs) == order
    assert [(name, set(on)) for name, on in runs if on != {name}] == []  # nothing else on the device as one runs


def test_the_cli_edits_with_model_offload_one_model_at_a_time(monkeypatch, clip, tmp_path):
    import imvedit.editing.edit
    from imvedit.cli.main import app

    watched = []

    def place_and_watch(pipe, offload, device):
        place_models(pipe, offload, device)
        watched.append(watch_model_offload(pipe))  # the hooks of this edit: the pipeline re-hooks after it

    monkeypatch.setattr(imvedit.editing.edit, "place_models", place_and_watch)
    args = [str(clip), "make it red", "-o", str(tmp_path / "out.mp4"), "--model", "tiny-random", "--steps", "2"]
    r = CliRunner().invoke(app, ["edit", *args, "--device", "cpu", "--offload", "model"])
    assert r.exit_code == 0, r.output
    [runs] = watched
    assert phases(runs) == ["text_encoder", "vae", "transformer", "vae"]
    assert [(name, set(on)) for name, on in runs if on != {name}] == []


def test_fp8_storage_of_the_base_still_edits():
    """Layerwise casting keeps the frozen weights in fp8 between forwards; the SDA's use of the output
    projection outside its forward must cast it as the hook does."""
    reference = run(make_pipe())
    pipe = make_pipe()
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert pipe.transformer.blocks[0].attn1.to_out[0].weight.dtype == torch.float8_e4m3fn
    out = run(pipe)
    assert np.isfinite(out).all() and np.abs(out - reference).mean() < 0.05  # fp8 rounding, not a broken edit


def tiny_lora(path, seed=3):
    """A diffusers-format Wan LoRA on attn1 and attn2 of the tiny base, written as diffusers writes one."""
    base = build_tiny_random().transformer
    base.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    WanPipeline.save_lora_weights(str(path), transformer_lora_layers=get_peft_model_state_dict(base))
    return path / "pytorch_lora_weights.safetensors"


def test_a_standard_wan_lora_changes_the_base_and_the_adapter_still_applies(tmp_path):
    lora = tiny_lora(tmp_path)
    plain = run(make_pipe())
    with_lora = make_pipe()
    load_loras(with_lora.transformer, [f"{lora}:1.0"])
    out = run(with_lora)
    assert np.abs(out - plain).max() > 1e-3  # the LoRA is in the base
    base_alone = build_tiny_random()
    load_loras(base_alone.transformer, [str(lora)])
    lora_only = ImVideoEditPipeline.from_base(base_alone, None)
    lora_only.set_progress_bar_config(disable=True)
    assert np.abs(out - run(lora_only, strength=1.0)).max() > 1e-3  # ...and the adapter still edits on top
    half = make_pipe()
    load_loras(half.transformer, [f"{lora}:0.5"])
    assert np.abs(run(half) - out).max() > 1e-4  # the scale is applied


def test_bad_lora_specs_are_refused(tmp_path):
    from imvedit.editing.edit import lora_spec

    with pytest.raises(UsageError, match="does not exist"):
        lora_spec(str(tmp_path / "missing.safetensors"))
    (tmp_path / "x.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="not a scale"):
        lora_spec(f"{tmp_path / 'x.safetensors'}:big")
    assert lora_spec(f"{tmp_path / 'x.safetensors'}:0.5")[1] == 0.5


@pytest.mark.slow
def test_compiled_blocks_give_the_same_frames():
    reference = run(make_pipe())
    pipe = make_pipe()
    pipe.transformer.compile_repeated_blocks(dynamic=True)
    assert np.abs(run(pipe) - reference).max() <= 1e-5


def test_the_cli_passes_the_memory_options_and_reports_them(tmp_path, clip):
    import json
    import subprocess
    import sys

    lora = tiny_lora(tmp_path)
    out = tmp_path / "out.mp4"
    edit = [
        sys.executable, "-m", "imvedit", "edit", str(clip), "make it red", "-o", str(out), "--model", "tiny-random",
    ]  # fmt: skip
    cmd = edit + [
        "--steps", "2", "--offload", "group", "--source-cache", "recompute", "--cfg-batch", "off",
        "--sda-chunking", "on", "--vae-tiling", "--lora", f"{lora}:0.7", "--json",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    memory = json.loads(r.stdout)["memory"]
    assert memory == {
        "offload": "group", "source_cache": "recompute", "cfg_batch": "off", "sda_chunking": "on", "vae_tiling": True,
    }  # fmt: skip
    bad = subprocess.run(edit + ["--source-cache", "disk"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Unknown --source-cache 'disk'" in bad.stderr


def test_an_edit_on_auto_takes_the_plans_choice_for_its_input(tmp_path):
    """`imvedit edit` with the memory options at auto asks the plan, for the input's real size and length."""
    from imvedit.editing.edit import EditConfig, memory_options
    from imvedit.video.io import VideoWriter

    clip = tmp_path / "in.mp4"
    with VideoWriter(clip, 16, (832, 480)) as w:
        for _ in range(81):
            w.write(np.zeros((480, 832, 3), np.uint8))
    config = EditConfig(clip, "make it winter", tmp_path / "out.mp4", model="tests/data/wan_configs/wan2.1-t2v-1.3b")
    small, large = memory_options(config, gpu_memory_gib=24), memory_options(config, gpu_memory_gib=200)
    assert small["source_cache"] != "device" and large == {
        "offload": "none",
        "source_cache": "device",
        "cfg_batch": "on",
        "sda_chunking": "off",
    }
    config.source_cache = "recompute"  # what the user gives is kept
    assert memory_options(config, gpu_memory_gib=200)["source_cache"] == "recompute"
    on_cpu = EditConfig(clip, "x", tmp_path / "o.mp4", model="tiny-random", device="cpu")
    assert memory_options(on_cpu) == {
        "offload": "none",
        "source_cache": "device",
        "cfg_batch": "on",
        "sda_chunking": "off",
    }
