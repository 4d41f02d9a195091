"""Wan2.2-A14B: two experts split the schedule at `boundary_ratio`, exactly as diffusers' `WanPipeline` splits it."""

import copy

import numpy as np
import torch
from conftest import randomize_adapter
from diffusers import WanPipeline

from imvedit.models.bases import build_tiny_random
from imvedit.models.imvedit import ImVideoEditAdapter
from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline

BOUNDARY = 0.875  # Wan2.2-T2V-A14B's


def two_experts():
    base = build_tiny_random()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        low = type(base.transformer).from_config(base.transformer.config).eval().requires_grad_(False)
    return base, low


def count_denoising_calls(*transformers):
    """Calls of each transformer at t > 0 (the source stream runs at t = 0), and one hook handle each."""
    counts = [0] * len(transformers)

    def hook(i):
        def fn(module, args, kwargs):
            t = args[1] if len(args) > 1 else kwargs["timestep"]
            counts[i] += int(bool((t > 0).all()))

        return fn

    handles = [m.register_forward_pre_hook(hook(i), with_kwargs=True) for i, m in enumerate(transformers)]
    return counts, handles


def test_the_experts_share_the_schedule_as_in_diffusers():
    base, low = two_experts()
    steps = 10
    reference = WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, transformer=base.transformer,
        scheduler=copy.deepcopy(base.scheduler), transformer_2=low, boundary_ratio=BOUNDARY,
    )  # fmt: skip
    reference.set_progress_bar_config(disable=True)
    counts, handles = count_denoising_calls(base.transformer, low)
    reference("a red circle", height=32, width=32, num_frames=5, num_inference_steps=steps, guidance_scale=3.0)
    expected = list(counts)
    for h in handles:
        h.remove()
    assert min(expected) > 0 and sum(expected) == 2 * steps  # diffusers runs the two branches one by one

    base.transformer_2, base.boundary_ratio = low, BOUNDARY
    adapters = [randomize_adapter(ImVideoEditAdapter.for_base(t), seed=s) for t, s in ((base.transformer, 1), (low, 2))]
    pipe = ImVideoEditPipeline.from_base(base, *adapters)
    pipe.set_progress_bar_config(disable=True)
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    counts, handles = count_denoising_calls(base.transformer, low)
    pipe(frames, "make it red", num_inference_steps=steps, guidance_scale=3.0, cfg_batch=False)
    for h in handles:
        h.remove()
    assert counts == expected


def test_each_expert_runs_its_own_adapter_and_source_stream():
    base, low = two_experts()
    base.transformer_2, base.boundary_ratio = low, BOUNDARY
    adapters = [randomize_adapter(ImVideoEditAdapter.for_base(t), seed=s) for t, s in ((base.transformer, 1), (low, 2))]
    pipe = ImVideoEditPipeline.from_base(base, *adapters)
    pipe.set_progress_bar_config(disable=True)
    ran = {id(a): 0 for a in adapters}
    handles = [
        a.sda["0"].register_forward_pre_hook(lambda m, _, a=a: ran.__setitem__(id(a), ran[id(a)] + 1)) for a in adapters
    ]
    source_calls = {id(t): 0 for t in (base.transformer, low)}
    for t in (base.transformer, low):
        handles.append(
            t.register_forward_pre_hook(
                lambda m, args: source_calls.__setitem__(id(m), source_calls[id(m)] + int(bool((args[1] == 0).all())))
            )
        )
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    out = pipe(frames, "make it red", num_inference_steps=8, guidance_scale=3.0)
    for h in handles:
        h.remove()
    assert all(n > 0 for n in ran.values())  # both adapters edited
    assert list(source_calls.values()) == [1, 1]  # each expert reads the source through its own weights, once
    # ...and the second expert's adapter matters: without it, the low-noise steps are the base's
    pipe_high_only = ImVideoEditPipeline.from_base(base, adapters[0], None)
    pipe_high_only.set_progress_bar_config(disable=True)
    other = pipe_high_only(frames, "make it red", num_inference_steps=8, guidance_scale=3.0)
    assert np.abs(other.frames - out.frames).max() > 1e-4


def test_the_inactive_expert_waits_off_the_device_when_asked():
    """On a GPU the pipeline moves the expert not in use to the CPU; here both are on the CPU, so check the moves."""
    base, low = two_experts()
    base.transformer_2, base.boundary_ratio = low, BOUNDARY
    pipe = ImVideoEditPipeline.from_base(base, None, None)
    pipe.set_progress_bar_config(disable=True)
    pipe.offload_inactive_expert = True
    moves = []
    for name, t in (("high", base.transformer), ("low", low)):
        original = t.to

        def to(*args, _name=name, _original=original, **kwargs):
            moves.append((_name, str(args[0]) if args else str(kwargs.get("device"))))
            return _original(*args, **kwargs)

        t.to = to
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    pipe(frames, "make it red", num_inference_steps=4, guidance_scale=3.0, strength=0.9)
    assert ("high", "cpu") in moves and moves.index(("high", "cpu")) < len(moves) - 1
    assert moves[-1][0] == "low"  # the low expert is brought in last, after the high one went out


def test_imvedit_edit_runs_both_experts_adapters_from_a_trained_pair(tmp_path, a14b_folder, pairs_folder, clip):
    """The real CLI end to end: `train --expert both` writes the pair, `edit` loads it and adapts each expert."""
    import subprocess
    import sys

    from imvedit.editing.edit import EditConfig, Editor, memory_options

    def imvedit(*args):
        r = subprocess.run([sys.executable, "-m", "imvedit", *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]

    imvedit("prepare", pairs_folder, "-o", tmp_path / "prepared", "--max-area", 32 * 32)
    imvedit("train", tmp_path / "prepared", "-o", tmp_path / "run", "--model", a14b_folder, "--max-steps", 4)
    out = tmp_path / "out.mp4"
    imvedit(
        "edit", clip, "invert the colours", "-o", out, "--adapter", tmp_path / "run", "--steps", 4, "--max-area", 1024
    )
    assert (tmp_path / "out.mp4").is_file()
    config = EditConfig(clip, "invert", tmp_path / "x.mp4", adapter=str(tmp_path / "run"))
    pipe, _, _ = Editor().pipeline(config, memory_options(config)["offload"])
    assert pipe.transformer_2 is not None and pipe.config.boundary_ratio == BOUNDARY
    assert pipe.adapter is not None and pipe.adapter_2 is not None and pipe.adapter is not pipe.adapter_2


def test_a_second_guidance_scale_takes_over_at_the_experts_boundary():
    """As diffusers' `guidance_scale_2`: the low-noise expert's steps guide at the second scale; at 1 they run the
    prompt's branch alone, and a second scale equal to the first changes nothing."""
    base, low = two_experts()
    base.transformer_2, base.boundary_ratio = low, BOUNDARY
    adapters = [randomize_adapter(ImVideoEditAdapter.for_base(t), seed=s) for t, s in ((base.transformer, 1), (low, 2))]
    pipe = ImVideoEditPipeline.from_base(base, *adapters)
    pipe.set_progress_bar_config(disable=True)
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    kw = dict(num_inference_steps=10, guidance_scale=3.0, cfg_batch=False)

    def run(**extra):
        counts, handles = count_denoising_calls(base.transformer, low)
        out = pipe(frames, "make it red", generator=torch.Generator().manual_seed(0), **kw, **extra).frames
        for h in handles:
            h.remove()
        return out, counts

    one, (high_calls, low_calls) = run()
    same, _ = run(guidance_scale_2=3.0)
    off, counts_off = run(guidance_scale_2=1.0)
    assert np.array_equal(one, same)
    assert counts_off == [high_calls, low_calls // 2] and low_calls > 0  # two branches a step, then one
    assert not np.allclose(one, off)
