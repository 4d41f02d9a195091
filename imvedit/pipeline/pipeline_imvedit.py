"""`ImVideoEditPipeline`: edit a video (or an image) with a frozen Wan base and an ImVideoEdit adapter.

Inference only, one `__call__`, in the shape of diffusers' `WanPipeline`. The steps:
1. encode the prompt (cross-attention), the gate prompt (pooled, for the gate) and the empty prompt;
2. encode the source video with the VAE;
3. run the frozen source stream once (its features serve every step and guidance branch);
4. prepare timesteps and the starting latents (pure noise, or the noised source when strength < 1);
5. denoise with classifier-free guidance on the prompt (and optionally on the source), at `guidance_scale`
   from the top of the schedule down to the guidance boundary and at `guidance_scale_2` below it (as
   diffusers' Wan2.2 pipelines do at their experts' boundary); a video longer
   than `window_size` frames is denoised in overlapping temporal windows whose predictions are
   blended in the overlap at every step (linear ramps), so windows agree and no seam shows;
6. decode, and return the frames and the averaged gate map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, DiffusionPipeline, WanTransformer3DModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedTokenizerBase, UMT5EncoderModel

from ..errors import UsageError
from ..models.adapter_file import check_base
from ..models.bases import check_guidance_boundary, config_fingerprint, is_guided
from ..models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer
from ..models.source import RecomputedSource
from ..models.wan import encode_text, normalize_latents, video_to_tensor


@dataclass
class ImVideoEditPipelineOutput(BaseOutput):
    frames: np.ndarray  # (frames, height, width, 3), float in [0, 1]
    gate: np.ndarray | None  # (frames, height, width) in [0, 1]: where the edit applied; None without adapter


SOURCE_CACHES = ("device", "cpu", "recompute")


def temporal_windows(length: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most `window` items covering `length`, consecutive ones sharing at least
    `overlap` items; the last window ends at `length`, so every window but a lone one is full."""
    if length <= window:
        return [(0, length)]
    stride = max(1, window - overlap)
    starts = list(range(0, length - window, stride)) + [length - window]
    return [(s, s + window) for s in starts]


def window_weights(windows: list[tuple[int, int]], length: int) -> list[torch.Tensor]:
    """Per-window blending weights (window length,), ramping linearly across each overlap and summing to
    one at every position, so a blended prediction is a convex mix of the windows that see it."""
    weights = []
    for i, (s, e) in enumerate(windows):
        w = torch.ones(e - s)
        if i > 0 and windows[i - 1][1] > s:  # overlap with the previous window: ramp up
            n = windows[i - 1][1] - s
            w[:n] = torch.arange(1, n + 1) / (n + 1)
        if i + 1 < len(windows) and windows[i + 1][0] < e:  # overlap with the next window: ramp down
            n = e - windows[i + 1][0]
            w[-n:] = torch.minimum(w[-n:], torch.arange(n, 0, -1) / (n + 1))
        weights.append(w)
    total = torch.zeros(length)
    for (s, e), w in zip(windows, weights, strict=True):
        total[s:e] += w
    return [w / total[s:e] for (s, e), w in zip(windows, weights, strict=True)]


def upsample_gate(gate: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """A gate map on the token grid (batch, 1, f', h', w') to `size` = (frames, height, width), as the
    pipeline returns it; the toy bench's `gate_iou_ceiling` upsamples its ideal gate the same way."""
    return F.interpolate(gate.float(), size=size, mode="trilinear", align_corners=False)


@dataclass
class _Branch:
    """One guidance branch of a step: its prompt embeddings, pooled gate text and source (or none)."""

    text: torch.Tensor
    gate_text: torch.Tensor
    source: str | None  # "source", "null" (the all-zero source of source guidance) or None (the base alone)


@dataclass
class _Expert:
    """A denoiser of the schedule: a Wan transformer and its adapter (Wan2.2-A14B has two, by noise level)."""

    transformer: WanTransformer3DModel
    adapter: ImVideoEditAdapter | None
    model: ImVideoEditTransformer | None = None
    created: bool = False


class ImVideoEditPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer->transformer_2->vae"
    _optional_components = ["adapter", "transformer_2", "adapter_2"]
    # small, and used inside the transformers' blocks rather than called: they stay on the execution device
    _exclude_from_cpu_offload = ["adapter", "adapter_2"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        vae: AutoencoderKLWan,
        scheduler,
        transformer: WanTransformer3DModel,
        adapter: ImVideoEditAdapter | None = None,
        transformer_2: WanTransformer3DModel | None = None,
        adapter_2: ImVideoEditAdapter | None = None,
        boundary_ratio: float | None = None,
    ):
        super().__init__()
        for a, t in ((adapter, transformer), (adapter_2, transformer_2)):
            identity = getattr(a, "base_identity", None)
            if identity is not None and t is not None:
                check_base({"base": identity}, config_fingerprint(t.config), "The adapter")
        if (transformer_2 is None) != (boundary_ratio is None):
            raise UsageError(
                "A second expert needs its boundary_ratio, and a boundary_ratio needs transformer_2.",
                "Pass both (as in a Wan2.2-A14B model_index.json) or neither.",
            )
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=scheduler,
            transformer=transformer,
            adapter=adapter,
            transformer_2=transformer_2,
            adapter_2=adapter_2,
        )
        self.register_to_config(boundary_ratio=boundary_ratio)
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial
        # Keep the text encoder off the execution device except while it encodes (UMT5-XXL is 10.6 GiB in bf16),
        # and with two experts, the one not in use (each 14B expert is 26.6 GiB). Set by `imvedit edit`.
        self.offload_text_encoder = False
        self.offload_inactive_expert = False

    @classmethod
    def from_base(cls, base, adapter: ImVideoEditAdapter | None = None, adapter_2: ImVideoEditAdapter | None = None):
        """The pipeline of a loaded base (`imvedit.models.bases.Base`: one expert, or Wan2.2-A14B's two with
        their boundary) and its adapters, one per expert."""
        return cls(
            base.tokenizer, base.text_encoder, base.vae, base.scheduler, base.transformer, adapter,
            transformer_2=getattr(base, "transformer_2", None), adapter_2=adapter_2,
            boundary_ratio=getattr(base, "boundary_ratio", None),
        )  # fmt: skip

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE stride x patch size)."""
        return self.vae_scale_factor_spatial * self.transformer.config.patch_size[1]

    def latent_windows(self, num_frames: int, window_size: int | None, window_overlap: int) -> list[tuple[int, int]]:
        """The [start, end) latent-frame windows a `num_frames` video is denoised in."""
        r = self.vae_scale_factor_temporal
        length = (num_frames + (-(num_frames - 1)) % 4 - 1) // r + 1  # after padding to 4k + 1 frames
        if window_size is None:
            return [(0, length)]
        window = max(1, (window_size - 1) // r + 1)
        # 0 cuts the windows hard (no blending); any other overlap is at least one latent frame
        return temporal_windows(length, window, min(window - 1, max(int(window_overlap > 0), -(-window_overlap // r))))

    def check_inputs(self, video: torch.Tensor, prompt: str, strength: float, num_inference_steps: int) -> None:
        _, _, _, h, w = video.shape
        m = self.size_multiple
        if h % m or w % m:
            raise UsageError(
                f"Frames are {w}x{h}; this base needs multiples of {m}.",
                "Resize the frames first (`imvedit edit` does it for you).",
            )
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError("The prompt is empty.", 'Say what the edit should do, e.g. "make it winter".')
        if not 0.0 < strength <= 1.0:
            raise UsageError(f"strength must be in (0, 1], got {strength}.")
        if num_inference_steps < 1:
            raise UsageError(f"steps must be at least 1, got {num_inference_steps}.")

    def check_guidance(self, guidance_scale_2: float | None, guidance_boundary: float | None) -> float | None:
        """The sigma below which `guidance_scale_2` applies: the one given, else the experts' boundary_ratio."""
        boundary = guidance_boundary if guidance_boundary is not None else self.config.boundary_ratio
        if guidance_scale_2 is not None and boundary is None:
            raise UsageError(
                "A second guidance scale needs a boundary: this base has one expert.",
                "Give --guidance-boundary, a sigma in (0, 1) such as 0.8, or drop --guidance-2.",
            )
        check_guidance_boundary(boundary)
        return boundary

    # -- the pieces of a call ---------------------------------------------------------------------------
    def encode_prompts(self, prompts: list[str], device, dtype, max_sequence_length: int | None = None):
        """UMT5 embeddings and pooled means of `prompts`, on `device`. With `offload_text_encoder` the encoder
        comes to the device for this and goes back to where it was."""
        te = self.text_encoder
        home = te.device
        move = self.offload_text_encoder and home != device and not hasattr(te, "_hf_hook")
        if move:
            te.to(device)
        try:
            embeds, pooled = encode_text(self.tokenizer, te, prompts, max_sequence_length)
        finally:
            if move:
                te.to(home)
        return embeds.to(device, dtype), pooled.to(device, dtype)

    def offload_models(self, *models: torch.nn.Module) -> None:
        """Under diffusers' model CPU offload, send `models` to host memory now, through the hooks it installed.
        diffusers moves a model off only when the next one of `model_cpu_offload_seq` runs, but this pipeline runs
        text, VAE encode, denoise, VAE decode: UMT5 would stay through the encode and the VAE through the denoise,
        where the memory plan counts one model at a time. Without model offload there are no such hooks."""
        for hook in getattr(self, "_all_hooks", ()):
            if any(hook.model is m for m in models):
                hook.offload()

    def experts(self) -> list[_Expert]:
        """The schedule's denoisers, high noise first."""
        out = [_Expert(self.transformer, self.adapter)]
        if self.transformer_2 is not None:
            out.append(_Expert(self.transformer_2, self.adapter_2))
        return out

    def guidance_at(self, t, scale: float, scale_2: float | None, boundary: float | None) -> float:
        """The text guidance of the step at timestep `t`: `scale` from `boundary` * num_train_timesteps up (where
        the layout and colours are decided), `scale_2` below it; `scale` throughout without a second scale."""
        if scale_2 is None or t >= boundary * self.scheduler.config.num_train_timesteps:
            return scale
        return scale_2

    def expert_for(self, t: torch.Tensor) -> int:
        """Which expert denoises timestep `t`: as diffusers' `WanPipeline`, the first from boundary_ratio *
        num_train_timesteps up, the second below it."""
        ratio = self.config.boundary_ratio
        if ratio is None:
            return 0
        return 0 if t >= ratio * self.scheduler.config.num_train_timesteps else 1

    def _activate(self, experts: list[_Expert], k: int, device) -> _Expert:
        """Attach expert k's adapter (once) and, with `offload_inactive_expert`, bring it onto the device and
        send the other off."""
        if self.offload_inactive_expert and len(experts) > 1:
            for j, e in enumerate(experts):
                if j != k and e.transformer.device != torch.device("cpu"):
                    e.transformer.to("cpu")
            experts[k].transformer.to(device)
        e = experts[k]
        if e.adapter is not None and e.model is None:
            e.model, e.created = ImVideoEditTransformer.attached(e.transformer, e.adapter)
        return e

    def _source_for(self, expert: _Expert, source: torch.Tensor, empty: torch.Tensor, cache: str):
        """What a window's edit passes read of the source: cached features (device or host), or the latents
        to recompute the stream from in every pass."""
        if cache == "recompute" and expert.model.caches_source:
            return RecomputedSource(source, empty)
        store = "cpu" if cache == "cpu" else None
        return expert.model.encode_source(source, empty, prepare=True, store=store)

    def _predict(self, expert: _Expert, x, t, branches: list[_Branch], sources: dict, cfg_batch: bool, sda_chunks=1):
        """Every branch's velocity for latents `x` (1, c, f, h, w), and the first branch's gate map. With
        `cfg_batch` the branches that read the same source run as one batch (it serves them all uncopied);
        otherwise one after another, each at batch 1."""
        groups = {}
        for i, br in enumerate(branches):
            groups.setdefault(br.source if cfg_batch else i, []).append(i)
        preds, gate = [None] * len(branches), None
        for idx in groups.values():
            n = len(idx)
            text = torch.cat([branches[i].text for i in idx])
            x_in, t_in = x.expand(n, -1, -1, -1, -1), t.expand(n)
            key = branches[idx[0]].source
            if expert.model is None or key is None:
                p = expert.transformer(x_in, t_in, text, return_dict=False)[0]
            else:
                gate_text = torch.cat([branches[i].gate_text for i in idx])
                p = expert.model(
                    x_in, t_in, text, sources[key], gate_text, collect_gates=idx[0] == 0, sda_chunks=sda_chunks
                )
                if idx[0] == 0:
                    gate = expert.model.last_gate_map()  # None for an architecture without a gate (concat)
            for i, pi in zip(idx, p.float().chunk(n), strict=True):
                preds[i] = pi
        return preds, None if gate is None else gate[0:1, None]

    @staticmethod
    def _guide(preds: list[torch.Tensor], guidance_scale: float, source_guidance_scale: float) -> torch.Tensor:
        if len(preds) == 1:
            return preds[0]
        if len(preds) == 3:  # (prompt, source), (negative, source), (negative, no source)
            full, img, none = preds
            return none + source_guidance_scale * (img - none) + guidance_scale * (full - img)
        full, uncond = preds
        return uncond + guidance_scale * (full - uncond)

    @torch.no_grad()
    def __call__(
        self,
        video,
        prompt: str,
        negative_prompt: str = "",
        gate_prompt: str | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        guidance_scale_2: float | None = None,
        guidance_boundary: float | None = None,
        source_guidance_scale: float = 1.0,
        strength: float = 1.0,
        generator: torch.Generator | None = None,
        max_sequence_length: int | None = None,
        window_size: int | None = None,
        window_overlap: int = 16,
        source_cache: str = "device",
        cfg_batch: bool = True,
        sda_chunks: int = 1,
        callback_on_step_end=None,
    ) -> ImVideoEditPipelineOutput:
        """`window_size`: frames the model sees at once (None: all); `window_overlap`: frames shared by
        consecutive windows. Both are in video frames and rounded to whole latent frames.
        `source_cache`: where the source stream's features live while denoising: "device", "cpu" (host
        memory, each block brought in as it runs) or "recompute" (no cache: the stream runs inside every
        pass). `cfg_batch`: the guidance branches in one batch (faster) or one after another (less memory).
        `sda_chunks`: each block's SDA runs a window's latent frames in this many pieces (less memory).
        `guidance_scale_2`: the text guidance below `guidance_boundary` (a sigma in (0, 1); default the
        experts' boundary_ratio), where a step's scale of 1 runs the prompt's branch alone.
        Every choice of the memory options gives the same frames."""
        if source_cache not in SOURCE_CACHES:
            raise UsageError(f"Unknown source_cache {source_cache!r}.", f"Use one of {', '.join(SOURCE_CACHES)}.")
        device = self._execution_device
        x = video_to_tensor(video)
        self.check_inputs(x, prompt, strength, num_inference_steps)
        boundary = self.check_guidance(guidance_scale_2, guidance_boundary)
        num_frames = x.shape[2]
        # Wan's VAE encodes a first frame and then chunks of 4 (whatever its temporal compression), so
        # it needs 4k+1 frames: pad with the last frame, trim after decoding.
        pad = (-(num_frames - 1)) % 4
        if pad:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        dtype = self.transformer.dtype

        # 1. Text
        texts = [prompt, gate_prompt or prompt, "", negative_prompt]
        embeds, pooled = self.encode_prompts(texts, device, dtype, max_sequence_length)
        self.offload_models(self.text_encoder)
        cond, gate_cond, empty, negative = embeds[0:1], pooled[1:2], embeds[2:3], embeds[3:4]
        gate_empty = pooled[2:3]

        # 2. Source latents
        source = self.vae.encode(x.to(device, self.vae.dtype)).latent_dist.mode()
        source = normalize_latents(self.vae, source).to(dtype)
        self.offload_models(self.vae)
        size = tuple(x.shape[2:5])  # the padded clip's (frames, height, width), for the gate map
        del x

        # 3. Temporal windows (in latent frames); each window's source stream is computed when that window is
        # first denoised, and freed after its last step
        length = source.shape[2]
        windows = self.latent_windows(num_frames, window_size, window_overlap)
        weights = [w.to(device).view(1, 1, -1, 1, 1) for w in window_weights(windows, length)]
        experts = self.experts()
        adapted = any(e.adapter is not None for e in experts)
        use_source_cfg = adapted and source_guidance_scale != 1.0
        branches = [_Branch(cond, gate_cond, "source")]
        if is_guided(guidance_scale, guidance_scale_2) or use_source_cfg:
            branches.append(_Branch(negative, gate_empty, "source"))
        if use_source_cfg:
            branches.append(_Branch(negative, gate_empty, "null"))

        # 4. Timesteps and starting latents, in fp32 as the scheduler keeps them
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        start = min(int(round(num_inference_steps * (1.0 - strength))), num_inference_steps - 1)
        timesteps = self.scheduler.timesteps[start:]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)
        noise = randn_tensor(source.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        latents = noise.to(device)
        if strength < 1.0:
            sigma = self.scheduler.sigmas[start].to(device, torch.float32)
            latents = (1 - sigma) * source.float() + sigma * latents

        # 5. Denoise
        window_sources: list[dict | None] = [None] * len(windows)
        current = None
        gate_sum, gate_count = None, 0
        try:
            for i, t in enumerate(timesteps):
                k = self.expert_for(t)
                if k != current:  # a new expert reads the source through its own weights
                    expert, current, window_sources = self._activate(experts, k, device), k, [None] * len(windows)
                pred = torch.zeros_like(latents)
                gate_step = None
                scale = self.guidance_at(t, guidance_scale, guidance_scale_2, boundary)
                # at scale 1 the negative branch cancels out: the step runs the prompt's branch alone
                step_branches = branches[:1] if scale == 1.0 and not use_source_cfg else branches
                for j, (s, e) in enumerate(windows):
                    if expert.model is not None and window_sources[j] is None:
                        window_sources[j] = {"source": self._source_for(expert, source[:, :, s:e], empty, source_cache)}
                        if use_source_cfg:
                            zeros = torch.zeros_like(source[:, :, s:e])
                            window_sources[j]["null"] = self._source_for(expert, zeros, empty, source_cache)
                    preds, g = self._predict(
                        expert, latents[:, :, s:e].to(dtype), t, step_branches, window_sources[j], cfg_batch, sda_chunks
                    )
                    pred[:, :, s:e] += self._guide(preds, scale, source_guidance_scale) * weights[j]
                    if i == len(timesteps) - 1:
                        window_sources[j] = None  # this window is done
                    if g is not None:
                        if gate_step is None:  # the token grid: latent size / patch size
                            gate_step = torch.zeros((1, 1, length, *g.shape[3:]), device=device)
                        gate_step[:, :, s:e] += g.float() * weights[j]
                if gate_step is not None:
                    gate_sum = gate_step if gate_sum is None else gate_sum + gate_step
                    gate_count += 1
                latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    callback_on_step_end(self, i, t, {"latents": latents})
        finally:
            window_sources = None
            for e in experts:
                if e.created:
                    e.model.detach()
        # every expert: the VAE follows the last one of the sequence, which may not be the one that ran last
        self.offload_models(*(e.transformer for e in experts))

        # 6. Decode
        z = normalize_latents(self.vae, latents.to(self.vae.dtype), inverse=True)
        frames = self.vae.decode(z, return_dict=False)[0]
        frames = ((frames[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)[:num_frames]
        gate = None
        if gate_sum is not None:
            g = upsample_gate(gate_sum / gate_count, size)  # from (1, 1, f', h', w')
            gate = g[0, 0, :num_frames].cpu().numpy()
        self.maybe_free_model_hooks()
        return ImVideoEditPipelineOutput(frames=frames.cpu().numpy(), gate=gate)
