"""`imvedit edit --dry-run`: the device memory of an edit, planned from the configs alone.

An edit runs in phases, and the device peak is the largest of what each phase keeps resident:

1. text: UMT5 encodes 4 prompts (prompt, gate prompt, empty, negative), padded to the base's prompt
   length; then it leaves the device.
2. vae_encode: the VAE encodes the whole clip.
3. source: per window, when it is first denoised, the frozen transformer runs once on the source (batch
   1, t = 0, empty prompt) and records per SDA block its layer-normed input and, per adapter branch
   ("pos", "neg"), the source keys (normed, rotary) and values: 1 + 2 x branches tensors of (tokens,
   width) in the compute dtype. Not with `source_cache=recompute`.
4. denoise: each window's forward(s) with text guidance, reading the recorded source.
5. vae_decode: the VAE decodes the latents (the source cache is freed first).

The options (`MemoryOptions`) say where things live: `source_cache` device (every window's cache on the
device for the whole denoise), cpu (pinned host memory; on the device the block running and the next,
prefetched) or recompute (no cache: each edit forward runs the source as one more row); `cfg_batch` on
(the guidance branches that read one source in one batch) or off (one forward per branch); `offload`
none, model (one of text encoder / transformer / VAE on the device at a time) or group (block-level group
offloading with streams for the transformer and the text encoder; the VAE stays); `base_dtype` bf16 or
fp8 (the frozen transformer stored in fp8 by diffusers' layerwise casting); `sda_chunking` off or on (each
block's SDA runs a window's latent frames in up to `SDA_CHUNKS` pieces: it is per frame, so its working set
shrinks by as much for the same output); `vae_tiling`.

Weights are counted exactly (the modules are built on the meta device). Activations are arithmetic: for
each phase, what the code keeps alive at its largest point, read off diffusers' `transformer_wan.py`,
imvedit's `models/processor.py` and `models/sda.py`, and (for the VAE) `vae_plan.py`; `measure.py` runs the
real modules on the meta device under a live-storage tracker and the tests hold the two within 10 %. Sizes
are GiB.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..errors import UsageError
from ..pipeline.pipeline_imvedit import temporal_windows
from .spec import BaseSpec, weight_bytes
from .vae_plan import VaeShape, decode_bytes, encode_bytes

GIB = 1024**3
BF16, FP32 = 2, 4
PROMPTS = 4  # prompt, gate prompt, empty, negative: encoded together
TILING_AREA = 832 * 480  # `imvedit edit` tiles the VAE above this working area unless told otherwise
HEADROOM = 0.9  # a plan fits when its peak is at most this share of the device's memory (see `fits`)

CHOICES = {  # each option's values, fastest first
    "source_cache": ("device", "cpu", "recompute"),
    "cfg_batch": ("on", "off"),
    "offload": ("none", "model", "group"),
    "base_dtype": ("bf16", "fp8"),
    "sda_chunking": ("off", "on"),
}
SDA_CHUNKS = 8  # the pieces `sda_chunking` on cuts a window's latent frames into
# How much slower than the fastest each value makes an edit, roughly: only the order of the products is
# used, to try the option sets from the cheapest in time. The cpu cache streams 2 blocks per step on a
# side stream; recompute runs the source as one more row of every forward; cfg off runs batch-1 forwards;
# model offload moves each model once per edit, group offload the whole transformer every forward; fp8
# casts each layer before it runs; the SDA in pieces launches more, smaller kernels.
TIME_COST = {
    "source_cache": {"device": 1.0, "cpu": 1.02, "recompute": 1.4},
    "cfg_batch": {"on": 1.0, "off": 1.1},
    "offload": {"none": 1.0, "model": 1.05, "group": 1.2},
    "base_dtype": {"bf16": 1.0, "fp8": 1.15},
    "sda_chunking": {"off": 1.0, "on": 1.03},
}


@dataclass(frozen=True)
class EditShape:
    """What is edited: the working size, the clip's length and the sampling that sets the batch."""

    width: int
    height: int
    frames: int  # video frames; the pipeline pads to 4k + 1
    window: int | None = 81  # video frames the model sees at once (None: all)
    overlap: int = 16
    guidance: bool = True  # text guidance (a negative branch); False when the guidance scale is 1
    source_guidance: bool = False  # a third branch without the source, and its own (null) source cache

    @property
    def latent_frames(self) -> int:
        return (self.frames + (-(self.frames - 1)) % 4 - 1) // 4 + 1

    def windows(self) -> list[tuple[int, int]]:
        """The latent-frame windows, as `ImVideoEditPipeline.latent_windows` cuts them."""

        length = self.latent_frames
        if self.window is None:
            return [(0, length)]
        window = max(1, (self.window - 1) // 4 + 1)
        overlap = min(window - 1, max(int(self.overlap > 0), -(-self.overlap // 4)))
        return temporal_windows(length, window, overlap)


@dataclass(frozen=True)
class MemoryOptions:
    source_cache: str = "device"
    cfg_batch: str = "on"
    offload: str = "none"
    base_dtype: str = "bf16"
    sda_chunking: str = "off"
    vae_tiling: bool = False

    @property
    def sda_chunks(self) -> int:
        return SDA_CHUNKS if self.sda_chunking == "on" else 1

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in (*CHOICES, "vae_tiling")}


@dataclass
class Plan:
    """Device memory of one option set: per component and per phase (GiB)."""

    options: MemoryOptions
    components: dict[str, float]
    phases: dict[str, float]
    detail: dict = field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return max(self.phases.values())

    @property
    def dominant(self) -> str:
        """The phase that sets the peak."""
        return max(self.phases, key=self.phases.get)


# ---------------------------------------------------------------------------------------------------
# The transformer: one forward's activations
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Transformer:
    width: int  # heads x head_dim
    head_dim: int
    ffn: int
    text_dim: int
    channels: int
    patch: tuple[int, int, int]
    branches: int  # the adapter's SDA branches (pos_neg: 2, zero_out: 1)
    sda_blocks: int

    @classmethod
    def of(cls, spec: BaseSpec, weights: dict) -> _Transformer:
        c = spec.config("transformer")
        heads, head_dim = c.get("num_attention_heads", 40), c.get("attention_head_dim", 128)
        return cls(
            heads * head_dim, head_dim, c.get("ffn_dim", 13824), c.get("text_dim", 4096),
            c.get("in_channels", 16), tuple(c.get("patch_size", (1, 2, 2))), weights["branches"],
            weights["sda_blocks"],
        )  # fmt: skip

    def block_bytes(self, tokens: int) -> int:
        """One SDA block's recorded source: the normed input and each branch's keys and values."""
        return (1 + 2 * self.branches) * tokens * self.width * BF16

    def forward_base(self, tokens: int, rows: int, prompt_tokens: int) -> int:
        """What lives through a whole forward beside the block running: the residual stream, the rotary
        tables (fp32 cos and sin, (1, tokens, 1, head_dim)), the text (as given and projected to the width)
        and the per-block gates kept for the gate map (fp32, one value per token)."""
        stream = rows * tokens * self.width * BF16
        rope = 2 * tokens * self.head_dim * FP32
        text = rows * prompt_tokens * (self.text_dim + self.width) * BF16
        gates = self.sda_blocks * rows * tokens * FP32
        return stream + rope + text + gates

    def edit_block(self, tokens: int, rows: int, recompute: int = 0, piece: float = 1.0) -> int:
        """The largest working set inside one SDA block of an edit forward with `rows` edited rows (and
        `recompute` source rows after them), in units of one row's (tokens, width) bf16 tensor:

        - attn1 (the block's own processor): the normed input, the q/k/v the hooks stash for the SDA, the
          normed q and RMS norm of k, which on the meta device (no fused kernel) is a float32 copy and two
          float32 products: 1 + 3 + 1 + 6 = 11 per row;
        - the SDA, which runs in the pre-hook of attn1's output projection, for the edited rows: beside the
          normed input, the stashed q/k/v, the block's own rotated q and k (its processor's locals while it
          calls `to_out`), its attention output and the layer-normed input (8 per row), every branch's
          low-rank q/k/v updates (3 per branch), the normed and rotated q (1), and RMS norm of k + its update
          (1 + 6): 11 per branch and row; with `recompute`, the source rows' keys and values through the
          branches (2 per branch) too;
        - the feed-forward: the stream after attention, the cross-attention's output and the normed input
          (3 per row) and the GELU-tanh's input and output (2 x ffn / width per row);
        - the block's end: 10 per row (the float32 residual sums).

        With the SDA in pieces (`piece`: the share of the frames one piece holds), the 11 per branch and row
        are one piece's, beside the update of every frame filled piece by piece (2 per row: the part before
        the output projection and the part after).
        """
        total = rows + recompute
        per_branch = 11 * self.branches * rows
        sda = 8 * total + 2 * self.branches * recompute + (per_branch if piece >= 1 else 2 * rows + per_branch * piece)
        ffn = 3 * total + 2 * total * self.ffn / self.width
        units = max(11 * total, sda, ffn, 10 * total)
        return int(units * tokens * self.width * BF16)

    def record_block(self, tokens: int) -> tuple[int, int]:
        """The source stream (one row): the largest working set inside an SDA block before its record is
        kept (attn1, then `source_kv`: 6 + 2 branch updates per branch + RMS norm of k, 9 per branch), and
        after it (the feed-forward, the block's end)."""
        unit = tokens * self.width * BF16
        before = max(11, 6 + 9 * self.branches) * unit
        after = max(3 + 2 * self.ffn / self.width, 10) * unit
        return int(before), int(after)


# ---------------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------------


def _geometry(spec: BaseSpec, shape: EditShape, t: _Transformer) -> dict:
    vae = VaeShape.from_config(spec.config("vae"))
    s = vae.scale_factor_spatial
    if shape.width % (s * t.patch[2]) or shape.height % (s * t.patch[1]):
        m = s * t.patch[1]
        raise UsageError(f"--size {shape.width}x{shape.height}: this base needs multiples of {m}.")
    grid = (shape.height // s // t.patch[1]) * (shape.width // s // t.patch[2])
    windows = shape.windows()
    latent = t.channels * shape.latent_frames * (shape.height // s) * (shape.width // s)
    return {
        "vae": vae,
        "windows": windows,
        "tokens": max(e - s_ for s_, e in windows) // t.patch[0] * grid,  # the longest window's
        "frames": max(e - s_ for s_, e in windows) // t.patch[0],
        "latent_elements": latent,
    }


def forward_batches(shape: EditShape, cfg_batch: str) -> list[int]:
    """The batch of each forward of one window's step: the branches that read one source run together with
    cfg on; (prompt, source) + (negative, source), and (negative, no source) with source guidance."""
    with_source = 1 + (shape.guidance or shape.source_guidance)
    groups = [with_source] + ([1] if shape.source_guidance else [])
    return groups if cfg_batch == "on" else [1] * sum(groups)


def plan_edit(spec: BaseSpec, shape: EditShape, options: MemoryOptions) -> Plan:
    """The device peak of each component and phase of an edit with `options`."""
    w = weight_bytes(spec, options.base_dtype)
    if w["sda_blocks"] == 0 or spec.config("adapter").get("source_stream", "cached") != "cached":
        raise UsageError(
            "The memory plan covers adapters with a cached source stream (--arch imvedit, per-frame).",
            "Plan with the default adapter (drop --adapter), or measure on the device.",
        )
    t = _Transformer.of(spec, w)
    g = _geometry(spec, shape, t)
    group = options.offload == "group"  # then what group offloading keeps of each model
    transformer = w["transformer_group"] if group else w["transformer"]
    frames, h, wd, tiling = shape.latent_frames * 4 - 3, shape.height, shape.width, options.vae_tiling
    components = {
        "transformer_weights": transformer,
        "adapter_weights": w["adapter"],
        "text_encoder": w["text_encoder_group" if group else "text_encoder"]
        + _text_encoder_activations(spec.config("text_encoder"), spec.prompt_tokens),
        "vae_encode": w["vae"] + encode_bytes(g["vae"], frames, h, wd, tiling),
        "vae_decode": w["vae"] + decode_bytes(g["vae"], shape.latent_frames, h, wd, tiling),
        "source_cache": _cache(t, g, shape, options),
        "step": _step(t, g["tokens"], g["frames"], shape, options, spec.prompt_tokens),
        "source_stream": _record(t, g, shape, options, spec.prompt_tokens),
        # the source latents (bf16), the latents and the blended prediction (fp32), the prompts' embeddings
        "latents": g["latent_elements"] * (BF16 + 2 * FP32) + PROMPTS * spec.prompt_tokens * (t.text_dim * BF16 + FP32),
    }
    phases = _phases(components, w, options, transformer)
    gib = lambda v: round(v / GIB, 2)  # noqa: E731
    return Plan(
        options,
        {k: gib(v) for k, v in components.items()},
        {k: gib(v) for k, v in phases.items()},
        {"tokens_per_window": g["tokens"], "windows": len(g["windows"]), "sda_blocks": t.sda_blocks},
    )


def _cache(t: _Transformer, g: dict, shape: EditShape, options: MemoryOptions) -> int:
    """The source cache on the device while denoising: every window's (and the null source's) with
    `device`, the block running and the one prefetched with `cpu`, nothing with `recompute`."""
    block = t.block_bytes(g["tokens"])
    sources = 2 if shape.source_guidance else 1
    every = len(g["windows"]) * sources * t.sda_blocks * block
    return {"device": every, "cpu": 2 * block, "recompute": 0}[options.source_cache]


def _step(
    t: _Transformer, tokens: int, frames: int, shape: EditShape, options: MemoryOptions, prompt_tokens: int
) -> int:
    """The largest forward of a step (with `recompute`, each has one more row: the source); `frames`: the
    window's latent frames, which the SDA may run in pieces."""
    r = 1 if options.source_cache == "recompute" else 0
    piece = -(-frames // options.sda_chunks) / frames
    return max(
        t.forward_base(tokens, rows + r, prompt_tokens) + t.edit_block(tokens, rows, r, piece)
        for rows in forward_batches(shape, options.cfg_batch)
    )


def _record(t: _Transformer, g: dict, shape: EditShape, options: MemoryOptions, prompt_tokens: int) -> int:
    """Recording one window's source, above the cache it leaves behind. With the device cache the record
    grows block by block, so the peak is at the last SDA block (or the feed-forward after it); with the
    host cache each block's record leaves as soon as it is made."""
    if options.source_cache == "recompute":
        return 0
    block = t.block_bytes(g["tokens"])
    before, after = t.record_block(g["tokens"])
    peak = max(before - block, after) if options.source_cache == "device" else max(before, after)
    return peak + t.forward_base(g["tokens"], 1, prompt_tokens)


def _phases(c: dict, w: dict, options: MemoryOptions, transformer: int) -> dict:
    """What each phase keeps on the device. Without offload everything stays but the text encoder, which
    comes for the prompts and goes; model offload keeps one model (and the adapter); group offload keeps
    the VAE and streams the transformer's blocks (`transformer` is then what it keeps of it)."""
    adapter = c["adapter_weights"]
    resident = {  # weights on the device beside the model running, per phase
        "none": {"text": transformer + adapter + w["vae"], "vae": transformer + adapter, "denoise": adapter + w["vae"]},
        "model": {"text": adapter, "vae": adapter, "denoise": adapter},
        "group": {"text": adapter + w["vae"], "vae": adapter, "denoise": adapter + w["vae"]},
    }[options.offload]
    latents = c["latents"]
    phases = {
        "text": resident["text"] + c["text_encoder"],
        "vae_encode": resident["vae"] + c["vae_encode"] + latents,
        "denoise": resident["denoise"] + transformer + latents + c["source_cache"] + c["step"],
        "vae_decode": resident["vae"] + c["vae_decode"] + latents,
    }
    if options.source_cache != "recompute":
        cache = c["source_cache"] if options.source_cache == "device" else 0
        phases["source"] = resident["denoise"] + transformer + latents + cache + c["source_stream"]
    return phases


def _text_encoder_activations(config: dict, tokens: int) -> int:
    """UMT5 encoding the prompts: in self-attention (transformers' sdpa path) the hidden states, the normed
    copy and q/k/v (6), the relative position bias per head (L x L) and, broadcast to every prompt with the
    padding mask, the additive bias and its contiguous copy; in the gated-GELU feed-forward the residual
    and normed copies (4) and 5 of the ffn width (the two projections, GELU-new's temporaries, the product)."""
    d, heads, d_ff = config.get("d_model", 4096), config.get("num_heads", 64), config.get("d_ff", 10240)
    hidden = PROMPTS * tokens * d * BF16
    bias = PROMPTS * heads * tokens * tokens * BF16
    attention = 6 * hidden + bias // PROMPTS + 2 * bias
    ffn = 4 * hidden + 5 * PROMPTS * tokens * d_ff * BF16
    return max(attention, ffn)


# ---------------------------------------------------------------------------------------------------
# auto: the fastest option set that fits
# ---------------------------------------------------------------------------------------------------


def usable_gib(gpu_memory_gib: float) -> float:
    """What a plan may use of a device: the rest is the CUDA context, kernels' workspaces and the caching
    allocator's fragmentation, none of which a tensor-by-tensor plan sees."""
    return gpu_memory_gib * HEADROOM


def default_gpu_memory_gib() -> float:
    """The free memory of the current CUDA device; 24 GiB without one."""
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free / GIB
    return 24.0


@dataclass
class Choice:
    chosen: Plan
    fits: bool
    gpu_memory_gib: float
    alternatives: list[tuple[Plan, bool]]  # every option set tried, fastest first, up to the chosen one


def choose(
    spec: BaseSpec, shape: EditShape, requested: dict[str, str | None], gpu_memory_gib: float, vae_tiling=None
) -> Choice:
    """For each option in `requested` left at None or "auto", try its values from the cheapest option set in
    time (TIME_COST) and keep the first whose plan fits `gpu_memory_gib`; options given are kept. With none
    fitting, the set with the lowest peak is chosen (and `fits` is False)."""
    for k, v in requested.items():
        if v not in (None, "auto") and v not in CHOICES[k]:
            raise UsageError(f"Unknown --{k.replace('_', '-')} {v!r}.", f"Use auto or one of {', '.join(CHOICES[k])}.")
    tiling = vae_tiling if vae_tiling is not None else shape.width * shape.height > TILING_AREA
    axes = {k: CHOICES[k] if requested.get(k) in (None, "auto") else (requested[k],) for k in CHOICES}
    sets = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    sets.sort(key=lambda o: _cost(o))
    limit = usable_gib(gpu_memory_gib)
    tried = []
    for values in sets:
        plan = plan_edit(spec, shape, MemoryOptions(**values, vae_tiling=tiling))
        tried.append((plan, plan.peak_gib <= limit))
        if tried[-1][1]:
            return Choice(plan, True, gpu_memory_gib, tried)
    lowest = min(tried, key=lambda pf: pf[0].peak_gib)[0]
    return Choice(lowest, False, gpu_memory_gib, tried)


def _cost(values: dict) -> float:
    cost = 1.0
    for k, v in values.items():
        cost *= TIME_COST[k][v]
    return cost
