"""The baselines the method is compared with, as architectures of the same adapter and hooks (docs/method.md,
"Baselines"): the two-way stream of vifeedit, concat's widened patch embedding, per-frame's one-frame videos.

Each is a `Baseline`: the few places where it differs from the method's own path, which `ImVideoEditAdapter`
and `ImVideoEditTransformer` (imvedit.py) call at fixed points; `Baseline` itself changes nothing. `BASELINES`
maps `--arch` names to them, and `baseline_for` picks the one an adapter's config runs. The wrapper reaches
them as `model`, untyped here: imvedit.py imports this module, so this one cannot import it.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .lora import attention_projections, attention_shapes, lora_sets
from .processor import SDAProcessor
from .source import BlockSource, RecomputedSource, SourceFeatures


class Baseline:
    """What one architecture changes in the method's path. This class changes nothing (the method itself);
    each baseline below overrides only where it differs."""

    defaults: dict = {}  # what it changes in the switches' defaults; a switch the user sets still wins
    has_sda: bool = True  # the adapter has SDA blocks (and the gate's instruction projection)
    allows_two_way: bool = True  # the switch source_stream two_way applies to it
    source_in_sequence: bool = False  # the edit pass reads the source latents itself: no stream to cache
    every_block: bool = False  # a processor on every block, not only on those with SDA
    processor = SDAProcessor  # the attention processor set on those blocks

    def build(self, adapter: nn.Module) -> None:
        """Add the architecture's own trainable modules to `adapter`, whose config is already set."""

    def attach(self, model: nn.Module) -> list:
        """Register the architecture's own hooks on `model.base`; returns their handles."""
        return []

    def encode_source(self, model: nn.Module, latents: torch.Tensor, empty_text, **kw) -> SourceFeatures:
        """The frozen source stream of `latents` (batch, c, f, h, w) for this architecture's edit passes."""
        return model.record_source(latents, empty_text, **kw)

    def forward(self, model: nn.Module, latents, timestep, encoder_hidden_states, source, gate_text, **kw):
        """One edit forward: the method's `run` on this architecture's inputs."""
        return model.run(latents, timestep, encoder_hidden_states, source, gate_text, **kw)


class _SourceInSequence(Baseline):
    """The edit pass reads the source latents themselves, so there is no stream to run once and cache."""

    source_in_sequence = True

    def encode_source(self, model, latents, empty_text, **kw) -> SourceFeatures:
        p_t, p_h, p_w = model.base.config.patch_size
        _, _, f, h, w = latents.shape
        return SourceFeatures({}, (f // p_t, h // p_h, w // p_w), latents=latents)


# ---------------------------------------------------------------------------------------------------
# vifeedit: the two-way stream
# ---------------------------------------------------------------------------------------------------


class Vifeedit(Baseline):
    """The predecessor: the source in the sequence beside the target, no aligned term, no gate. The stream
    is a switch (`source_stream`, open to imvedit too), so a vifeedit adapter set to "cached" runs the
    method's path with the other two switches; "two_way" runs `TwoWayStream`."""

    defaults = {"source_stream": "two_way", "aligned_difference": False, "gate": "none"}


class TwoWayProcessor(SDAProcessor):
    """The predecessor's in-context stream: the sequence is [target | source]. Each half gets the block's
    own 3D attention with the same positions (so a source token and the target token it shows share
    one), then the 2D attention runs for the queries of *both* halves, each reading the other half as
    its "source": two-way, so the source half changes with the target and cannot be cached."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, **kw):
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if self.state.mode != "edit":  # a plain call of the base
            return super().__call__(*args, **kw)
        try:
            return self._two_way(*args, **kw)
        finally:  # nothing of this call outlives it, as in the method's path
            self.frozen.clear()
            self.block_input = self.pending = self.outer = None

    def _two_way(self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kw):
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
        x_ln, rope2d, dtype = self._inputs(attn, hidden_states, rotary_emb)

        def stacked(t, swap=False):  # (b, 2 * half, ...) -> (2b, half, ...): the halves as a batch
            a, b = t[:, :half].to(dtype), t[:, half:].to(dtype)
            return torch.cat([b, a] if swap else [a, b])

        b = hidden_states.shape[0]
        temb = stacked(st.temb) if st.temb.ndim == 3 else torch.cat([st.temb, st.temb]).to(dtype)
        text = None if st.gate_text is None else torch.cat([st.gate_text, st.gate_text]).to(dtype)
        src = BlockSource(
            stacked(x_ln, True), stacked(hidden_states, True), stacked(self.frozen["k"], True),
            stacked(self.frozen["v"], True),
        )  # fmt: skip
        frozen = {k: stacked(t) for k, t in self.frozen.items()}
        inner, outer, g = self.sda(
            attn, stacked(hidden_states), frozen, src, stacked(x_ln), st.grid, rope2d, temb, text,
            self._attention_backend,
        )  # fmt: skip
        update = self.sda.update(attn, inner, outer)
        if st.collect_gates:
            st.gates.append(g[:b].float())  # the target half's gate
        return out + torch.cat([update[:b], update[b:]], dim=1).type_as(out)


class TwoWayStream(_SourceInSequence):
    """source_stream two_way: every block splits its 3D attention into the two halves, with or without SDA."""

    every_block = True
    processor = TwoWayProcessor

    def forward(self, model, latents, timestep, encoder_hidden_states, source, gate_text, **kw):
        """[target | source] along frames, the source's tokens at timestep 0; returns the target half."""
        b, _, f = latents.shape[:3]
        if isinstance(source, SourceFeatures):
            source.check_serves(b)
        else:  # a recomputed source is the same latents here: the edit pass reads them anyway
            source = self.encode_source(model, source.latents, source.empty_text)
        src = source.latents.to(latents.dtype)
        src = src.expand(b // src.shape[0], *src.shape[1:]) if src.shape[0] == 1 else src
        p_t, p_h, p_w = model.base.config.patch_size
        half = f // p_t * (latents.shape[3] // p_h) * (latents.shape[4] // p_w)
        t = timestep.reshape(-1, 1).expand(b, half)
        timestep = torch.cat([t, torch.zeros_like(t)], dim=1)
        both = torch.cat([latents, src], dim=2)
        return model.run(both, timestep, encoder_hidden_states, source, gate_text, sequences=2, **kw)[:, :, :f]


# ---------------------------------------------------------------------------------------------------
# concat: the source on the input channels
# ---------------------------------------------------------------------------------------------------


class Concat(_SourceInSequence):
    """The source latents on extra input channels of the patch embedding, plus LoRA on every block's 3D
    attention. The channels come in through a second patch embedding on the same grid (`patch_in`), added
    to the base's: exactly a widened convolution whose new input channels start at zero."""

    has_sda = False
    allows_two_way = False

    def build(self, adapter: nn.Module) -> None:
        c = adapter.config
        # The widened patch embedding's new input channels, zero-initialised: the base's output at the start.
        patch = tuple(c.patch_size or (1, 2, 2))
        adapter.patch_in = nn.Conv3d(c.in_channels, c.dim, kernel_size=patch, stride=patch, bias=False)
        nn.init.zeros_(adapter.patch_in.weight)
        adapter.attn_lora = lora_sets(range(c.num_layers), attention_shapes(c.dim), c.rank)

    def attach(self, model: nn.Module) -> list:
        handles = [model.base.patch_embedding.register_forward_hook(partial(self._add_source_channels, model))]
        return handles + model.hook_lora_sets(model.adapter.attn_lora, lambda block: attention_projections(block.attn1))

    @staticmethod
    def _add_source_channels(model, module, args, output):
        if model.state.mode != "edit":
            return output
        patch_in = model.adapter.patch_in
        return output + patch_in(model.state.source.latents.to(patch_in.weight.dtype)).type_as(output)


# ---------------------------------------------------------------------------------------------------
# per-frame: every frame its own one-frame video
# ---------------------------------------------------------------------------------------------------


class PerFrame(Baseline):
    """The method's adapter run on every frame as its own one-frame video: the base's 3D attention never
    sees two frames together. Frames fold into the batch on the way in and out again on the way out."""

    allows_two_way = False

    @staticmethod
    def fold(x: torch.Tensor) -> torch.Tensor:
        """(b, c, f, h, w) -> (b * f, c, 1, h, w): every frame its own one-frame video."""
        return x.transpose(1, 2).flatten(0, 1).unsqueeze(2)

    @staticmethod
    def unfold(x: torch.Tensor, batch: int) -> torch.Tensor:
        """The inverse of `fold`: (b * f, c, 1, h, w) -> (b, c, f, h, w)."""
        return x.squeeze(2).unflatten(0, (batch, -1)).transpose(1, 2)

    def encode_source(self, model, latents, empty_text, **kw) -> SourceFeatures:
        return model.record_source(self.fold(latents), empty_text, **kw)

    def forward(self, model, latents, timestep, encoder_hidden_states, source, gate_text, **kw):
        b, _, f = latents.shape[:3]

        def rows(t):  # one row per frame
            return None if t is None else t.repeat_interleave(f, dim=0)

        if isinstance(source, RecomputedSource):
            source = RecomputedSource(self.fold(source.latents), source.empty_text)
        out = model.run(
            self.fold(latents), rows(timestep), rows(encoder_hidden_states), source, rows(gate_text), fold=f, **kw
        )
        return self.unfold(out, b)


# ---------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------

METHOD = Baseline()  # the method's own path ("imvedit")
TWO_WAY = TwoWayStream()
# `--arch` names of the baselines an adapter can be, in the order the CLI lists them
BASELINES: dict[str, Baseline] = {"vifeedit": Vifeedit(), "concat": Concat(), "per-frame": PerFrame()}


def baseline_for(arch: str, source_stream: str = "cached") -> Baseline:
    """What runs an adapter of `arch` and `source_stream`. The two-way stream is a switch (vifeedit's default,
    open to imvedit), so it decides first; an arch that is not a baseline runs the method (`METHOD`)."""
    if source_stream == "two_way":
        return TWO_WAY
    return BASELINES.get(arch, METHOD)
