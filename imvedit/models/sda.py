"""`SpatialDifferenceAttention`: the method's trainable block, one per adapted transformer block.

It predicts, per frame, how the target tokens should differ from the source's (the "pos" and "neg" low-rank
branches over the block's frozen 3D-attention projections, and the aligned difference term), and gates where
that difference applies (the text-guided, timestep-aware gate). `ImVideoEditAdapter` (imvedit.py) holds one
per chosen block; `SDAProcessor` (processor.py) runs it inside the block's self-attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

from .lora import LowRank, attention_shapes, lora_sets
from .source import BlockSource, source_rows


def _rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding on (..., tokens, heads, head_dim), `rotation` from `frame_rope`."""
    turned = torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * rotation
    return torch.view_as_real(turned).flatten(-2).type_as(x)


POSITION_FREQUENCIES = 4  # sin and cos of pi * k * x and of pi * k * y, k = 1..4: 16 features a token


def frame_positions(grid: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
    """Where each token of a (frames, h, w) grid sits in its frame, as Fourier features of its centre's
    (x, y) in [0, 1]: (frames * h * w, 4 * POSITION_FREQUENCIES), the same for every frame.

    Wan's only positions are rotary, so attention sees where tokens are relative to each other and nothing
    sees where a token is in the frame; on a flat background every token looks the same, and "add a red
    square at the top left" has nothing to find the top left with. Coordinates relative to the frame keep
    the features the same at any resolution."""
    f, h, w = grid
    k = math.pi * torch.arange(1, POSITION_FREQUENCIES + 1, device=like.device, dtype=torch.float32)
    ys = ((torch.arange(h, device=like.device, dtype=torch.float32) + 0.5) / h)[:, None] * k  # (h, K)
    xs = ((torch.arange(w, device=like.device, dtype=torch.float32) + 0.5) / w)[:, None] * k  # (w, K)
    per_axis = [t[:, None].expand(h, w, -1) for t in (ys.sin(), ys.cos())]
    per_axis += [t[None].expand(h, w, -1) for t in (xs.sin(), xs.cos())]
    return torch.cat(per_axis, -1).reshape(h * w, -1).repeat(f, 1).to(like.dtype)


def _compute_weight(linear: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    """A frozen layer's weight for a matmul outside its own forward: diffusers' layerwise casting keeps it in
    fp8 between forwards, so it is cast here as the casting hook would (one layer, transiently)."""
    w = getattr(linear, "base_layer", linear).weight  # a LoRA-wrapped layer (diffusers/peft) keeps it there
    return w if w.dtype == dtype else w.to(dtype)


class TextDifference(nn.Module):
    """How a token changes, read off the source token, the target token and the pooled instruction together:
    `up(silu(film(down_s(S) + down_x(X))))`, the instruction scaling and shifting the low-rank features (FiLM).

    The attention branches see the source and target tokens but not the text; the text reaches them only
    through the frozen base's cross-attention. A base that has not learnt to put a named colour on an object
    (the toy's, docs/toy.md) leaves no path from "make the circle red" to the circle's tokens; this is one,
    per token, where the gate opens. `up` starts at zero, so the adapter still starts as the base.
    """

    def __init__(self, dim: int, text_width: int, rank: int, position: bool = False):
        super().__init__()
        self.source = nn.Linear(dim, rank, bias=False)
        self.target = nn.Linear(dim, rank, bias=False)
        # where the token sits in its frame (`frame_positions`), for edits the instruction places ("add ... at
        # the top left"): FiLM-ed by the instruction with the rest, so the place it names can switch it on
        self.position = nn.Linear(4 * POSITION_FREQUENCIES, rank, bias=False) if position else None
        self.film = nn.Linear(text_width, 2 * rank)
        self.up = nn.Linear(rank, dim, bias=False)
        for layer in (self.film.weight, self.film.bias, self.up.weight):
            nn.init.zeros_(layer)

    def forward(
        self, s_ln: torch.Tensor, x_ln: torch.Tensor, text: torch.Tensor | None, pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.source(s_ln) + self.target(x_ln)
        if self.position is not None:  # pos: (tokens, features), the same for every row of the batch
            h = h + self.position(pos)
        if text is not None:  # (batch, text_width): the gate's projection of the pooled instruction
            scale, shift = self.film(text.to(h.dtype))[:, None].chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        return self.up(F.silu(h))


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
    With `text_difference`, a `TextDifference` term joins the attention branches on the changing side.
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
        text_difference: bool = False,
        text_rank: int = 32,
        frame_position: bool = False,
    ):
        super().__init__()
        self.gate_mode = gate
        self.frame_position = frame_position
        self.gate_mix = gate_mix and gate != "none" and aligned_difference
        names = ("pos", "neg") if branches == "pos_neg" else ("delta",)
        self.branches = lora_sets(names, attention_shapes(dim), rank)
        self.aligned = LowRank(dim, dim, aligned_rank) if aligned_difference else None
        self.text_delta = TextDifference(dim, gate_dim, text_rank, frame_position) if text_difference else None
        if gate != "none":
            self.gate_token = nn.Linear(dim, gate_dim)
            # The source token at the same position: "is this the blue circle the instruction names?"
            self.gate_source = nn.Linear(dim, gate_dim) if gate_source else None
            # where the token sits in its frame: the gate of "add ... at the top left" opens there
            self.gate_position = nn.Linear(4 * POSITION_FREQUENCIES, gate_dim) if frame_position else None
            self.gate_time = nn.Linear(dim, 2 * gate_dim)
            self.gate_out = nn.Linear(gate_dim, 1)
            # g = sigmoid(0) = 0.5 everywhere at the start; the weights learn where the edit applies.
            nn.init.zeros_(self.gate_out.weight)
            nn.init.zeros_(self.gate_out.bias)
            nn.init.zeros_(self.gate_time.weight)
            nn.init.zeros_(self.gate_time.bias)

    def gate(
        self,
        x_ln: torch.Tensor,
        s_ln: torch.Tensor,
        temb: torch.Tensor,
        text: torch.Tensor | None,
        pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token gate (batch, tokens, 1). `temb` is (batch, dim) or per token (batch, tokens, dim); `pos`
        is `frame_positions` of the tokens' grid, read when the block has `frame_position`."""
        if self.gate_mode == "none":
            return x_ln.new_ones(x_ln.shape[:-1] + (1,))
        h = self.gate_token(x_ln)
        if self.gate_source is not None:
            h = h + self.gate_source(s_ln)
        if self.gate_position is not None:
            h = h + self.gate_position(pos)
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
        pos = frame_positions(grid, x_ln) if self.frame_position else None
        g = self.gate(x_ln, s_ln, temb, text, pos)
        inner = None if inner is None else g * inner
        if self.text_delta is not None:
            outer = outer + self.text_delta(s_ln, x_ln, text, pos)
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
