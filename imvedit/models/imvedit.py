"""ImVideoEdit on a frozen diffusers `WanTransformer3DModel`: the whole method in one file.

Reading order, smallest piece first:

1. `SpatialDifferenceAttention` - the trainable per-frame block of one transformer block: the "pos" and
   "neg" low-rank branches over the frozen 3D-attention projections, the aligned difference term and
   the text-guided, timestep-aware gate. It returns the predicted difference and the gate.
2. `ImVideoEditAdapter` - every trainable weight (and nothing else), with its switches as config.
3. `SDAProcessor` - a diffusers attention processor for `attn1` that runs the block's own processor
   unchanged and then *updates* the target tokens with `g * delta`.
4. `ImVideoEditTransformer` - attaches an adapter to a base with processors and hooks (no forked
   `forward`), runs the frozen source stream once (`encode_source`) and the edit stream (`forward`).

Design notes live in docs/method.md; the decisions the paper leaves open are explained there.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

from ..errors import UsageError
from .lora import LowRank
from .source import BlockSource, RecomputedSource, SourceFeatures, source_rows
from .weights_file import recorded_base, stamp_adapter_file

BRANCH_MODES = ("pos_neg", "zero_out")
GATE_MODES = ("text", "no_text", "none")
SOURCE_STREAMS = ("cached", "two_way")
# The architectures one adapter class covers (docs/method.md, "Baselines"). `sdedit` needs no adapter.
ARCHS = ("imvedit", "vifeedit", "concat", "per-frame")
# What an architecture changes in the switches' defaults; a switch the user sets still wins.
ARCH_DEFAULTS = {
    # the predecessor: the source in the sequence beside the target, no aligned term, no gate
    "vifeedit": {"source_stream": "two_way", "aligned_difference": False, "gate": "none"},
}


def frame_rope(rotary_emb: tuple[torch.Tensor, torch.Tensor], tokens_per_frame: int) -> torch.Tensor:
    """Frame 0's rotary positions, for every frame, as complex rotations (1, h*w, 1, head_dim/2).

    Wan's rotary embedding is interleaved: channels (2i, 2i+1) of a head turn by one angle. That is a complex
    product, one pass over the tensor instead of the half-splitting, four products and re-interleaving of
    the real form: the same result to float rounding, and the step cost in tests/benchmarks/bench_step_cost.py."""
    cos, sin = rotary_emb
    return torch.complex(cos[:, :tokens_per_frame, :, 0::2].float(), sin[:, :tokens_per_frame, :, 1::2].float())


def _rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding on (..., tokens, heads, head_dim), `rotation` from `frame_rope`."""
    turned = torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * rotation
    return torch.view_as_real(turned).flatten(-2).type_as(x)


# ---------------------------------------------------------------------------------------------------
# 1. The trainable block
# ---------------------------------------------------------------------------------------------------


class SpatialDifferenceAttention(nn.Module):
    """Predict-update for one transformer block, run per frame.

    *Predict*: queries from the target tokens of frame f; keys and values from that frame's source
    tokens next to the target tokens themselves (2 * h * w keys), with first-frame (2D) rotary positions
    so a source and a target token at the same (h, w) share a position. The frozen projections and q/k
    norms are the block's own (passed in, never copied); each branch adds its low-rank updates. With
    `pos_neg` the neg branch is subtracted, so at initialisation the two cancel exactly.
    The aligned term maps `LN(S_f) - LN(X_f)` token by token through a zero-initialised low-rank map.
    *Gate*: a per-token g in (0, 1) from the normalised token, the source token at the same position and
    the pooled instruction, modulated by the timestep embedding. *Update*: the target tokens get
    `g * attention_delta + (1 - g) * aligned_term` (`gate_mix`), or `g * (attention_delta + aligned_term)`.
    """

    def __init__(
        self,
        dim: int,
        rank: int,
        branches: str,
        aligned_difference: bool,
        aligned_rank: int,
        gate: str,
        gate_dim: int,
        gate_source: bool = True,
        gate_mix: bool = True,
    ):
        super().__init__()
        self.gate_mode = gate
        self.gate_mix = gate_mix and gate != "none" and aligned_difference
        names = ("pos", "neg") if branches == "pos_neg" else ("delta",)
        self.branches = nn.ModuleDict(
            {n: nn.ModuleDict({p: LowRank(dim, dim, rank) for p in ("q", "k", "v", "o")}) for n in names}
        )
        self.aligned = LowRank(dim, dim, aligned_rank) if aligned_difference else None
        if gate != "none":
            self.gate_token = nn.Linear(dim, gate_dim)
            # The source token at the same position: "is this the blue circle the instruction names?"
            self.gate_source = nn.Linear(dim, gate_dim) if gate_source else None
            self.gate_time = nn.Linear(dim, 2 * gate_dim)
            self.gate_out = nn.Linear(gate_dim, 1)
            # g = sigmoid(0) = 0.5 everywhere at the start; the weights learn where the edit applies.
            nn.init.zeros_(self.gate_out.weight)
            nn.init.zeros_(self.gate_out.bias)
            nn.init.zeros_(self.gate_time.weight)
            nn.init.zeros_(self.gate_time.bias)

    def gate(
        self, x_ln: torch.Tensor, s_ln: torch.Tensor, temb: torch.Tensor, text: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-token gate (batch, tokens, 1). `temb` is (batch, dim) or per token (batch, tokens, dim)."""
        if self.gate_mode == "none":
            return x_ln.new_ones(x_ln.shape[:-1] + (1,))
        h = self.gate_token(x_ln)
        if self.gate_source is not None:
            h = h + self.gate_source(s_ln)
        if self.gate_mode == "text" and text is not None:
            h = h + text[:, None, :]
        scale, shift = self.gate_time(F.silu(temb)).chunk(2, dim=-1)
        if temb.ndim == 2:
            scale, shift = scale[:, None], shift[:, None]
        h = h * (1 + scale) + shift
        return torch.sigmoid(self.gate_out(F.silu(h)))

    def low_rank(self, x: torch.Tensor, projections: str) -> list[torch.Tensor]:
        """Every branch's low-rank update of each projection in `projections` (e.g. "qkv") for input x, the
        branches stacked on a new leading axis: one (branches, *x.shape[:-1], out) tensor per projection.
        The down maps all read x, so they run as one matmul."""
        mods = [branch[p] for p in projections for branch in self.branches.values()]
        h = F.linear(x, torch.cat([m.down.weight for m in mods]))  # (..., maps * rank)
        h = h.reshape(-1, len(mods), mods[0].down.out_features).transpose(0, 1)  # (maps, tokens, rank)
        up = torch.stack([m.up.weight for m in mods]).transpose(1, 2)  # (maps, rank, out)
        out = torch.bmm(h, up).reshape(len(projections), len(self.branches), *x.shape[:-1], -1)
        return list(out.unbind(0))

    def source_kv(self, attn, src: BlockSource, grid, rope2d) -> tuple[torch.Tensor, torch.Tensor]:
        """The branches' source keys (normed, 2D rotary) and values, per frame and stacked over the branches:
        (branches, batch*f, hw, heads, head_dim) each.

        They depend on the source and the adapter's weights only, so inference computes them once per video
        (`BlockSource.kv`) and training, whose weights change every step, here at every call. RMS norm is
        per token, so norming the source and target keys apart is the same as norming [source, target]."""
        if src.kv is not None:
            return src.kv
        b, n, _ = src.mod.shape
        f, h, w = grid
        lk, lv = self.low_rank(src.mod, "kv")
        k = attn.norm_k(src.k + lk).reshape(-1, b * f, h * w, attn.heads, attn.inner_dim // attn.heads)
        v = (src.v + lv).reshape(-1, b * f, h * w, attn.heads, attn.inner_dim // attn.heads)
        return _rope(k, rope2d), v

    def attend(self, attn, x_mod, frozen, source_kv, grid, rope2d, backend=None) -> torch.Tensor:
        """Every branch's per-frame attention in one call (the branches stacked on the batch axis); returns
        (branches, batch, tokens, inner), before the output projection. A source of batch 1 serves every
        row of `x_mod` (the guidance branches share one source) without being copied."""
        b, n, _ = x_mod.shape
        f, h, w = grid
        nb = len(self.branches)
        k_s, v_s = source_kv
        bs = k_s.shape[1] // f  # the source's batch; it divides b

        def per_frame(t):  # (nb, b, f*hw, inner) -> (nb, b/bs, bs, f, hw, heads, head_dim)
            return t.reshape(nb, b // bs, bs, f, h * w, attn.heads, -1)

        def with_source(s, t):  # [source | target] keys or values of each frame: (nb*b*f, 2hw, heads, head_dim)
            s = s.reshape(nb, 1, bs, f, h * w, *s.shape[-2:]).expand(-1, b // bs, -1, -1, -1, -1, -1)
            return torch.cat([s, t], dim=4).flatten(0, 3)

        lq, lk, lv = self.low_rank(x_mod, "qkv")
        q = _rope(per_frame(attn.norm_q(frozen["q"] + lq)), rope2d).flatten(0, 3)
        k = with_source(k_s, _rope(per_frame(attn.norm_k(frozen["k"] + lk)), rope2d))
        v = with_source(v_s, per_frame(frozen["v"] + lv))
        out = dispatch_attention_fn(q, k, v, backend=backend)  # (nb*b*f, hw, heads, head_dim)
        return out.flatten(2, 3).type_as(x_mod).reshape(nb, b, n, -1)

    def forward(self, attn, x_mod, frozen, src: BlockSource, x_ln, grid, rope2d, temb, text, backend=None):
        """Returns (inner, outer, g): the update of the target tokens split around the block's frozen output
        projection, and the gate. `to_out(attention + inner) + outer` is the block's attention output with the
        update added: the projection is linear and g is one number per token, so the branches' difference
        rides on the 3D attention's own `to_out` matmul (its bias counted once) instead of one of its own.
        `inner` is (batch, tokens, inner_dim), or None for a single branch; `outer` is (batch, tokens, dim).

        With `gate_mix` the gate chooses per token between changing (g: the attention branches) and
        keeping the source (1 - g: the aligned difference), so g is where the edit applies. Without
        it the whole difference is scaled by g.
        """
        a = self.attend(attn, x_mod, frozen, self.source_kv(attn, src, grid, rope2d), grid, rope2d, backend)
        if "pos" in self.branches:
            a_pos, a_neg = a
            inner, outer = a_pos - a_neg, self.branches["pos"]["o"](a_pos) - self.branches["neg"]["o"](a_neg)
        else:
            inner, outer = None, self.branches["delta"]["o"](a[0])
        s_ln = source_rows(src.ln, x_ln.shape[0])
        g = self.gate(x_ln, s_ln, temb, text)
        inner = None if inner is None else g * inner
        if self.aligned is None:
            return inner, g * outer, g
        keep = self.aligned(s_ln - x_ln)
        if self.gate_mix:
            return inner, g * outer + (1 - g) * keep, g
        return inner, g * (outer + keep), g

    @staticmethod
    def update(attn, inner: torch.Tensor | None, outer: torch.Tensor) -> torch.Tensor:
        """The whole update of the target tokens, for a caller that cannot fold `inner` into the block's own
        output projection: `to_out(inner)` without its bias, plus `outer`."""
        if inner is None:
            return outer
        return F.linear(inner, _compute_weight(attn.to_out[0], inner.dtype)) + outer


def _frame_chunks(frames: int, chunks: int) -> list[tuple[int, int]]:
    """[f0, f1) ranges splitting `frames` latent frames into at most `chunks` pieces of equal length."""
    step = -(-frames // max(1, chunks))
    return [(f0, min(f0 + step, frames)) for f0 in range(0, frames, step)]


def _frames(inputs: tuple, f0: int, f1: int, grid: tuple[int, int, int]) -> tuple:
    """The SDA's inputs (x, frozen q/k/v, source, x_ln, temb) restricted to latent frames [f0, f1): the SDA is
    per frame, so a piece of the frames gives the same rows of its output as the whole."""
    f, h, w = grid
    x, frozen, src, x_ln, temb = inputs
    tokens = slice(f0 * h * w, f1 * h * w)
    return (
        x[:, tokens],
        {k: t[:, tokens] for k, t in frozen.items()},
        src.frames(f0, f1, f),
        x_ln[:, tokens],
        temb[:, tokens] if temb.ndim == 3 else temb,
    )


def _add_rows(t: torch.Tensor, update: torch.Tensor, recompute: int) -> torch.Tensor:
    """`t` with `update` added to its rows, all of them or all but the last `recompute` (the source stream's
    rows, which stay frozen)."""
    if recompute:
        return torch.cat([t[:-recompute] + update.type_as(t), t[-recompute:]])
    return t + update.type_as(t)


def _compute_weight(linear: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    """A frozen layer's weight for a matmul outside its own forward: diffusers' layerwise casting keeps it in
    fp8 between forwards, so it is cast here as the casting hook would (one layer, transiently)."""
    w = getattr(linear, "base_layer", linear).weight  # a LoRA-wrapped layer (diffusers/peft) keeps it there
    return w if w.dtype == dtype else w.to(dtype)


# ---------------------------------------------------------------------------------------------------
# 2. The adapter: every trainable weight, its switches as config
# ---------------------------------------------------------------------------------------------------


class ImVideoEditAdapter(ModelMixin, ConfigMixin):
    """The trainable part of ImVideoEdit. The constructor is the config (saved beside the weights).

    Build it for a base with `ImVideoEditAdapter.for_base(transformer, **switches)`.
    """

    config_name = "adapter_config.json"

    @register_to_config
    def __init__(
        self,
        num_layers: int,
        dim: int,
        text_dim: int,
        ffn_dim: int,
        rank: int = 32,  # rank of each branch's low-rank q/k/v/o updates
        branches: str = "pos_neg",  # "pos_neg": difference of two attentions; "zero_out": one branch, zero-init out
        aligned_difference: bool = True,  # low-rank map of LN(source) - LN(target), token by token
        aligned_rank: int = 32,  # rank of that map
        every_k_blocks: int = 1,  # SDA in blocks 0, k, 2k, ...
        gate: str = "text",  # "text": token + instruction + timestep; "no_text": token + timestep; "none": g = 1
        gate_dim: int = 64,  # width of the gate network; the instruction is projected to it once, shared
        gate_source: bool = True,  # the gate also reads the source token at the same position
        gate_mix: bool = True,  # g scales the attention branches and 1 - g the aligned (keep) term
        ffn_lora: bool = False,  # low-rank updates on each block's feed-forward too
        ffn_rank: int = 32,  # rank of those updates
        # low-rank updates on each block's text cross-attention (q, k, v, out): the adapter's own reading of
        # the prompt, for bases whose frozen cross-attention does not yet draw what the text names
        cross_lora: bool = False,
        cross_rank: int = 16,  # rank of those updates
        # "imvedit"; "vifeedit" (two-way source in the sequence); "concat" (source latents on the channels of a
        # widened, zero-initialised patch embedding + LoRA on the 3D attention); "per-frame" (imvedit's adapter
        # run on each frame alone: no attention across frames)
        arch: str = "imvedit",
        # "cached": the source stream runs once per video, one-way; "two_way": the source tokens sit beside the
        # target in one sequence (each half with its own 3D attention), re-run at every step, and the 2D
        # attention updates both halves
        source_stream: str = "cached",
        in_channels: int = 16,  # the base's latent channels (concat's patch embedding reads the source's)
        patch_size: list[int] | None = None,  # the base's patch size (concat's patch embedding); None: (1, 2, 2)
    ):
        super().__init__()
        self.validate()
        self.sda = nn.ModuleDict(
            {
                str(i): SpatialDifferenceAttention(
                    dim, rank, branches, aligned_difference, aligned_rank, gate, gate_dim, gate_source, gate_mix
                )
                for i in self.sda_layers
            }
        )
        self.gate_text = nn.Linear(text_dim, gate_dim) if gate == "text" and arch != "concat" else None
        self.patch_in, self.attn_lora = None, None
        if arch == "concat":
            # The widened patch embedding's new input channels, zero-initialised: the base's output at the start.
            patch = tuple(patch_size or (1, 2, 2))
            self.patch_in = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch, bias=False)
            nn.init.zeros_(self.patch_in.weight)
            self.attn_lora = nn.ModuleDict(
                {
                    str(i): nn.ModuleDict({p: LowRank(dim, dim, rank) for p in ("q", "k", "v", "o")})
                    for i in range(num_layers)
                }
            )
        self.ffn = (
            nn.ModuleDict(
                {
                    str(i): nn.ModuleDict(
                        {"in": LowRank(dim, ffn_dim, ffn_rank), "out": LowRank(ffn_dim, dim, ffn_rank)}
                    )
                    for i in range(num_layers)
                }
            )
            if ffn_lora
            else None
        )
        self.cross = (  # attn2's keys and values read the text after the base projects it to `dim`
            nn.ModuleDict(
                {
                    str(i): nn.ModuleDict({p: LowRank(dim, dim, cross_rank) for p in ("q", "k", "v", "o")})
                    for i in range(num_layers)
                }
            )
            if cross_lora
            else None
        )

    def validate(self) -> None:
        c = self.config
        if c.branches not in BRANCH_MODES:
            raise UsageError(f"Unknown branches {c.branches!r}.", f"Use one of {', '.join(BRANCH_MODES)}.")
        if c.gate not in GATE_MODES:
            raise UsageError(f"Unknown gate {c.gate!r}.", f"Use one of {', '.join(GATE_MODES)}.")
        if c.arch not in ARCHS:
            raise UsageError(f"Unknown arch {c.arch!r}.", f"Use one of {', '.join(ARCHS)} (or sdedit, untrained).")
        if c.source_stream not in SOURCE_STREAMS:
            raise UsageError(f"Unknown source_stream {c.source_stream!r}.", f"Use one of {', '.join(SOURCE_STREAMS)}.")
        if c.source_stream == "two_way" and c.arch not in ("imvedit", "vifeedit"):
            raise UsageError(f"source_stream two_way does not apply to arch {c.arch}.", "Drop source_stream.")
        for name in ("rank", "aligned_rank", "gate_dim", "ffn_rank", "cross_rank", "every_k_blocks", "num_layers"):
            if getattr(c, name) < 1:
                raise UsageError(f"Adapter option {name} must be at least 1, got {getattr(c, name)}.")

    @classmethod
    def config_switches(cls) -> tuple[str, ...]:
        """The options a user may set; the rest of the config is read off the base."""
        return tuple(
            k
            for k in inspect.signature(cls.__init__).parameters
            if k not in ("self", "num_layers", "dim", "text_dim", "ffn_dim", "arch", "in_channels", "patch_size")
        )

    @property
    def sda_layers(self) -> list[int]:
        if self.config.arch == "concat":
            return []
        return list(range(0, self.config.num_layers, self.config.every_k_blocks))

    # The base an adapter was trained for ({name, fingerprint, transformer_config}), when it was loaded from
    # an imvedit adapter file; `ImVideoEditPipeline` refuses to pair it with another base.
    base_identity: dict | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> ImVideoEditAdapter:
        """diffusers' loader (as `DiffusionPipeline.from_pretrained` calls it for an exported pipeline's
        `adapter/` folder), then the checks of an imvedit adapter file: the weights must match their
        recorded hash, and the base they were trained for is kept for the pipeline to check."""
        adapter = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        base = recorded_base(pretrained_model_name_or_path, kwargs)
        if base is not None:  # a plain `save_pretrained` of an adapter without a base has nothing to check
            adapter.base_identity = base
        return adapter

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """diffusers' writer; the weights file then gets the metadata of an imvedit adapter file (format,
        base, payload hash) when the base is known, so loading it anywhere can be checked."""
        super().save_pretrained(save_directory, **kwargs)
        if self.base_identity is not None and kwargs.get("safe_serialization", True):
            stamp_adapter_file(self, save_directory, kwargs.get("variant"), self.base_identity)

    @classmethod
    def for_base(cls, transformer: WanTransformer3DModel, arch: str = "imvedit", **switches) -> ImVideoEditAdapter:
        c = transformer.config
        return cls(
            num_layers=c.num_layers,
            dim=c.num_attention_heads * c.attention_head_dim,
            text_dim=c.text_dim,
            ffn_dim=c.ffn_dim,
            arch=arch,
            in_channels=c.in_channels,
            patch_size=list(c.patch_size),
            **{**ARCH_DEFAULTS.get(arch, {}), **switches},
        )


# ---------------------------------------------------------------------------------------------------
# 3. The processor and the state one forward pass shares between hooks and processors
# ---------------------------------------------------------------------------------------------------


@dataclass
class _PassState:
    """What one base forward needs to share with the processors; set by `ImVideoEditTransformer`."""

    # "plain": the base alone; "record": source stream; "edit": target stream; "two_way": target and source
    # side by side in one sequence (source_stream two_way)
    mode: str = "plain"
    armed: bool = False  # set by ImVideoEditTransformer just before it calls the base
    grid: tuple[int, int, int] | None = None
    temb: torch.Tensor | None = None
    gate_text: torch.Tensor | None = None
    source: SourceFeatures | None = None
    recording: dict[int, BlockSource] = field(default_factory=dict)
    # record: keep each block's source as `kv` (inference) instead of raw; and where to keep it (None: here)
    prepare: bool = False
    store: torch.device | None = None
    # edit with --source-cache recompute: the last `recompute` rows of the batch are the source stream itself
    recompute: int = 0
    gates: list[torch.Tensor] = field(default_factory=list)
    collect_gates: bool = False
    fold: int = 1  # per-frame: frames folded into the batch (the gate map unfolds them)
    # edit: the SDA runs the latent frames in this many pieces, one after another (it is per frame, so the
    # output is the same); its working memory shrinks by as much (`--sda-chunking`, the memory plan)
    sda_chunks: int = 1


class SDAProcessor:
    """Wraps a block's own self-attention processor: the 3D attention runs exactly as in the base; in
    "edit" mode the target tokens are then updated with `g * delta` (inside the block's attention
    residual, so Wan's timestep gate on attention applies to both)."""

    def __init__(self, inner, index: int, sda: SpatialDifferenceAttention | None, state: _PassState):
        self.inner = inner
        self.index = index
        self.sda = sda
        self.state = state
        self.frozen: dict[str, torch.Tensor] = {}  # to_q/k/v outputs of this call, stashed by hooks
        self.block_input: torch.Tensor | None = None  # stashed by the block's pre-hook
        self.pending: tuple | None = None  # an edit call's (attn, hidden_states, rotary_emb) until `before_out`
        self.outer: torch.Tensor | None = None  # the update's part after the output projection

    # diffusers' `set_attention_backend` sets these on every attention processor: pass them to the block's own
    # processor, and run the SDA's per-frame attention with the same backend.
    @property
    def _attention_backend(self):
        return getattr(self.inner, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, backend):
        self.inner._attention_backend = backend

    @property
    def _parallel_config(self):
        return getattr(self.inner, "_parallel_config", None)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kw):
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        try:
            if self.state.mode == "two_way":
                return self._two_way(*args, **kw)
            if self.state.mode == "plain" or self.sda is None:
                return self.inner(*args, **kw)
            if self.state.mode == "record":
                out = self.inner(*args, **kw)
                self._record(attn, hidden_states, rotary_emb)
                return out
            self.pending = (attn, hidden_states, rotary_emb)
            out = self.inner(*args, **kw)  # the SDA runs in the output projection's pre-hook: `before_out`
            if self.pending is not None:
                raise RuntimeError("The block's attention processor never called to_out[0]; the SDA cannot run.")
            return self._add_outer(out)
        finally:  # nothing of this call outlives it: these are the size of the block's activations
            self.frozen.clear()
            self.block_input = self.pending = self.outer = None

    def _inputs(self, attn, hidden_states, rotary_emb):
        """What the SDA reads of this call: the frozen q/k/v, the layer-normed block input, frame 0's rotary
        positions, and the adapter's dtype (it may run wider than the base)."""
        for name, proj in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v)):
            if name not in self.frozen:  # fused projections bypass the hooks: compute what is missing
                self.frozen[name] = proj(hidden_states)
        x_ln = F.layer_norm(self.block_input.float(), self.block_input.shape[-1:]).type_as(hidden_states)
        f, h, w = self.state.grid
        return x_ln, frame_rope(rotary_emb, h * w), next(self.sda.parameters()).dtype

    def _record(self, attn, hidden_states, rotary_emb) -> None:
        """The source stream: keep what later edit passes read of this block."""
        st = self.state
        x_ln, rope2d, dtype = self._inputs(attn, hidden_states, rotary_emb)
        raw = BlockSource(x_ln, hidden_states, self.frozen["k"], self.frozen["v"])
        if st.prepare:  # inference: only what the branches read, already through them
            raw = BlockSource(x_ln.to(dtype), kv=self.sda.source_kv(attn, raw.to(dtype), st.grid, rope2d))
        st.recording[self.index] = raw if st.store is None else raw.stored(st.store)

    def before_out(self, attention: torch.Tensor) -> torch.Tensor:
        """The pre-hook of the block's `to_out[0]` in an edit pass: run the SDA, keep its `outer` part for
        `_add_outer`, and return the 3D attention's output with `inner` added."""
        attn, hidden_states, rotary_emb = self.pending
        self.pending = None
        st = self.state
        x_ln, rope2d, dtype = self._inputs(attn, hidden_states, rotary_emb)
        cast = lambda t: t.to(dtype)  # noqa: E731
        r = st.recompute  # rows of the source stream at the end of the batch, or 0
        rows = slice(None, -r) if r else slice(None)
        if r:  # the source stream of this very forward, through the branches, as a cache would hold it
            raw = BlockSource(x_ln[-r:], hidden_states[-r:], self.frozen["k"][-r:], self.frozen["v"][-r:])
            src = BlockSource(cast(raw.ln), kv=self.sda.source_kv(attn, raw.to(dtype), st.grid, rope2d))
        else:
            src = st.source.block(self.index, hidden_states.device)
            src = src if src.kv is not None else src.to(dtype)
        inputs = (
            cast(hidden_states[rows]),
            {k: cast(t[rows]) for k, t in self.frozen.items()},
            src,
            cast(x_ln[rows]),
            cast(st.temb[rows]),
        )
        gate_text = None if st.gate_text is None else cast(st.gate_text)
        spans = _frame_chunks(st.grid[0], st.sda_chunks)
        if len(spans) == 1:
            inner, self.outer, g = self.sda(
                attn, *inputs[:4], st.grid, rope2d, inputs[4], gate_text, self._attention_backend
            )
        else:
            inner, self.outer, g = self._sda_in_pieces(attn, inputs, spans, rope2d, gate_text)
        if st.collect_gates:  # kept in the graph when training supervises the gate (train.gate_supervision)
            st.gates.append(g.float())
        return attention if inner is None else _add_rows(attention, inner, r)

    def _sda_in_pieces(self, attn, inputs: tuple, spans: list, rope2d, gate_text) -> list:
        """The SDA over the frames a piece at a time, each piece's (inner, outer, g) written into tensors for
        every frame: the working set is one piece's."""
        f, h, w = self.state.grid
        whole = None
        for f0, f1 in spans:
            x, frozen, src, x_ln, temb = _frames(inputs, f0, f1, self.state.grid)
            grid = (f1 - f0, h, w)
            piece = self.sda(attn, x, frozen, src, x_ln, grid, rope2d, temb, gate_text, self._attention_backend)
            if whole is None:
                whole = [None if t is None else t.new_empty(t.shape[0], f * h * w, t.shape[2]) for t in piece]
            for out, t in zip(whole, piece, strict=True):
                if out is not None:
                    out[:, f0 * h * w : f1 * h * w] = t
        return whole

    def _add_outer(self, out: torch.Tensor) -> torch.Tensor:
        return _add_rows(out, self.outer, self.state.recompute)

    def _two_way(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kw):
        """The predecessor's in-context stream: the sequence is [target | source]. Each half gets the block's
        own 3D attention with the same positions (so a source token and the target token it shows share
        one), then the 2D attention runs for the queries of *both* halves, each reading the other half as
        its "source": two-way, so the source half changes with the target and cannot be cached."""
        st = self.state
        half = hidden_states.shape[1] // 2
        cos, sin = rotary_emb
        rope = (cos[:, :half], sin[:, :half])
        out = torch.cat(
            [
                self.inner(attn, hidden_states[:, :half], encoder_hidden_states, attention_mask, rope, **kw),
                self.inner(attn, hidden_states[:, half:], encoder_hidden_states, attention_mask, rope, **kw),
            ],
            dim=1,
        )
        if self.sda is None:  # a block without SDA (every_k_blocks > 1): the split attention alone
            return out
        for name, proj in (("q", attn.to_q), ("k", attn.to_k), ("v", attn.to_v)):
            if name not in self.frozen:
                self.frozen[name] = proj(hidden_states)
        x_ln = F.layer_norm(self.block_input.float(), self.block_input.shape[-1:]).type_as(hidden_states)
        dtype = next(self.sda.parameters()).dtype

        def stacked(t, swap=False):  # (b, 2 * half, ...) -> (2b, half, ...): the halves as a batch
            a, b = t[:, :half].to(dtype), t[:, half:].to(dtype)
            return torch.cat([b, a] if swap else [a, b])

        b = hidden_states.shape[0]
        f, h, w = st.grid
        temb = stacked(st.temb) if st.temb.ndim == 3 else torch.cat([st.temb, st.temb]).to(dtype)
        text = None if st.gate_text is None else torch.cat([st.gate_text, st.gate_text]).to(dtype)
        src = BlockSource(
            stacked(x_ln, True), stacked(hidden_states, True), stacked(self.frozen["k"], True),
            stacked(self.frozen["v"], True),
        )  # fmt: skip
        frozen = {k: stacked(t) for k, t in self.frozen.items()}
        inner, outer, g = self.sda(
            attn, stacked(hidden_states), frozen, src, stacked(x_ln), st.grid, frame_rope(rotary_emb, h * w),
            temb, text, self._attention_backend,
        )  # fmt: skip
        update = self.sda.update(attn, inner, outer)
        if st.collect_gates:
            st.gates.append(g[:b].float())  # the target half's gate
        return out + torch.cat([update[:b], update[b:]], dim=1).type_as(out)


# ---------------------------------------------------------------------------------------------------
# 4. Base + adapter
# ---------------------------------------------------------------------------------------------------


class ImVideoEditTransformer(nn.Module):
    """A frozen `WanTransformer3DModel` with an `ImVideoEditAdapter` attached through processors and hooks.

    `encode_source(latents, empty_text)` runs the frozen source stream once; `forward(latents, t, text,
    source, gate_text)` predicts the flow velocity of the edited video. Without a source it is the base.
    """

    def __init__(self, base: WanTransformer3DModel, adapter: ImVideoEditAdapter):
        super().__init__()
        if (
            adapter.config.num_layers != base.config.num_layers
            or adapter.config.dim != base.config.num_attention_heads * base.config.attention_head_dim
        ):
            raise UsageError(
                "The adapter was built for a base of another size.",
                "Use the base it was trained on (see `imvedit export --inspect`).",
            )
        if base.__dict__.get("_imvedit_wrapper") is not None:
            raise UsageError(
                "This base already has an adapter attached.",
                "Detach it first, or use ImVideoEditTransformer.attached().",
            )
        self.base = base
        self.adapter = adapter
        base.__dict__["_imvedit_wrapper"] = self  # plain attribute: not registered as a submodule of the base
        base.requires_grad_(False)
        self.state = _PassState()
        self._handles = []
        self._processors: dict[int, SDAProcessor] = {}
        self._handles.append(base.register_forward_pre_hook(self._on_base_input, with_kwargs=True))
        self._handles.append(base.condition_embedder.register_forward_hook(self._on_condition))
        # two_way: every block splits its 3D attention into the two halves, with or without SDA
        two_way = adapter.config.source_stream == "two_way"
        for i in range(base.config.num_layers) if two_way else adapter.sda_layers:
            block = base.blocks[i]
            sda = adapter.sda[str(i)] if str(i) in adapter.sda else None
            proc = SDAProcessor(block.attn1.processor, i, sda, self.state)
            self._processors[i] = proc
            block.attn1.set_processor(proc)
            if sda is None:
                continue
            self._handles.append(block.register_forward_pre_hook(self._stash_block_input(proc)))
            for name in ("q", "k", "v"):
                proj = getattr(block.attn1, f"to_{name}")
                self._handles.append(proj.register_forward_hook(self._stash_projection(proc, name)))
            self._handles.append(block.attn1.to_out[0].register_forward_pre_hook(self._fold_sda(proc)))
        if adapter.patch_in is not None:  # concat: the source's channels into the patch embedding, LoRA on attn1
            self._handles.append(base.patch_embedding.register_forward_hook(self._add_source_channels))
            for i, block in enumerate(base.blocks):
                lora = adapter.attn_lora[str(i)]
                for name, proj in (("q", block.attn1.to_q), ("k", block.attn1.to_k), ("v", block.attn1.to_v)):
                    self._handles.append(proj.register_forward_hook(self._add_lora(lora[name])))
                self._handles.append(block.attn1.to_out[0].register_forward_hook(self._add_lora(lora["o"])))
        if adapter.ffn is not None:
            for i, block in enumerate(base.blocks):
                lora = adapter.ffn[str(i)]
                self._handles.append(block.ffn.net[0].proj.register_forward_hook(self._add_lora(lora["in"])))
                self._handles.append(block.ffn.net[2].register_forward_hook(self._add_lora(lora["out"])))
        if adapter.cross is not None:
            for i, block in enumerate(base.blocks):
                lora = adapter.cross[str(i)]
                for name, proj in (("q", block.attn2.to_q), ("k", block.attn2.to_k), ("v", block.attn2.to_v)):
                    self._handles.append(proj.register_forward_hook(self._add_lora(lora[name])))
                self._handles.append(block.attn2.to_out[0].register_forward_hook(self._add_lora(lora["o"])))

    # -- hooks ------------------------------------------------------------------------------------
    def _on_base_input(self, module, args, kwargs):
        # A call of the base that did not come through this wrapper is a plain base call. The state is
        # otherwise left in place after a forward: gradient checkpointing re-runs the blocks (not this
        # hook) during backward, and they must see the same mode, source, timestep and text.
        st = self.state
        if not st.armed:
            st.mode, st.source, st.gate_text, st.recompute = "plain", None, None, 0
        st.armed = False
        hidden_states = args[0] if args else kwargs["hidden_states"]
        p_t, p_h, p_w = module.config.patch_size
        _, _, f, h, w = hidden_states.shape
        # two_way: the grid of one half (the processors split the sequence)
        self.state.grid = (f // p_t // (2 if st.mode == "two_way" else 1), h // p_h, w // p_w)

    def _on_condition(self, module, args, output):
        self.state.temb = output[0]  # (batch, dim), or (batch, tokens, dim) with per-token timesteps

    @staticmethod
    def _stash_block_input(proc: SDAProcessor):
        def hook(module, args):
            if proc.state.mode != "plain":  # a plain pass has no use for it: nothing is kept
                proc.block_input = args[0]

        return hook

    @staticmethod
    def _stash_projection(proc: SDAProcessor, name: str):
        def hook(module, args, output):
            if proc.state.mode == "plain":
                return
            # two_way calls the projection once per half: the stash holds the whole sequence, in order
            prev = proc.frozen.get(name)
            proc.frozen[name] = output if prev is None else torch.cat([prev, output], dim=1)

        return hook

    @staticmethod
    def _fold_sda(proc: SDAProcessor):
        def hook(module, args):
            if proc.pending is None:  # not an edit pass (or the two-way split, which adds its update itself)
                return None
            return (proc.before_out(args[0]), *args[1:])

        return hook

    def _add_source_channels(self, module, args, output):
        if self.state.mode != "edit":
            return output
        src = self.state.source.latents
        return output + self.adapter.patch_in(src.to(self.adapter.patch_in.weight.dtype)).type_as(output)

    def _add_lora(self, lora: LowRank):
        """A low-rank update added to a frozen linear layer's output in the edit passes (FFN, concat's attn1)."""

        def hook(module, args, output):
            if self.state.mode not in ("edit", "two_way"):
                return output
            x = args[0]
            r = self.state.recompute  # the source stream's rows stay frozen
            if r:
                return torch.cat([output[:-r] + lora(x[:-r].to(lora.up.weight.dtype)).type_as(output), output[-r:]])
            return output + lora(x.to(lora.up.weight.dtype)).type_as(output)

        return hook

    @classmethod
    def attached(cls, base: WanTransformer3DModel, adapter: ImVideoEditAdapter) -> tuple[ImVideoEditTransformer, bool]:
        """The wrapper already attaching `adapter` to `base` (e.g. the training loop's, while a validation
        edit runs), or a new one. Returns (wrapper, created): detach it only if `created`."""
        existing = base.__dict__.get("_imvedit_wrapper")
        if existing is not None and existing.adapter is adapter:
            return existing, False
        return cls(base, adapter), True

    def detach(self) -> WanTransformer3DModel:
        """Remove every hook and processor; returns the untouched base."""
        if self.base.__dict__.get("_imvedit_wrapper") is self:
            del self.base.__dict__["_imvedit_wrapper"]
        self.state.mode, self.state.source, self.state.gate_text, self.state.temb = "plain", None, None, None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for i, proc in self._processors.items():
            self.base.blocks[i].attn1.set_processor(proc.inner)
        self._processors.clear()
        return self.base

    # -- the two streams --------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        return self.adapter.config.arch

    @property
    def _in_sequence(self) -> bool:
        """The source is not a cached stream but latents the edit pass itself reads (concat, two_way)."""
        return self.arch == "concat" or self.adapter.config.source_stream == "two_way"

    @staticmethod
    def _fold(x: torch.Tensor) -> torch.Tensor:
        """(b, c, f, h, w) -> (b * f, c, 1, h, w): every frame its own one-frame video (per-frame)."""
        return x.transpose(1, 2).flatten(0, 1).unsqueeze(2)

    @staticmethod
    def _unfold(x: torch.Tensor, batch: int) -> torch.Tensor:
        """The inverse of `_fold`: (b * f, c, 1, h, w) -> (b, c, f, h, w)."""
        return x.squeeze(2).unflatten(0, (batch, -1)).transpose(1, 2)

    @property
    def caches_source(self) -> bool:
        """Whether the source is a stream that can be computed once and cached (not concat or two-way)."""
        return not self._in_sequence

    @torch.no_grad()
    def encode_source(
        self,
        source_latents: torch.Tensor,
        empty_text: torch.Tensor,
        prepare: bool = False,
        store: torch.device | str | None = None,
    ) -> SourceFeatures:
        """The frozen source stream: the clean source at timestep 0 with the empty prompt, once. For concat
        and the two-way stream, the source latents themselves (the edit pass reads them).

        `prepare` (inference): keep each block's source already through the adapter's branches (`BlockSource`),
        valid while the adapter's weights do not change. `store`: where to keep the blocks (e.g. "cpu" for
        host memory); each moves there as soon as its block has run, so the device never holds more than one."""
        st = self.state
        if self._in_sequence:
            p_t, p_h, p_w = self.base.config.patch_size
            _, _, f, h, w = source_latents.shape
            return SourceFeatures({}, (f // p_t, h // p_h, w // p_w), latents=source_latents)
        if self.arch == "per-frame":
            source_latents = self._fold(source_latents)
        st.mode, st.recording, st.armed, st.recompute = "record", {}, True, 0
        st.prepare, st.store = prepare, None if store is None else torch.device(store)
        try:
            t0 = torch.zeros(source_latents.shape[0], device=source_latents.device)
            self.base(source_latents, t0, empty_text.expand(source_latents.shape[0], -1, -1), return_dict=False)
            return SourceFeatures(dict(st.recording), st.grid)
        finally:
            st.mode, st.recording, st.armed, st.prepare, st.store = "plain", {}, False, False, None

    def pool_gate_text(self, text: torch.Tensor) -> torch.Tensor | None:
        """Project pooled instruction embeddings (batch, text_dim) once for every block's gate."""
        if self.adapter.gate_text is None:
            return None
        return self.adapter.gate_text(text.to(self.adapter.gate_text.weight.dtype))

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        source: SourceFeatures | RecomputedSource | None = None,
        gate_text: torch.Tensor | None = None,
        collect_gates: bool = False,
        sda_chunks: int = 1,
    ) -> torch.Tensor:
        """Velocity prediction for `latents` (batch, c, f, h, w). `gate_text`: pooled embeddings (batch, text_dim).
        `sda_chunks`: run each block's SDA over the latent frames in this many pieces, for a smaller working
        set; the SDA is per frame, so the output is the same.

        `source`: the cached stream (`encode_source`; a batch-1 source serves every row, e.g. the guidance
        branches), or a `RecomputedSource` whose stream runs inside this forward as extra rows of the batch."""
        st = self.state
        b, _, f = latents.shape[:3]
        per_frame = source is not None and self.arch == "per-frame"
        if per_frame:  # every frame alone: the base's 3D attention never sees two frames together
            latents = self._fold(latents)
            timestep = timestep.repeat_interleave(f, dim=0)
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(f, dim=0)
            gate_text = None if gate_text is None else gate_text.repeat_interleave(f, dim=0)
        if isinstance(source, SourceFeatures):
            source.check_serves(latents.shape[0])
        two_way = source is not None and self.adapter.config.source_stream == "two_way"
        st.mode = "plain" if source is None else ("two_way" if two_way else "edit")
        st.source = source if isinstance(source, SourceFeatures) else None
        st.gate_text = None if (source is None or gate_text is None) else self.pool_gate_text(gate_text)
        st.collect_gates = collect_gates
        st.gates = []
        st.fold = f if per_frame else 1
        st.recompute = 0
        st.sda_chunks = sda_chunks
        st.armed = True
        if two_way:  # [target | source] along frames; the source's tokens at timestep 0
            src = source.latents.to(latents.dtype)
            src = src.expand(b // src.shape[0], *src.shape[1:]) if src.shape[0] == 1 else src
            p_t, p_h, p_w = self.base.config.patch_size
            half = f // p_t * (latents.shape[3] // p_h) * (latents.shape[4] // p_w)
            t = timestep.reshape(-1, 1).expand(b, half)
            timestep = torch.cat([t, torch.zeros_like(t)], dim=1)
            out = self.base(torch.cat([latents, src], dim=2), timestep, encoder_hidden_states, return_dict=False)[0]
            return out[:, :, :f]
        if isinstance(source, RecomputedSource):  # the source rows: clean, at t = 0, with the empty prompt
            src = self._fold(source.latents) if per_frame else source.latents
            st.recompute = r = src.shape[0]
            latents = torch.cat([latents, src.to(latents.dtype)])
            timestep = torch.cat([timestep, timestep.new_zeros((r, *timestep.shape[1:]))])
            encoder_hidden_states = torch.cat([encoder_hidden_states, source.empty_text.expand(r, -1, -1)])
        try:
            out = self.base(latents, timestep, encoder_hidden_states, return_dict=False)[0]
        finally:
            if st.source is not None:
                st.source.release_prefetched()
            if not torch.is_grad_enabled():  # no backward will re-run the blocks: let the cache go when its owner does
                st.source = None
        if st.recompute:
            out = out[: -st.recompute]
        return self._unfold(out, b) if per_frame else out

    def last_gate_map(self) -> torch.Tensor | None:
        """The gate of the last forward with `collect_gates`, averaged over blocks: (batch, f, h, w); None
        for an architecture without a gate (concat)."""
        if not self.state.gates:
            return None
        f, h, w = self.state.grid
        g = torch.stack(self.state.gates).mean(0)[..., 0]
        fold = self.state.fold
        return g.reshape(g.shape[0] // fold, f * fold, h, w)
