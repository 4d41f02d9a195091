"""Where the source stream lives while an edit denoises (`--source-cache`), how the guidance branches run
(`--cfg-batch`), and that nothing of a pass outlives it: every choice gives the same frames."""

import gc
import weakref

import numpy as np
import pytest
import torch
from conftest import randomize_adapter

from imvedit.models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer
from imvedit.models.source import RecomputedSource
from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline


def make_pipe(base, **switches):
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(base.transformer, **switches))
    pipe = ImVideoEditPipeline(base.tokenizer, base.text_encoder, base.vae, base.scheduler, base.transformer, adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def video(frames=9, h=32, w=48):
    return np.random.default_rng(0).integers(0, 255, (frames, h, w, 3), dtype=np.uint8)


def edit(pipe, **kw):
    kw = {"num_inference_steps": 3, "guidance_scale": 3.0, "window_size": 5, "window_overlap": 4, **kw}
    out = pipe(video(), "make it red", generator=torch.Generator().manual_seed(0), **kw)
    return out.frames, out.gate


@pytest.mark.parametrize("switches", [{}, {"branches": "zero_out", "ffn_lora": True, "every_k_blocks": 2}])
@pytest.mark.parametrize("source_guidance", [1.0, 1.5])
def test_every_cache_and_batching_gives_the_frames_of_the_device_cache(tiny_base, switches, source_guidance):
    pipe = make_pipe(tiny_base, **switches)
    frames, gate = edit(pipe, source_guidance_scale=source_guidance)
    for cfg_batch in (True, False):
        device, device_gate = edit(pipe, source_guidance_scale=source_guidance, cfg_batch=cfg_batch)
        for cache in ("cpu", "recompute"):
            other, other_gate = edit(
                pipe, source_guidance_scale=source_guidance, source_cache=cache, cfg_batch=cfg_batch
            )
            if cache == "cpu":  # the same tensors, only kept elsewhere: bit-identical
                assert np.array_equal(other, device) and np.array_equal(other_gate, device_gate)
            else:  # the source rows change the matmuls' batch size, which may round the last bit differently
                assert np.abs(other - device).max() <= 1e-5 and np.abs(other_gate - device_gate).max() <= 1e-5
        # one batch or one branch at a time: the same up to the last bit of fp32, for the same reason
        assert np.abs(device - frames).max() <= 1e-5 and np.abs(device_gate - gate).max() <= 1e-5


def test_per_frame_recomputes_its_source_too(tiny_base):
    pipe = make_pipe(tiny_base)
    pipe.adapter.register_to_config(arch="per-frame")
    frames, _ = edit(pipe)
    assert np.abs(edit(pipe, source_cache="recompute")[0] - frames).max() <= 1e-5


def _adapted_step(tiny_base, **switches):
    """A randomised adapter on the tiny base and one step's inputs: two guidance rows, a batch-1 source."""
    base = tiny_base.transformer
    model = ImVideoEditTransformer(base, randomize_adapter(ImVideoEditAdapter.for_base(base, **switches)))
    g = torch.Generator().manual_seed(0)
    x, src = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(1, 4, 3, 8, 8, generator=g)
    text, gate_text = torch.randn(2, 7, 16, generator=g), torch.randn(2, 16, generator=g)
    return model, x, src, text, gate_text, torch.zeros(1, 7, 16), torch.tensor([600.0, 600.0])


def test_prepared_source_equals_the_raw_stream(tiny_base):
    """Inference keeps the source already through the branches; the step must not change."""
    model, x, src, text, gate_text, empty, t = _adapted_step(tiny_base)
    raw = model.encode_source(src, empty)
    prepared = model.encode_source(src, empty, prepare=True)
    assert all(b.kv is not None and b.mod is None for b in prepared.blocks.values())
    token_block = src.shape[2] * 4 * 4 * 24 * 4  # tokens x width x fp32 bytes
    assert all(b.kv[0].shape[0] == 2 for b in prepared.blocks.values())  # the pos and neg branches, stacked
    assert prepared.nbytes == 5 * token_block * len(prepared.blocks)  # 2 branches x (k, v) + ln, one more than raw
    assert raw.nbytes == 4 * token_block * len(raw.blocks)  # (attn1 input, k, v, ln)
    with torch.no_grad():
        reference = model(x, t, text, raw, gate_text)
        assert torch.equal(model(x, t, text, prepared, gate_text), reference)
        recomputed = model(x, t, text, RecomputedSource(src, empty), gate_text)
    assert (recomputed - reference).abs().max() <= 1e-5


def test_the_source_rows_of_recompute_are_the_stream_at_t0(tiny_base):
    """The extra rows run at t = 0 with the empty prompt, and only the edit rows come back."""
    base = tiny_base.transformer
    model = ImVideoEditTransformer(base, randomize_adapter(ImVideoEditAdapter.for_base(base)))
    seen = []
    handle = base.register_forward_pre_hook(lambda m, a, kw: seen.append(a[1].clone()), with_kwargs=True)
    x, src = torch.randn(2, 4, 3, 8, 8), torch.randn(1, 4, 3, 8, 8)
    with torch.no_grad():
        out = model(
            x, torch.tensor([500.0, 500.0]), torch.randn(2, 7, 16), RecomputedSource(src, torch.zeros(1, 7, 16))
        )
    handle.remove()
    assert out.shape == x.shape and seen[0].tolist() == [500.0, 500.0, 0.0]


def test_nothing_of_a_pass_stays_in_the_processors(tiny_base):
    """The processors stash the block input and the frozen projections for the SDA; none may outlive the call,
    in any mode (a plain base call included: they are the size of a block's activations)."""
    base = tiny_base.transformer
    model = ImVideoEditTransformer(base, randomize_adapter(ImVideoEditAdapter.for_base(base)))
    x, src, text = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 4, 3, 8, 8), torch.randn(1, 7, 16)
    t, empty = torch.tensor([500.0]), torch.zeros(1, 7, 16)
    with torch.no_grad():
        base(x, t, text, return_dict=False)
        features = model.encode_source(src, empty, prepare=True)
        model(x, t, text, features, torch.randn(1, 16))
        model(x, t, text, RecomputedSource(src, empty), torch.randn(1, 16))
    for proc in model._processors.values():
        assert proc.frozen == {} and proc.block_input is None
    assert model.state.recording == {}


def test_windows_compute_their_source_when_first_denoised_and_free_it_before_decode(tiny_base, monkeypatch):
    pipe = make_pipe(tiny_base)
    events, alive = [], []
    encode = ImVideoEditTransformer.encode_source

    def recording_encode(self, latents, *a, **kw):
        features = encode(self, latents, *a, **kw)
        events.append("encode")
        alive.append(weakref.ref(features))
        return features

    monkeypatch.setattr(ImVideoEditTransformer, "encode_source", recording_encode)
    handle = pipe.transformer.register_forward_pre_hook(lambda *a: events.append("forward"))
    decode = pipe.vae.decode
    at_decode = []

    def checking_decode(*a, **kw):
        gc.collect()
        at_decode.append(sum(r() is not None for r in alive))
        return decode(*a, **kw)

    monkeypatch.setattr(pipe.vae, "decode", checking_decode)
    edit(pipe, num_inference_steps=2)
    handle.remove()
    windows = len(pipe.latent_windows(9, 5, 4))
    assert windows == 2
    # each "encode" follows its own record pass; window 1's stream runs after window 0's first edit pass (not
    # up front), and once per window, not per step; both guidance branches in one edit pass per window
    step_1 = ["forward", "encode", "forward"] * windows
    assert events == step_1 + ["forward"] * windows
    assert at_decode == [0]


def test_live_storage_after_a_step_is_what_it_was_before(tiny_base):
    """Measured, not inferred: the bytes of every tensor alive on the CPU, tracked while the passes run. After
    an edit pass only its output, the cache and the pass state (timestep and gate-text embeddings, a row
    each, kept for gradient checkpointing's re-run) are alive; after a plain base call only its output."""
    from imvedit.memory.live import LiveStorage

    base = tiny_base.transformer
    model = ImVideoEditTransformer(base, randomize_adapter(ImVideoEditAdapter.for_base(base)))
    x, src, text = torch.randn(2, 4, 3, 8, 8), torch.randn(1, 4, 3, 8, 8), torch.randn(2, 7, 16)
    t, empty, gate_text = torch.tensor([500.0, 500.0]), torch.zeros(1, 7, 16), torch.randn(2, 16)
    with torch.no_grad(), LiveStorage("cpu") as live:
        live.adopt(base, model.adapter)  # the weights and inputs are resident from the start, not new when read
        for v in (x, src, text, t, empty, gate_text):
            live.track(v)
        features = model.encode_source(src, empty, prepare=True)
        gc.collect()
        with_cache = live.current
        assert with_cache >= features.nbytes > 0
        for source in (features, RecomputedSource(src, empty), None, features):
            out = model(x, t, text, source, gate_text)
            state = sum(
                v.untyped_storage().nbytes() for v in (model.state.temb, model.state.gate_text) if v is not None
            )
            gc.collect()
            assert live.current - out.untyped_storage().nbytes() - state <= with_cache, source
            del out
        del features, source
        gc.collect()
        assert live.current < with_cache


@pytest.mark.parametrize("switches", [{}, {"text_difference": True, "frame_position": True}])
@pytest.mark.parametrize("chunks", [2, 3, 8])
def test_sda_in_pieces_of_frames_gives_the_same_velocity(tiny_base, chunks, switches):
    """The SDA is per frame, so running a window's frames a piece at a time (`sda_chunks`, for memory) changes
    nothing but float rounding, for every form of the source and with a gate map collected; a token's place in
    its frame (`frame_position`) is the same in a piece as in the whole window."""
    model, x, src, text, gate_text, empty, t = _adapted_step(tiny_base, **switches)
    sources = {
        "raw": model.encode_source(src, empty),
        "prepared": model.encode_source(src, empty, prepare=True),
        "recompute": RecomputedSource(src, empty),
    }
    with torch.no_grad():
        for name, source in sources.items():
            whole = model(x, t, text, source, gate_text, collect_gates=True)
            whole_gate = model.last_gate_map()
            pieces = model(x, t, text, source, gate_text, collect_gates=True, sda_chunks=chunks)
            assert (pieces - whole).abs().max() <= 1e-5, name
            assert (model.last_gate_map() - whole_gate).abs().max() <= 1e-5, name
            assert (whole - model(x, t, text, None)).abs().max() > 1e-3  # the adapter does act


def test_the_pipeline_passes_sda_chunks_through(tiny_base):
    pipe = make_pipe(tiny_base)
    frames, gate = edit(pipe)
    calls = []
    model_forward = ImVideoEditTransformer.forward

    def spy(self, *args, **kw):
        calls.append(kw.get("sda_chunks"))
        return model_forward(self, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImVideoEditTransformer, "forward", spy)
        chunked, chunked_gate = edit(pipe, sda_chunks=2)
    assert calls and set(calls) == {2}
    assert np.abs(chunked - frames).max() <= 1e-5 and np.abs(chunked_gate - gate).max() <= 1e-5
