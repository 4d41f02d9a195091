"""The attention processor that runs the method inside a block of the frozen base, and the state that one base
forward shares between the hooks and the processors.

`SDAProcessor` wraps a block's own self-attention processor: the block's 3D attention runs exactly as in the
base; in an edit pass the block's `SpatialDifferenceAttention` (imvedit.py) then updates the target tokens,
inside the block's attention residual. Forward hooks hand the processor the block input and the frozen q/k/v
projections the 3D attention has just computed (`SDAProcessor.hooks`), so the SDA recomputes none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .source import BlockSource, SourceFeatures


def frame_rope(rotary_emb: tuple[torch.Tensor, torch.Tensor], tokens_per_frame: int) -> torch.Tensor:
    """Frame 0's rotary positions, for every frame, as complex rotations (1, h*w, 1, head_dim/2).

    Wan's rotary embedding is interleaved: channels (2i, 2i+1) of a head turn by one angle. That is a complex
    product, one pass over the tensor instead of the half-splitting, four products and re-interleaving of
    the real form: the same result to float rounding, and the step cost in tests/benchmarks/bench_step_cost.py."""
    cos, sin = rotary_emb
    return torch.complex(cos[:, :tokens_per_frame, :, 0::2].float(), sin[:, :tokens_per_frame, :, 1::2].float())


def add_rows(t: torch.Tensor, update: torch.Tensor, recompute: int) -> torch.Tensor:
    """`t` with `update` added to its rows, all of them or all but the last `recompute` (the source stream's
    rows, which stay frozen)."""
    if recompute:
        return torch.cat([t[:-recompute] + update.type_as(t), t[-recompute:]])
    return t + update.type_as(t)


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


@dataclass
class PassState:
    """What one base forward needs to share with the processors; set by `ImVideoEditTransformer`."""

    # "plain": the base alone; "record": source stream; "edit": target stream (with the two-way stream, target
    # and source side by side in one sequence)
    mode: str = "plain"
    armed: bool = False  # set by ImVideoEditTransformer just before it calls the base
    grid: tuple[int, int, int] | None = None  # the latent token grid of one video in the sequence
    sequences: int = 1  # videos side by side along the frames of the sequence (the two-way stream: 2)
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

    def __init__(self, inner, index: int, sda: nn.Module | None, state: PassState):
        self.inner = inner
        self.index = index
        self.sda = sda  # the block's SpatialDifferenceAttention, or None (a block the two-way stream only splits)
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

    # -- the hooks that hand this processor what it reads ------------------------------------------
    def hooks(self, block: nn.Module) -> list:
        """Register on `block` the hooks that stash its input and attn1's frozen q/k/v, and the one that runs
        the SDA in attn1's output projection; returns their handles."""
        attn = block.attn1
        handles = [block.register_forward_pre_hook(self._stash_block_input)]
        for name in ("q", "k", "v"):
            proj = getattr(attn, f"to_{name}")
            handles.append(proj.register_forward_hook(partial(self._stash_projection, name)))
        handles.append(attn.to_out[0].register_forward_pre_hook(self._fold_sda))
        return handles

    def _stash_block_input(self, module, args):
        if self.state.mode != "plain":  # a plain pass has no use for it: nothing is kept
            self.block_input = args[0]

    def _stash_projection(self, name: str, module, args, output):
        if self.state.mode == "plain":
            return
        # the two-way stream calls the projection once per half: the stash holds the whole sequence, in order
        prev = self.frozen.get(name)
        self.frozen[name] = output if prev is None else torch.cat([prev, output], dim=1)

    def _fold_sda(self, module, args):
        if self.pending is None:  # not an edit pass of the method's path
            return None
        return (self.before_out(args[0]), *args[1:])

    # -- the call ---------------------------------------------------------------------------------
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kw):
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        try:
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
            return add_rows(out, self.outer, self.state.recompute)
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
        the call to add after the projection, and return the 3D attention's output with `inner` added."""
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
        return attention if inner is None else add_rows(attention, inner, r)

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
