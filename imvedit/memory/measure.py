"""The check of the plan: an edit's phases run on the meta device with the real modules at full size,
under a live-storage tracker (`live.LiveStorage`), reported in the plan's components and phases.

Each phase runs as `ImVideoEditPipeline.__call__` runs it: `encode_text` for the 4 prompts, the VAE on the
whole clip, `ImVideoEditTransformer.encode_source(..., prepare=True)` per window (`store="cpu"` for the
host cache; its copies become zero-byte host stand-ins), the guidance branches grouped by source as the
pipeline's `_predict` groups them, then the decode and the frames' conversion. Meta tensors cost no
FLOPs, so a 14B edit at 480p measures in seconds; attention allocates what a fused kernel does
(`flash_attention`). Weights are tracked too (so layerwise casting's swaps count once) and then counted
per phase as the offload mode places them, as the plan does: offloading moves whole modules, which a
single meta device cannot show. On the meta device two things are not seen: the block a CUDA side
stream prefetches with the cpu cache (added: one block, as measured bringing one in), and allocator
fragmentation (the plan's headroom).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch

from ..models.imvedit import ImVideoEditTransformer
from ..models.source import RecomputedSource
from ..models.wan import encode_text
from .edit_plan import GIB, PROMPTS, EditShape, MemoryOptions, forward_batches
from .live import LiveStorage, flash_attention, resident_bytes
from .spec import COMPUTE, BaseSpec, build_meta, group_resident_bytes


@dataclass
class Measurement:
    components: dict[str, float]  # GiB, the plan's keys
    phases: dict[str, float]

    @property
    def peak_gib(self) -> float:
        return max(self.phases.values())


class _Prompts:
    """A tokenizer stand-in: `encode_text` pads every prompt to `max_length` tokens, so only the shapes
    matter (a real tokenizer would need its files)."""

    def __call__(self, prompts, max_length, **kwargs):
        ids = torch.zeros(len(prompts), max_length, dtype=torch.long, device="meta")
        return types.SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids))


def measure_edit(spec: BaseSpec, shape: EditShape, options: MemoryOptions) -> Measurement:
    """Run the edit's phases on the meta device and measure what each keeps alive."""
    m = build_meta(spec, options.base_dtype)
    if options.vae_tiling:
        m.vae.enable_tiling()
    tracker = LiveStorage("meta", host_placeholders=True)
    tracker.adopt(m.transformer, m.adapter, m.vae, m.text_encoder)
    weights = tracker.current
    run = _Run(spec, shape, options, m, tracker)
    with torch.no_grad(), flash_attention(), tracker:
        run.text()
        run.vae_encode()
        run.denoise()
        run.vae_decode()
    return run.report(weights)


class _Run:
    """One measured edit; each method is one phase of the pipeline."""

    def __init__(self, spec, shape, options, m, tracker):
        self.spec, self.shape, self.options, self.m, self.t = spec, shape, options, m, tracker
        self.model = ImVideoEditTransformer(m.transformer, m.adapter)
        self.block_in = 0
        self.cache = 0

    def text(self):
        with self.t.phase("text"), self.t.scalar_reads(False):  # real prompts are padded: mask.all() is False
            prompts = ["prompt", "gate prompt", "", "negative"][:PROMPTS]
            embeds, pooled = encode_text(_Prompts(), self.m.text_encoder, prompts, self.spec.prompt_tokens)
            self.embeds, self.pooled = embeds.to(COMPUTE), pooled.to(COMPUTE)

    def vae_encode(self):
        s = self.shape
        with self.t.phase("vae_encode"):
            frames = s.latent_frames * 4 - 3
            x = torch.empty(1, 3, frames, s.height, s.width, device="meta")  # the clip, moved to the device
            z = self.m.vae.encode(x).latent_dist.mode()
            del x
            self.source = _normalize(z).to(COMPUTE)

    def denoise(self):
        s, o = self.shape, self.options
        self.latents = torch.empty(self.source.shape, device="meta")  # fp32, as the scheduler keeps them
        pred = torch.zeros_like(self.latents)  # the step's blended prediction
        empty = self.embeds[2:3]
        # the branches' (text, gate text): (prompt, source), (negative, source), (negative, no source)
        branches = [(self.embeds[0:1], self.pooled[1:2]), (self.embeds[3:4], self.pooled[2:3])] * 2
        self.state = self.t.current
        sources = []
        for start, end in s.windows():
            with self.t.phase("source"):
                sources.append({k: self._source(lat, empty) for k, lat in self._window_latents(start, end)})
        self.cache = self.t.current - self.state
        if o.source_cache == "cpu":
            self.block_in = self._block_in(sources[0]["source"])
        t = torch.zeros(1, device="meta")
        for (start, end), src in zip(s.windows(), sources, strict=True):
            x = self.latents[:, :, start:end].to(COMPUTE)
            first = 0
            for rows, key in self._groups():
                with self.t.phase("denoise"):
                    text = torch.cat([b[0] for b in branches[first : first + rows]])
                    gate_text = torch.cat([b[1] for b in branches[first : first + rows]])
                    p = self.model(x.expand(rows, -1, -1, -1, -1), t.expand(rows), text, src[key], gate_text,
                                   collect_gates=first == 0, sda_chunks=o.sda_chunks)  # fmt: skip
                    pred[:, :, start:end] += p.float().sum(0, keepdim=True)
                first += rows
        del sources, src

    def _window_latents(self, start, end):
        yield "source", self.source[:, :, start:end]
        if self.shape.source_guidance:
            yield "null", torch.zeros_like(self.source[:, :, start:end])

    def _source(self, latents, empty):
        if self.options.source_cache == "recompute":
            return RecomputedSource(latents, empty)
        store = "cpu" if self.options.source_cache == "cpu" else None
        return self.model.encode_source(latents, empty, prepare=True, store=store)

    def _groups(self):
        """(rows, source) of each forward, as the pipeline's `_predict` groups the branches."""
        rows = forward_batches(self.shape, self.options.cfg_batch)
        keys = ["source"] * len(rows)
        if self.shape.source_guidance:
            keys[-1] = "null"
        return list(zip(rows, keys, strict=True))

    def _block_in(self, features) -> int:
        """Bytes one host-cached block takes on the device when it is brought in."""
        before = self.t.current
        block = features.block(next(iter(features.blocks)), torch.device("meta"))
        size = self.t.current - before
        del block
        return size

    def vae_decode(self):
        with self.t.phase("vae_decode"):
            z = _normalize(self.latents.to(torch.float32))
            frames = self.m.vae.decode(z, return_dict=False)[0]
            del z
            frames = ((frames[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)
            del frames

    # -- the report -----------------------------------------------------------------------------------
    def report(self, weights: int) -> Measurement:
        o, m, ph = self.options, self.m, self.t.phases
        transformer = group_resident_bytes(m.transformer) if o.offload == "group" else resident_bytes(m.transformer)
        te = group_resident_bytes(m.text_encoder) if o.offload == "group" else resident_bytes(m.text_encoder)
        adapter, vae = resident_bytes(m.adapter), resident_bytes(m.vae)
        cache = {"device": self.cache, "cpu": 2 * self.block_in, "recompute": 0}[o.source_cache]
        per_window = self.cache / len(self.shape.windows())
        components = {
            "transformer_weights": transformer,
            "adapter_weights": adapter,
            "text_encoder": te + ph["text"].rise,
            "vae_encode": vae + ph["vae_encode"].rise,
            "vae_decode": vae + ph["vae_decode"].rise,
            "source_cache": cache,
            "step": ph["denoise"].rise - self.block_in,  # the block in flight is the cache's, not the step's
            "source_stream": 0,
            "latents": self.state - weights,
        }
        resident = {
            "none": {"text": transformer + adapter + vae, "vae": transformer + adapter, "denoise": adapter + vae},
            "model": {"text": adapter, "vae": adapter, "denoise": adapter},
            "group": {"text": adapter + vae, "vae": adapter, "denoise": adapter + vae},
        }[o.offload]
        above = {k: p.peak - weights for k, p in ph.items()}  # what the phase kept beside the weights
        phases = {
            "text": resident["text"] + te + above["text"],
            "vae_encode": resident["vae"] + vae + above["vae_encode"],
            "denoise": resident["denoise"] + transformer + above["denoise"] + self.block_in,  # + the prefetched
            "vae_decode": resident["vae"] + vae + above["vae_decode"],
        }
        if "source" in ph and o.source_cache != "recompute":
            components["source_stream"] = ph["source"].rise - (per_window if o.source_cache == "device" else 0)
            phases["source"] = resident["denoise"] + transformer + above["source"]
        gib = lambda v: round(v / GIB, 2)  # noqa: E731
        return Measurement({k: gib(v) for k, v in components.items()}, {k: gib(v) for k, v in phases.items()})


def _normalize(z: torch.Tensor) -> torch.Tensor:
    """`normalize_latents` as the pipeline applies it: a per-channel shift and scale."""
    stat = z.new_empty((1, z.shape[1], 1, 1, 1))
    return (z - stat) / stat
