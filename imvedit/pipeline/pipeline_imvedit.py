"""`ImVideoEditPipeline`: edit a video (or an image) with a frozen Wan base and an ImVideoEdit adapter.

Inference only, one `__call__`, in the shape of diffusers' `WanPipeline`. The steps:
1. encode the prompt (cross-attention), the gate prompt (pooled, for the gate) and the empty prompt;
2. encode the source video with the VAE;
3. run the frozen source stream once (its features serve every step and guidance branch);
4. prepare timesteps and the starting latents (pure noise, or the noised source when strength < 1);
5. denoise with classifier-free guidance on the prompt (and optionally on the source); a video longer
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
from ..models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer, SourceFeatures


@dataclass
class ImVideoEditPipelineOutput(BaseOutput):
    frames: np.ndarray  # (frames, height, width, 3), float in [0, 1]
    gate: np.ndarray | None  # (frames, height, width) in [0, 1]: where the edit applied; None without adapter


DEFAULT_SEQUENCE_LENGTH = 226  # diffusers' Wan pipelines pad prompts to this many tokens


def sequence_length(tokenizer, requested: int | None = None) -> int:
    """Prompt length in tokens: as asked, else 226 capped by the tokenizer's own limit (a toy base says 48)."""
    if requested is not None:
        return requested
    return min(DEFAULT_SEQUENCE_LENGTH, int(getattr(tokenizer, "model_max_length", DEFAULT_SEQUENCE_LENGTH)))


def encode_text(tokenizer, text_encoder, prompts: list[str], max_sequence_length: int | None = None):
    """UMT5 embeddings zero-padded past each prompt's length (as Wan was trained), and their masked means."""
    max_sequence_length = sequence_length(tokenizer, max_sequence_length)
    inputs = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = text_encoder.device
    mask = inputs.attention_mask.to(device)
    embeds = text_encoder(inputs.input_ids.to(device), mask).last_hidden_state
    embeds = embeds * mask[..., None].to(embeds.dtype)
    pooled = embeds.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(embeds.dtype)
    return embeds, pooled


def normalize_latents(vae: AutoencoderKLWan, z: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    mean = torch.tensor(vae.config.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
    return z * std + mean if inverse else (z - mean) / std


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


def video_to_tensor(video) -> torch.Tensor:
    """(frames, h, w, 3) uint8 / float [0, 1] array or tensor, or a list of PIL images -> (1, 3, f, h, w) in [-1, 1]."""
    if isinstance(video, list):
        video = np.stack([np.asarray(im.convert("RGB")) for im in video])
    t = (
        torch.tensor(np.asarray(video)) if not isinstance(video, torch.Tensor) else video
    )  # a copy: decoded frames are read-only
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise UsageError(f"Expected frames shaped (frames, height, width, 3), got {tuple(t.shape)}.")
    t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    return (t.permute(3, 0, 1, 2)[None] * 2 - 1).contiguous()


class ImVideoEditPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["adapter"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        text_encoder: UMT5EncoderModel,
        vae: AutoencoderKLWan,
        scheduler,
        transformer: WanTransformer3DModel,
        adapter: ImVideoEditAdapter | None = None,
    ):
        super().__init__()
        identity = getattr(adapter, "base_identity", None)
        if identity is not None and transformer is not None:
            from ..models.adapter_file import check_base
            from ..models.bases import config_fingerprint

            check_base({"base": identity}, config_fingerprint(transformer.config), "The adapter")
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=scheduler,
            transformer=transformer,
            adapter=adapter,
        )
        self.vae_scale_factor_temporal = vae.config.scale_factor_temporal
        self.vae_scale_factor_spatial = vae.config.scale_factor_spatial

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

    @torch.no_grad()
    def __call__(
        self,
        video,
        prompt: str,
        negative_prompt: str = "",
        gate_prompt: str | None = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        source_guidance_scale: float = 1.0,
        strength: float = 1.0,
        generator: torch.Generator | None = None,
        max_sequence_length: int | None = None,
        window_size: int | None = None,
        window_overlap: int = 16,
        callback_on_step_end=None,
    ) -> ImVideoEditPipelineOutput:
        """`window_size`: frames the model sees at once (None: all); `window_overlap`: frames shared by
        consecutive windows. Both are in video frames and rounded to whole latent frames."""
        device = self._execution_device
        x = video_to_tensor(video)
        self.check_inputs(x, prompt, strength, num_inference_steps)
        num_frames = x.shape[2]
        # Wan's VAE encodes a first frame and then chunks of 4 (whatever its temporal compression), so
        # it needs 4k+1 frames: pad with the last frame, trim after decoding.
        pad = (-(num_frames - 1)) % 4
        if pad:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pad, -1, -1)], dim=2)
        dtype = self.transformer.dtype

        # 1. Text
        texts = [prompt, gate_prompt or prompt, "", negative_prompt]
        embeds, pooled = encode_text(self.tokenizer, self.text_encoder, texts, max_sequence_length)
        embeds, pooled = embeds.to(device, dtype), pooled.to(device, dtype)
        cond, gate_cond, empty, negative = embeds[0:1], pooled[1:2], embeds[2:3], embeds[3:4]
        gate_empty = pooled[2:3]

        # 2. Source latents
        vae_dtype = self.vae.dtype
        source = self.vae.encode(x.to(device, vae_dtype)).latent_dist.mode()
        source = normalize_latents(self.vae, source).to(dtype)

        # 3. Temporal windows (in latent frames) and the frozen source stream, once per call and window
        length = source.shape[2]
        windows = self.latent_windows(num_frames, window_size, window_overlap)
        weights = [w.to(device, dtype).view(1, 1, -1, 1, 1) for w in window_weights(windows, length)]
        model, created = (
            ImVideoEditTransformer.attached(self.transformer, self.adapter)
            if self.adapter is not None
            else (None, False)
        )
        try:
            use_source_cfg = model is not None and source_guidance_scale != 1.0
            window_features = []
            for s, e in windows if model is not None else []:
                features = model.encode_source(source[:, :, s:e], empty)
                null = model.encode_source(torch.zeros_like(source[:, :, s:e]), empty) if use_source_cfg else None
                window_features.append((features, null))

            # 4. Timesteps and starting latents
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            timesteps = self.scheduler.timesteps
            start = min(int(round(num_inference_steps * (1.0 - strength))), num_inference_steps - 1)
            timesteps = timesteps[start:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(start)
            noise = randn_tensor(source.shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
            noise = noise.to(device, dtype)
            if strength < 1.0:
                sigma = self.scheduler.sigmas[start].to(device, dtype)
                latents = (1 - sigma) * source + sigma * noise
            else:
                latents = noise

            # 5. Denoise. Branches: (prompt, source), (negative, source) [, (negative, no source)]
            do_cfg = guidance_scale != 1.0 or use_source_cfg
            text = torch.cat([cond, negative] + ([negative] if use_source_cfg else [])) if do_cfg else cond
            gate_text = (
                torch.cat([gate_cond, gate_empty] + ([gate_empty] if use_source_cfg else [])) if do_cfg else gate_cond
            )
            n_branches = text.shape[0]
            branch_features = [
                features.repeat(n_branches) if null is None else SourceFeatures.cat([features.repeat(2), null])
                for features, null in window_features
            ]
            gate_sum, gate_count = None, 0
            for i, t in enumerate(timesteps):
                t_in = t.expand(n_branches).to(device)
                pred = torch.zeros_like(latents)
                gate_step = None
                for j, (s, e) in enumerate(windows):
                    latent_in = latents[:, :, s:e].expand(n_branches, -1, -1, -1, -1)
                    if model is not None:
                        p = model(latent_in, t_in, text, branch_features[j], gate_text, collect_gates=True)
                        g = model.last_gate_map()  # None for an architecture without a gate (concat)
                        if g is not None:
                            g = g[0:1, None] * weights[j]  # (1, 1, window, h', w')
                            if gate_step is None:
                                grid = (1, 1, length, *g.shape[3:])  # the token grid: latent size / patch size
                                gate_step = torch.zeros(grid, device=device, dtype=g.dtype)
                            gate_step[:, :, s:e] += g
                    else:
                        p = self.transformer(latent_in, t_in, text, return_dict=False)[0]
                    if do_cfg:
                        if use_source_cfg:
                            full, img, none = p.chunk(3)
                            p = none + source_guidance_scale * (img - none) + guidance_scale * (full - img)
                        else:
                            full, uncond = p.chunk(2)
                            p = uncond + guidance_scale * (full - uncond)
                    pred[:, :, s:e] += p * weights[j]
                if gate_step is not None:
                    gate_sum = gate_step if gate_sum is None else gate_sum + gate_step
                    gate_count += 1
                latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    callback_on_step_end(self, i, t, {"latents": latents})
        finally:
            if created:
                model.detach()

        # 6. Decode
        z = normalize_latents(self.vae, latents.to(vae_dtype), inverse=True)
        frames = self.vae.decode(z, return_dict=False)[0]
        frames = ((frames[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0)[:num_frames]
        gate = None
        if gate_sum is not None:
            g = upsample_gate(gate_sum / gate_count, tuple(x.shape[2:5]))  # from (1, 1, f', h', w')
            gate = g[0, 0, :num_frames].cpu().numpy()
        return ImVideoEditPipelineOutput(frames=frames.cpu().numpy(), gate=gate)
