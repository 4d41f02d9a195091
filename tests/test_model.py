"""The method's guarantees, checked on tiny real diffusers models."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_adapter
from diffusers import WanTransformer3DModel

from imvedit.models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer
from imvedit.models.processor import frame_rope
from imvedit.models.sda import _rope
from imvedit.models.source import BlockSource
from imvedit.training.flow_matching import flow_matching_loss, sample_sigmas

WAN21_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
WAN21_14B = {**WAN21_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}


def inputs(batch=1, frames=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, h, w, generator=g)
    src = torch.randn(batch, 4, frames, h, w, generator=g)
    text = torch.randn(batch, 7, 16, generator=g)
    gate_text = torch.randn(batch, 16, generator=g)
    return x, src, text, gate_text


@pytest.mark.parametrize(
    "switches",
    [
        {},
        {"branches": "zero_out"},
        {"ffn_lora": True},
        {"cross_lora": True},
        {"every_k_blocks": 2},
        {"gate": "none"},
        {"gate": "no_text"},
        {"gate_mix": False},
        {"gate_source": False},
        {"text_difference": True},
        {"text_difference": True, "frame_position": True},
        {"gate_source": False, "frame_position": True},
    ],
)
def test_fresh_adapter_leaves_the_base_output_unchanged(tiny_base, switches):
    base = tiny_base.transformer
    x, src, text, gate_text = inputs(frames=5)
    t = torch.tensor([700.0])
    reference = base(x, t, text, return_dict=False)[0]
    model = ImVideoEditTransformer(base, ImVideoEditAdapter.for_base(base, **switches))
    features = model.encode_source(src, torch.zeros(1, 7, 16))
    out = model(x, t, text, features, gate_text)
    assert (out - reference).abs().max().item() <= 1e-5
    # ...and the adapter is really in the path: random weights change the output.
    randomize_adapter(model.adapter)
    assert (model(x, t, text, features, gate_text) - reference).abs().max().item() > 1e-3


def test_detach_restores_the_plain_base(tiny_base):
    base = tiny_base.transformer
    x, src, text, gate_text = inputs()
    t = torch.tensor([300.0])
    reference = base(x, t, text, return_dict=False)[0]
    model = ImVideoEditTransformer(base, randomize_adapter(ImVideoEditAdapter.for_base(base)))
    model(x, t, text, model.encode_source(src, torch.zeros(1, 7, 16)), gate_text)
    model.detach()
    assert torch.equal(base(x, t, text, return_dict=False)[0], reference)


def test_trainable_parameters_are_exactly_the_adapter(tiny_base):
    base = tiny_base.transformer
    adapter = ImVideoEditAdapter.for_base(base)
    model = ImVideoEditTransformer(base, adapter)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter.parameters()}
    assert not any(p.requires_grad for p in base.parameters())


@pytest.mark.parametrize("config,upper", [(WAN21_1_3B, 0.04), (WAN21_14B, 0.04)])
def test_adapter_is_a_small_fraction_of_real_wan_bases(config, upper):
    with torch.device("meta"):
        base = WanTransformer3DModel(**config)
        adapter = ImVideoEditAdapter.for_base(base)
    n_base = sum(p.numel() for p in base.parameters())
    n_adapter = sum(p.numel() for p in adapter.parameters())
    ratio = n_adapter / n_base
    print(f"base {n_base / 1e9:.2f}B, adapter {n_adapter / 1e6:.1f}M = {100 * ratio:.2f}%")
    assert ratio < 0.10
    assert ratio < upper  # the design aims at ~2-3% for Wan2.1-1.3B


def test_one_optimiser_step_moves_the_adapter_and_not_the_base(tiny_base):
    base = tiny_base.transformer
    torch.manual_seed(0)
    adapter = ImVideoEditAdapter.for_base(base)
    model = ImVideoEditTransformer(base, adapter)
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in adapter.state_dict().items()}
    x, src, text, gate_text = inputs(batch=2, frames=1)
    empty, empty_gate = torch.zeros(1, 7, 16), torch.zeros(1, 16)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3, weight_decay=0.0)
    loss = flow_matching_loss(
        model, source_latents=src, target_latents=x, text=text, gate_text=gate_text, empty_text=empty,
        empty_gate_text=empty_gate, generator=torch.Generator().manual_seed(0), text_dropout=0.0, source_dropout=0.0,
    )  # fmt: skip
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    opt.step()
    changed = [k for k, v in adapter.state_dict().items() if not torch.equal(v, adapter_before[k])]
    assert any(k.endswith("up.weight") for k in changed), changed
    for k, v in base.state_dict().items():
        assert torch.equal(v, base_before[k]), k


def _count_base_calls(base):
    calls = []

    def hook(module, args, kwargs):
        calls.append(args[1].clone() if len(args) > 1 else kwargs["timestep"].clone())

    return calls, base.register_forward_pre_hook(hook, with_kwargs=True)


def test_source_stream_runs_once_per_call(tiny_base):
    import numpy as np

    from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline

    b = tiny_base
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(b.transformer))
    pipe = ImVideoEditPipeline(b.tokenizer, b.text_encoder, b.vae, b.scheduler, b.transformer, adapter)
    pipe.set_progress_bar_config(disable=True)
    calls, handle = _count_base_calls(b.transformer)
    video = np.random.default_rng(0).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    pipe(video, "make it red", num_inference_steps=4, guidance_scale=4.0)
    handle.remove()
    source_calls = [t for t in calls if torch.all(t == 0)]
    denoise_calls = [t for t in calls if torch.all(t > 0)]
    assert len(source_calls) == 1  # not once per step (4) or per guidance branch (2)
    assert len(denoise_calls) == 4 and all(t.shape[0] == 2 for t in denoise_calls)  # both branches batched


def test_cached_and_recomputed_source_features_agree(tiny_base):
    base = tiny_base.transformer
    model = ImVideoEditTransformer(base, randomize_adapter(ImVideoEditAdapter.for_base(base)))
    x, src, text, gate_text = inputs(frames=3)
    empty = torch.zeros(1, 7, 16)
    cached = model.encode_source(src, empty)
    snapshot = copy.deepcopy(cached.blocks)
    for t in (900.0, 500.0, 100.0):
        t = torch.tensor([t])
        with torch.no_grad():
            a = model(x, t, text, cached, gate_text)
            b = model(x, t, text, model.encode_source(src, empty), gate_text)
        assert torch.equal(a, b)
    for i, block in snapshot.items():  # the cache is read, never written
        for a, b in zip(cached.blocks[i].tensors(), block.tensors(), strict=True):
            assert torch.equal(a, b)


def test_sda_of_a_frame_reads_only_that_frames_source(tiny_base):
    base = tiny_base.transformer
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(base))
    attn = base.blocks[0].attn1
    sda = adapter.sda["0"]
    frames, h, w, dim = 3, 4, 4, 24
    n = frames * h * w
    g = torch.Generator().manual_seed(0)
    x_mod, s_mod = torch.randn(1, n, dim, generator=g), torch.randn(1, n, dim, generator=g)
    x_ln, s_ln = torch.randn(1, n, dim, generator=g), torch.randn(1, n, dim, generator=g)
    frozen = {"q": attn.to_q(x_mod), "k": attn.to_k(x_mod), "v": attn.to_v(x_mod)}
    rope2d = frame_rope(base.rope(torch.zeros(1, 4, frames, 2 * h, 2 * w)), h * w)
    temb, text = torch.randn(1, dim, generator=g), torch.randn(1, 64, generator=g)

    def run(s_mod, s_ln):
        src = BlockSource(s_ln, s_mod, attn.to_k(s_mod), attn.to_v(s_mod))
        with torch.no_grad():
            inner, outer, _ = sda(attn, x_mod, frozen, src, x_ln, (frames, h, w), rope2d, temb, text)
        return sda.update(attn, inner, outer).reshape(frames, h * w, dim)

    before = run(s_mod, s_ln)
    hw = h * w
    s_mod2, s_ln2 = s_mod.clone(), s_ln.clone()
    s_mod2[:, 2 * hw :] += 5.0  # perturb frame 2's source only
    s_ln2[:, 2 * hw :] -= 3.0
    after = run(s_mod2, s_ln2)
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    assert (before[2] - after[2]).abs().max() > 1e-3  # the perturbed frame itself does change


def test_per_token_timesteps_like_wan22(tiny_base):
    base = tiny_base.transformer
    x, src, text, gate_text = inputs(frames=3)
    tokens = 3 * 4 * 4
    t = torch.full((1, tokens), 600.0)
    t[:, :16] = 0.0  # Wan2.2 TI2V keeps its conditioning frame at t=0
    reference = base(x, t, text, return_dict=False)[0]
    model = ImVideoEditTransformer(base, ImVideoEditAdapter.for_base(base))
    features = model.encode_source(src, torch.zeros(1, 7, 16))
    assert (model(x, t, text, features, gate_text) - reference).abs().max() <= 1e-5
    randomize_adapter(model.adapter)
    assert torch.isfinite(model(x, t, text, features, gate_text)).all()


def test_fused_projections_give_the_same_edit(tiny_base):
    base = tiny_base.transformer
    model = ImVideoEditTransformer(base, randomize_adapter(ImVideoEditAdapter.for_base(base)))
    x, src, text, gate_text = inputs()
    t = torch.tensor([400.0])
    with torch.no_grad():
        plain = model(x, t, text, model.encode_source(src, torch.zeros(1, 7, 16)), gate_text)
        for block in base.blocks:
            block.attn1.fuse_projections()
        fused = model(x, t, text, model.encode_source(src, torch.zeros(1, 7, 16)), gate_text)
    assert (plain - fused).abs().max() <= 1e-5


def test_gradient_checkpointing_gives_the_same_gradients(tiny_base):
    base = tiny_base.transformer
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(base))
    model = ImVideoEditTransformer(base, adapter)
    x, src, text, gate_text = inputs(frames=1)
    features = model.encode_source(src, torch.zeros(1, 7, 16))

    def grads():
        adapter.zero_grad()
        F.mse_loss(model(x, torch.tensor([500.0]), text, features, gate_text), x).backward()
        return [p.grad.clone() for p in adapter.parameters()]

    plain = grads()
    base.enable_gradient_checkpointing()
    checkpointed = grads()
    for a, b in zip(plain, checkpointed, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_gate_map_has_the_latent_grid_shape(tiny_base):
    base = tiny_base.transformer
    model = ImVideoEditTransformer(base, randomize_adapter(ImVideoEditAdapter.for_base(base)))
    x, src, text, gate_text = inputs(frames=3, h=8, w=12)
    model(
        x, torch.tensor([500.0]), text, model.encode_source(src, torch.zeros(1, 7, 16)), gate_text, collect_gates=True
    )
    gate = model.last_gate_map()
    assert gate.shape == (1, 3, 4, 6)
    assert ((gate > 0) & (gate < 1)).all()


def test_bad_switches_are_refused():
    from imvedit.errors import UsageError

    with pytest.raises(UsageError, match="branches"):
        ImVideoEditAdapter(num_layers=2, dim=24, text_dim=16, ffn_dim=32, branches="three")
    with pytest.raises(UsageError, match="gate"):
        ImVideoEditAdapter(num_layers=2, dim=24, text_dim=16, ffn_dim=32, gate="maybe")
    with pytest.raises(UsageError, match="gate: text"):
        ImVideoEditAdapter(num_layers=2, dim=24, text_dim=16, ffn_dim=32, text_difference=True, gate="no_text")
    with pytest.raises(UsageError, match="frame_position"):
        ImVideoEditAdapter(num_layers=2, dim=24, text_dim=16, ffn_dim=32, frame_position=True, gate="none")


def test_text_difference_carries_the_instruction_to_the_tokens(tiny_base):
    """With only the text-difference term trained (every other adapter weight at its start, so the gate is 0.5
    everywhere whatever the text), the pooled instruction changes the edit: the term is a path from the
    instruction to the tokens that the gate does not provide."""
    base = tiny_base.transformer
    x, src, text, gate_text = inputs(frames=3)
    t = torch.tensor([700.0])
    model = ImVideoEditTransformer(base, ImVideoEditAdapter.for_base(base, text_difference=True, gate_mix=False))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.adapter.named_parameters():
            if ".text_delta." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    features = model.encode_source(src, torch.zeros(1, 7, 16))
    reference = base(x, t, text, return_dict=False)[0]
    edited = model(x, t, text, features, gate_text)
    assert (edited - reference).abs().max().item() > 1e-3
    other = model(x, t, text, features, -gate_text)  # the same everything, another instruction
    assert (other - edited).abs().max().item() > 1e-3


@pytest.mark.parametrize("frame_position", [False, True])
def test_only_frame_position_lets_the_gate_tell_places_apart_on_a_flat_frame(frame_position):
    """On a flat frame every token is the same, so a per-token gate is the same everywhere: it cannot open at
    the top left for "add a red square at the top left" (Wan's rotary positions are relative, and reach the
    gate only through the attention's weak edge effects). With `frame_position` it reads where each token
    sits, and the text-difference term too."""
    from imvedit.models.sda import SpatialDifferenceAttention, frame_positions

    torch.manual_seed(0)
    sda = SpatialDifferenceAttention(24, 4, "pos_neg", True, 4, "text", 16, text_difference=True,
                                     frame_position=frame_position)  # fmt: skip
    for p in sda.parameters():  # trained-like weights: the zero-initialised outputs would hide everything
        torch.nn.init.normal_(p, std=0.1)
    grid = (2, 4, 4)
    flat = torch.randn(1, 1, 24).expand(1, 32, 24)
    pos = frame_positions(grid, flat) if frame_position else None
    text = torch.randn(1, 16)
    with torch.no_grad():
        g = sda.gate(flat, flat * 0.5, torch.randn(1, 24), text, pos)
        d = sda.text_delta(flat * 0.5, flat, text, pos)
    for per_token in (g, d):
        spread = (per_token - per_token.mean(1, keepdim=True)).abs().max().item()
        assert (spread > 1e-3) == frame_position, spread


def test_frame_positions_are_the_frame_s_not_the_clip_s():
    from imvedit.models.sda import POSITION_FREQUENCIES, frame_positions

    pos = frame_positions((3, 4, 6), torch.zeros(()))
    assert pos.shape == (3 * 4 * 6, 4 * POSITION_FREQUENCIES)
    frames = pos.reshape(3, 24, -1)
    assert torch.equal(frames[0], frames[2])  # every frame the same: a place, not a time
    assert len({tuple(row.tolist()) for row in frames[0]}) == 24  # every place in a frame its own
    # relative to the frame, so the same at any size: token (0, 0) of a 2x2 grid and (1, 1) of a 6x6 grid share
    # a centre, (0.25, 0.25) of the frame
    assert torch.allclose(frame_positions((1, 2, 2), pos)[0], frame_positions((1, 6, 6), pos)[7], atol=1e-6)


def test_changed_tokens_marks_the_patches_where_the_pair_differs():
    from imvedit.training.flow_matching import CHANGE_THRESHOLD, changed_tokens

    source = torch.randn(2, 4, 1, 8, 8)
    target = source.clone()
    target[0, :, :, 2:4, 4:6] += 1.0  # one whole 2x2 patch of pair 0
    target[1] += CHANGE_THRESHOLD / 2  # pair 1: a change below the threshold everywhere
    changed = changed_tokens(source, target, (1, 2, 2))
    assert changed.shape == (2, 1, 4, 4)
    assert changed[0, 0, 1, 2] == 1 and changed.sum() == 1


def test_changed_share_is_each_tokens_share_of_edited_positions():
    """The gate's target: a token whose patch the edit only grazes gets its share, not 0 or 1, and the weak
    change a VAE spreads around an edit is not part of it (though it counts as a change for changed_tokens)."""
    from imvedit.training.flow_matching import CHANGE_THRESHOLD, EDIT_THRESHOLD, changed_share, changed_tokens

    source = torch.randn(2, 4, 1, 8, 8)
    target = source.clone()
    target[0, :, :, 2:4, 4:6] += 1.0  # the whole 2x2 patch of token (1, 2)
    target[0, :, :, 0, 0] += 1.0  # one of token (0, 0)'s four positions
    target[0, :, :, 4:6, 0:2] += (CHANGE_THRESHOLD + EDIT_THRESHOLD) / 2  # token (2, 0): a spill, not an edit
    target[1] += CHANGE_THRESHOLD / 2  # pair 1: a change below both thresholds everywhere
    share = changed_share(source, target, (1, 2, 2))
    assert share.shape == (2, 1, 4, 4)
    assert share[0, 0, 1, 2] == 1 and share[0, 0, 0, 0] == 0.25 and share.sum() == 1.25
    assert changed_tokens(source, target, (1, 2, 2))[0, 0, 2, 0] == 1
    assert changed_share(source, target, (1, 2, 2), CHANGE_THRESHOLD)[0, 0, 2, 0] == 1


def test_gate_supervision_teaches_the_gate_where_the_pairs_change(tiny_base):
    """Pairs that change in one corner only: with the gate loss the gate opens there and stays shut
    elsewhere; with the edit loss alone, after the same steps, it does not separate them as well."""
    base = tiny_base.transformer

    def gate_contrast(weight):
        torch.manual_seed(0)
        adapter = ImVideoEditAdapter.for_base(base)
        model = ImVideoEditTransformer(base, adapter)
        opt = torch.optim.AdamW(adapter.parameters(), lr=3e-3, weight_decay=0.0)
        gen = torch.Generator().manual_seed(0)
        empty, empty_gate = torch.zeros(1, 7, 16), torch.zeros(1, 16)

        def pairs(seed):
            _, src, text, gate_text = inputs(batch=4, frames=1, seed=seed)
            target = src.clone()
            target[..., :4, :4] = 1 - src[..., :4, :4]  # the top-left quarter changes, the rest is kept
            return src, target, text, gate_text

        for step in range(40):
            src, target, text, gate_text = pairs(step)
            loss = flow_matching_loss(
                model, source_latents=src, target_latents=target, text=text, gate_text=gate_text, empty_text=empty,
                empty_gate_text=empty_gate, generator=gen, text_dropout=0.0, source_dropout=0.0, gate_weight=weight,
            )  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            src, target, text, gate_text = pairs(1000)  # pairs it never saw, half noised
            noisy = 0.5 * target + 0.5 * torch.randn(target.shape, generator=gen)
            model(
                noisy, torch.tensor([500.0] * 4), text, model.encode_source(src, empty), gate_text, collect_gates=True
            )
            gate = model.last_gate_map()  # (4, 1, 4, 4) tokens; the changed ones are [:2, :2]
        model.detach()
        inside = gate[..., :2, :2].mean()
        outside = (gate.sum((-1, -2)) - gate[..., :2, :2].sum((-1, -2))).mean() / 12
        return float(inside - outside)

    supervised, unsupervised = gate_contrast(1.0), gate_contrast(0.0)
    assert supervised > 0.15, (supervised, unsupervised)  # measured: 0.24 against 0.04 without the loss
    assert supervised > unsupervised + 0.1, (supervised, unsupervised)


def test_gate_threshold_sets_what_the_gates_target_counts_as_edited(tiny_base):
    """The same batch and draws: a threshold above every change the pair makes leaves the gate a target of
    zeros, which gives another loss than the default's, where the changed quarter is a target of ones."""
    adapter = ImVideoEditAdapter.for_base(tiny_base.transformer)
    for name, p in adapter.named_parameters():
        if "gate_out.bias" in name:
            p.data.fill_(1.0)  # open 0.73, not the initial 0.5, where BCE is log 2 whatever the target
    model = ImVideoEditTransformer(tiny_base.transformer, adapter)
    _, src, text, gate_text = inputs(batch=2, frames=1, seed=0)
    target = src.clone()
    target[..., :4, :4] += 1.0  # a change of 1 per channel in one quarter

    def loss(threshold):
        return flow_matching_loss(
            model, source_latents=src, target_latents=target, text=text, gate_text=gate_text,
            empty_text=torch.zeros(1, 7, 16), empty_gate_text=torch.zeros(1, 16), generator=torch.Generator().manual_seed(0),
            text_dropout=0.0, source_dropout=0.0, gate_weight=1.0, gate_threshold=threshold,
        ).item()  # fmt: skip

    with torch.no_grad():
        assert loss(0.5) == loss(0.9)  # both count the quarter, and nothing else
        assert loss(2.0) != loss(0.5)  # nothing counts


def test_edit_loss_weight_weighs_the_positions_the_pair_changes(tiny_base):
    """With edit_weight w the loss is the squared error's mean with the changed quarter counted 1 + w times, each
    position against its own velocity target; with 0 it is the plain mean. The source is read before dropout."""
    model = ImVideoEditTransformer(tiny_base.transformer, ImVideoEditAdapter.for_base(tiny_base.transformer))
    _, src, text, gate_text = inputs(batch=2, frames=1, seed=0)
    target = src.clone()
    target[..., :4, :4] += 1.0  # a change of 1 per channel in one quarter
    seen = {}

    def forward(noisy, timestep, *rest, **kw):  # predicts zero velocity; keeps what it was given
        seen["noisy"], seen["sigma"] = noisy, (timestep / 1000.0).view(-1, 1, 1, 1, 1)
        return torch.zeros_like(noisy)

    def loss(weight):
        return flow_matching_loss(
            model, source_latents=src, target_latents=target, text=text, gate_text=gate_text,
            empty_text=torch.zeros(1, 7, 16), empty_gate_text=torch.zeros(1, 16), generator=torch.Generator().manual_seed(0),
            text_dropout=0.0, source_dropout=1.0, forward=forward, edit_weight=weight,
        ).item()  # fmt: skip

    with torch.no_grad():
        plain, weighted = loss(0.0), loss(3.0)
        s = seen["sigma"]
        velocity = (seen["noisy"] - (1 - s) * target) / s - target  # noise - target, recovered from the input
        error = velocity.square()
        w = torch.ones_like(error[:, :1])
        w[..., :4, :4] = 4.0
    assert plain == pytest.approx(error.mean().item(), rel=1e-5)
    assert weighted == pytest.approx(((error * w).sum() / (w.sum() * error.shape[1])).item(), rel=1e-5)
    assert weighted != pytest.approx(plain, rel=1e-3)


def test_a_low_noise_share_draws_that_share_of_sigmas_at_its_own_shift(tiny_base):
    """sigma_mix (share, shift): that share of a batch's sigmas comes from the other shift. At shift 12 about 8 %
    of sigmas fall below 0.5 (u < 0.5 / 6.5); uniform, half do; mixed half and half, the mean of the two."""
    below = lambda s: (s < 0.5).float().mean().item()  # noqa: E731
    plain = sample_sigmas(20_000, 12.0, torch.Generator().manual_seed(0))
    mixed = sample_sigmas(20_000, 12.0, torch.Generator().manual_seed(0), mix=(0.5, 1.0))
    assert abs(below(plain) - 0.077) < 0.01
    assert abs(below(mixed) - (0.077 + 0.5) / 2) < 0.015
    low, high = 0.0, 0.875  # a low-noise expert's range: every draw stays inside it
    ranged = sample_sigmas(5_000, 12.0, torch.Generator().manual_seed(1), (low, high), mix=(0.5, 1.0))
    assert ranged.min() >= low and ranged.max() < high
    # the loss draws its sigmas so: the model sees the mixed draw's timesteps
    model = ImVideoEditTransformer(tiny_base.transformer, ImVideoEditAdapter.for_base(tiny_base.transformer))
    _, src, text, gate_text = inputs(batch=64, frames=1, h=4, w=4, seed=0)
    seen = []

    def forward(noisy, timestep, *rest, **kw):
        seen.append(timestep / 1000.0)
        return torch.zeros_like(noisy)

    for mix in ((0.0, 1.0), (1.0, 1.0)):
        with torch.no_grad():
            flow_matching_loss(
                model, source_latents=src, target_latents=src + 1, text=text, gate_text=gate_text,
                empty_text=torch.zeros(1, 7, 16), empty_gate_text=torch.zeros(1, 16),
                generator=torch.Generator().manual_seed(0), text_dropout=0.0, source_dropout=0.0, shift=12.0,
                forward=forward, sigma_mix=mix,
            )  # fmt: skip
    assert below(seen[0]) < 0.2 and below(seen[1]) > 0.3  # 64 draws: 8 % against 50 %


def test_rope_is_wans_interleaved_rotation(tiny_base):
    """The complex-product rotary equals Wan's real form: channels (2i, 2i+1) turned by one angle."""
    frames, h, w = 2, 3, 4
    cos, sin = tiny_base.transformer.rope(torch.zeros(1, 4, frames, 2 * h, 2 * w))
    x = torch.randn(2, h * w, 2, cos.shape[-1], generator=torch.Generator().manual_seed(0))
    x1, x2 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, : h * w, :, 0::2], sin[:, : h * w, :, 1::2]
    expected = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    got = _rope(x, frame_rope((cos, sin), h * w))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(got, x)  # positions past the first do turn


def test_update_folded_into_the_output_projection_is_the_whole_update(tiny_base):
    """The branches' difference rides on the block's own to_out matmul (to_out is linear and the gate is one
    number per token): block 0's attention output in an edit pass is the plain one plus the SDA's whole
    update, to_out of the difference without the bias, plus the rest."""
    base = tiny_base.transformer
    model = ImVideoEditTransformer(base, randomize_adapter(ImVideoEditAdapter.for_base(base)))
    attn, sda = base.blocks[0].attn1, model.adapter.sda["0"]
    seen = {}
    handles = [
        attn.register_forward_hook(lambda m, a, out: seen.setdefault("attention", []).append(out)),
        sda.register_forward_hook(lambda m, a, out: seen.setdefault("sda", out)),
    ]
    x, src, text, gate_text = inputs(frames=3)
    t = torch.tensor([500.0])
    with torch.no_grad():
        features = model.encode_source(src, torch.zeros(1, 7, 16), prepare=True)
        seen.clear()
        model(x, t, text, features, gate_text)
        base(x, t, text, return_dict=False)  # a plain pass: block 0 reads the same input
    for h in handles:
        h.remove()
    edited, plain = seen["attention"]
    inner, outer, _ = seen["sda"]
    assert inner is not None and inner.abs().max() > 1e-3  # the fold is exercised, not skipped
    torch.testing.assert_close(edited, plain + sda.update(attn, inner, outer), rtol=0, atol=1e-5)
