"""ImVideoEdit on a frozen diffusers `WanTransformer3DModel`: the method itself.

Reading order, smallest piece first:

1. `SpatialDifferenceAttention` (sda.py) - the trainable per-frame block of one transformer block: the "pos"
   and "neg" low-rank branches over the frozen 3D-attention projections, the aligned difference term and
   the text-guided, timestep-aware gate. It returns the predicted difference and the gate.
2. `ImVideoEditAdapter` - every trainable weight (and nothing else), with its switches as config.
3. `ImVideoEditTransformer` - attaches an adapter to a base with processors (`SDAProcessor`, processor.py)
   and hooks (no forked `forward`), runs the frozen source stream once (`encode_source`, whose features
   are source.py's) and the edit stream (`forward`).

The baselines the method is compared with (baselines.py) differ from its path at a few fixed points, which
this file calls through a `Baseline` looked up by the adapter's config. Design notes live in docs/method.md;
the decisions the paper leaves open are explained there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from diffusers import ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from ..errors import UsageError
from .baselines import BASELINES, Baseline, baseline_for
from .lora import LowRank, attention_projections, attention_shapes, lora_sets
from .processor import PassState, SDAProcessor, add_rows
from .sda import SpatialDifferenceAttention
from .source import RecomputedSource, SourceFeatures
from .weights_file import recorded_base, stamp_adapter_file

BRANCH_MODES = ("pos_neg", "zero_out")
GATE_MODES = ("text", "no_text", "none")
SOURCE_STREAMS = ("cached", "two_way")
# The architectures one adapter class covers (docs/method.md, "Baselines"). `sdedit` needs no adapter.
ARCHS = ("imvedit", *BASELINES)
# What an architecture changes in the switches' defaults; a switch the user sets still wins.
ARCH_DEFAULTS = {name: baseline.defaults for name, baseline in BASELINES.items() if baseline.defaults}


# ---------------------------------------------------------------------------------------------------
# 1. The adapter: every trainable weight, its switches as config
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
        # a per-token map of the source and target tokens, scaled and shifted by the pooled instruction, on the
        # changing side of the gate (sda.TextDifference): a direct path from the instruction to the tokens it
        # changes, for bases whose cross-attention does not put a named attribute on an object (needs gate text)
        text_difference: bool = False,
        text_rank: int = 32,  # rank of that map
        # the gate and that map also read where each token sits in its frame (sda.frame_positions): Wan's
        # positions are only relative, and "add a red square at the top left" needs the top left
        frame_position: bool = False,
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
                    dim,
                    rank,
                    branches,
                    aligned_difference,
                    aligned_rank,
                    gate,
                    gate_dim,
                    gate_source,
                    gate_mix,
                    text_difference,
                    text_rank,
                    frame_position,
                )
                for i in self.sda_layers
            }
        )
        baseline = self.baseline  # what the arch changes in the method (baselines.py), if anything
        self.gate_text = nn.Linear(text_dim, gate_dim) if gate == "text" and baseline.has_sda else None
        self.patch_in, self.attn_lora = None, None  # concat's, set by its `build`
        baseline.build(self)
        ffn_shapes = {"in": (dim, ffn_dim), "out": (ffn_dim, dim)}
        self.ffn = lora_sets(range(num_layers), ffn_shapes, ffn_rank) if ffn_lora else None
        # attn2's keys and values read the text after the base projects it to `dim`
        self.cross = lora_sets(range(num_layers), attention_shapes(dim), cross_rank) if cross_lora else None

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
        if c.source_stream == "two_way" and not baseline_for(c.arch).allows_two_way:
            raise UsageError(f"source_stream two_way does not apply to arch {c.arch}.", "Drop source_stream.")
        if c.text_difference and c.gate != "text":
            raise UsageError("text_difference reads the instruction through the gate.", "Set gate: text with it.")
        if c.frame_position and c.gate == "none":  # text_difference needs gate text, refused above without it
            raise UsageError("frame_position is read by the gate, and gate is none.", "Set gate: text with it.")
        names = ("rank", "aligned_rank", "gate_dim", "ffn_rank", "cross_rank", "text_rank", "every_k_blocks")
        for name in (*names, "num_layers"):
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
    def baseline(self) -> Baseline:
        """What this config runs as: the method's own path, or a baseline's (baselines.py)."""
        return baseline_for(self.config.arch, self.config.source_stream)

    @property
    def sda_layers(self) -> list[int]:
        if not self.baseline.has_sda:
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
# 2. Base + adapter
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
        self.state = PassState()
        self._processors: dict[int, SDAProcessor] = {}
        self._handles = [
            base.register_forward_pre_hook(self._on_base_input, with_kwargs=True),
            base.condition_embedder.register_forward_hook(self._on_condition),
        ]
        baseline = self.baseline
        for i in range(base.config.num_layers) if baseline.every_block else adapter.sda_layers:
            block = base.blocks[i]
            sda = adapter.sda[str(i)] if str(i) in adapter.sda else None
            proc = baseline.processor(block.attn1.processor, i, sda, self.state)
            self._processors[i] = proc
            block.attn1.set_processor(proc)
            if sda is not None:
                self._handles += proc.hooks(block)
        self._handles += baseline.attach(self)
        if adapter.ffn is not None:
            self._handles += self.hook_lora_sets(adapter.ffn, lambda b: {"in": b.ffn.net[0].proj, "out": b.ffn.net[2]})
        if adapter.cross is not None:
            self._handles += self.hook_lora_sets(adapter.cross, lambda b: attention_projections(b.attn2))

    # -- hooks ------------------------------------------------------------------------------------
    def _on_base_input(self, module, args, kwargs):
        # A call of the base that did not come through this wrapper is a plain base call. The state is
        # otherwise left in place after a forward: gradient checkpointing re-runs the blocks (not this
        # hook) during backward, and they must see the same mode, source, timestep and text.
        st = self.state
        if not st.armed:
            st.mode, st.source, st.gate_text, st.recompute, st.sequences = "plain", None, None, 0, 1
        st.armed = False
        hidden_states = args[0] if args else kwargs["hidden_states"]
        p_t, p_h, p_w = module.config.patch_size
        _, _, f, h, w = hidden_states.shape
        # the grid of one video (the two-way stream's processors split its sequence into the two)
        st.grid = (f // p_t // st.sequences, h // p_h, w // p_w)

    def _on_condition(self, module, args, output):
        self.state.temb = output[0]  # (batch, dim), or (batch, tokens, dim) with per-token timesteps

    def hook_lora_sets(self, sets: nn.ModuleDict, layers: Callable[[nn.Module], dict[str, nn.Module]]) -> list:
        """Add each block's set of low-rank updates (`lora.lora_sets`) to the outputs of the frozen layers that
        `layers(block)` names, in the edit passes; returns the hooks' handles."""
        return [
            layer.register_forward_hook(self._add_lora(sets[str(i)][name]))
            for i, block in enumerate(self.base.blocks)
            for name, layer in layers(block).items()
        ]

    def _add_lora(self, lora: LowRank):
        """A low-rank update added to a frozen linear layer's output in the edit passes (FFN, cross-attention,
        concat's attn1)."""

        def hook(module, args, output):
            if self.state.mode != "edit":
                return output
            r = self.state.recompute  # the source stream's rows stay frozen
            x = args[0][: args[0].shape[0] - r]
            return add_rows(output, lora(x.to(lora.up.weight.dtype)), r)

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
    def baseline(self) -> Baseline:
        return self.adapter.baseline

    @property
    def caches_source(self) -> bool:
        """Whether the source is a stream that can be computed once and cached (not concat or two-way)."""
        return not self.baseline.source_in_sequence

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
        return self.baseline.encode_source(self, source_latents, empty_text, prepare=prepare, store=store)

    @torch.no_grad()
    def record_source(
        self,
        source_latents: torch.Tensor,
        empty_text: torch.Tensor,
        prepare: bool = False,
        store: torch.device | str | None = None,
    ) -> SourceFeatures:
        """The method's source stream, run on `source_latents` as given: `encode_source` for the method, and
        what an architecture's `encode_source` runs on its own inputs (per-frame: frames folded into the batch)."""
        st = self.state
        st.mode, st.recording, st.armed, st.recompute, st.sequences = "record", {}, True, 0, 1
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
        options = {"collect_gates": collect_gates, "sda_chunks": sda_chunks}
        if source is None:  # the base alone, whatever the architecture
            return self.run(latents, timestep, encoder_hidden_states, None, None, **options)
        return self.baseline.forward(self, latents, timestep, encoder_hidden_states, source, gate_text, **options)

    def run(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        source: SourceFeatures | RecomputedSource | None,
        gate_text: torch.Tensor | None,
        collect_gates: bool = False,
        sda_chunks: int = 1,
        fold: int = 1,
        sequences: int = 1,
    ) -> torch.Tensor:
        """One base forward with the pass state armed for it: the method's edit pass, which an architecture's
        `forward` calls on its own inputs. `fold`: frames folded into the batch (per-frame); `sequences`:
        videos side by side along the frames of `latents` (the two-way stream: target and source)."""
        st = self.state
        if isinstance(source, SourceFeatures):
            source.check_serves(latents.shape[0])
        st.mode = "plain" if source is None else "edit"
        st.source = source if isinstance(source, SourceFeatures) else None
        st.gate_text = None if (source is None or gate_text is None) else self.pool_gate_text(gate_text)
        st.collect_gates, st.gates, st.fold, st.sequences = collect_gates, [], fold, sequences
        st.recompute, st.sda_chunks, st.armed = 0, sda_chunks, True
        if isinstance(source, RecomputedSource):  # the source rows: clean, at t = 0, with the empty prompt
            st.recompute = r = source.latents.shape[0]
            latents = torch.cat([latents, source.latents.to(latents.dtype)])
            timestep = torch.cat([timestep, timestep.new_zeros((r, *timestep.shape[1:]))])
            encoder_hidden_states = torch.cat([encoder_hidden_states, source.empty_text.expand(r, -1, -1)])
        try:
            out = self.base(latents, timestep, encoder_hidden_states, return_dict=False)[0]
        finally:
            if st.source is not None:
                st.source.release_prefetched()
            if not torch.is_grad_enabled():  # no backward will re-run the blocks: let the cache go when its owner does
                st.source = None
        return out[: -st.recompute] if st.recompute else out

    def last_gate_map(self) -> torch.Tensor | None:
        """The gate of the last forward with `collect_gates`, averaged over blocks: (batch, f, h, w); None
        for an architecture without a gate (concat)."""
        if not self.state.gates:
            return None
        f, h, w = self.state.grid
        g = torch.stack(self.state.gates).mean(0)[..., 0]
        fold = self.state.fold
        return g.reshape(g.shape[0] // fold, f * fold, h, w)
