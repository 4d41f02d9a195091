import numpy as np
import pytest
import torch
from conftest import randomize_adapter

from imvedit.errors import UsageError
from imvedit.models.imvedit import ImVideoEditAdapter
from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline


@pytest.fixture
def pipe(tiny_base):
    b = tiny_base
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(b.transformer))
    p = ImVideoEditPipeline.from_base(b, adapter)
    p.set_progress_bar_config(disable=True)
    return p


def video(frames=9, h=32, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (frames, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("frames", [1, 6, 9])
def test_output_has_the_input_frames_and_size(pipe, frames):
    out = pipe(video(frames), "make it red", num_inference_steps=2)
    assert out.frames.shape == (frames, 32, 48, 3)
    assert out.gate.shape == (frames, 32, 48)
    assert 0 <= out.frames.min() and out.frames.max() <= 1


def test_same_seed_same_edit_and_options_change_it(pipe):
    kw = dict(num_inference_steps=3, guidance_scale=3.0)
    a = pipe(video(), "make it red", generator=torch.Generator().manual_seed(0), **kw).frames
    b = pipe(video(), "make it red", generator=torch.Generator().manual_seed(0), **kw).frames
    c = pipe(video(), "make it red", generator=torch.Generator().manual_seed(0), strength=0.5, **kw).frames
    d = pipe(video(), "make it red", generator=torch.Generator().manual_seed(0), source_guidance_scale=1.5, **kw).frames
    assert np.array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)


def test_without_an_adapter_it_is_the_base(tiny_base):
    b = tiny_base
    pipe = ImVideoEditPipeline.from_base(b)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(video(5), "a red circle", num_inference_steps=2, strength=0.6)
    assert out.frames.shape == (5, 32, 48, 3) and out.gate is None


def test_bad_inputs(pipe):
    with pytest.raises(UsageError, match="multiples of 16"):
        pipe(video(h=30), "make it red", num_inference_steps=1)
    with pytest.raises(UsageError, match="prompt is empty"):
        pipe(video(), "  ", num_inference_steps=1)
    with pytest.raises(UsageError, match="strength"):
        pipe(video(), "x", num_inference_steps=1, strength=0.0)


def test_latents_stay_fp32_through_the_scheduler_and_prompts_are_512_tokens(tiny_base, monkeypatch):
    """As diffusers' WanPipeline: a bf16 transformer, fp32 latents and predictions in the scheduler (bf16 there
    compounds rounding over the steps), and prompts padded to the 512 tokens Wan was trained on."""
    b = tiny_base
    b.transformer.to(torch.bfloat16)
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(b.transformer)).to(torch.bfloat16)
    pipe = ImVideoEditPipeline.from_base(b, adapter)
    pipe.set_progress_bar_config(disable=True)
    seen, lengths = [], []
    step = pipe.scheduler.step

    def recording_step(pred, t, latents, **kw):
        seen.append((pred.dtype, latents.dtype))
        return step(pred, t, latents, **kw)

    monkeypatch.setattr(pipe.scheduler, "step", recording_step)
    handle = b.transformer.register_forward_pre_hook(lambda m, a: lengths.append(a[2].shape[1]))
    pipe(video(5), "make it red", num_inference_steps=3)
    handle.remove()
    assert seen == [(torch.float32, torch.float32)] * 3
    assert set(lengths) == {512}


def test_guidance_below_a_boundary_on_a_one_expert_base(pipe):
    """A second scale needs a boundary on a one-transformer base; below it a scale of 1 runs one branch a step."""
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(args[0].shape[0]) if bool((args[1] > 0).all()) else None,
        with_kwargs=True,
    )
    kw = dict(num_inference_steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    try:
        with pytest.raises(UsageError, match="boundary"):
            pipe(video(), "make it red", guidance_scale_2=1.0, **kw)
        with pytest.raises(UsageError, match="guidance-boundary"):
            pipe(video(), "make it red", guidance_scale_2=1.0, guidance_boundary=1.5, **kw)
        calls.clear()
        full = pipe(video(), "make it red", **kw).frames
        assert calls == [2] * 4  # the two branches in one batch, every step
        kw["generator"] = torch.Generator().manual_seed(0)
        calls.clear()
        interval = pipe(video(), "make it red", guidance_scale_2=1.0, guidance_boundary=0.6, **kw).frames
    finally:
        handle.remove()
    sigmas = pipe.scheduler.sigmas[:-1]
    assert calls == [2 if s >= 0.6 else 1 for s in sigmas.tolist()] and 1 in calls and 2 in calls
    assert not np.allclose(full, interval)
