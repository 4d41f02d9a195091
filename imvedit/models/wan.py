"""What every Wan base's components need around them, for inference and training alike: prompts through the
UMT5 encoder as Wan was trained on them, latents normalised with the VAE's own statistics, and frames in the
VAE's input layout. The pipeline, the latent cache, training and the toy's pretraining all use these."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from ..errors import UsageError

DEFAULT_SEQUENCE_LENGTH = 512  # Wan was trained on prompts padded to 512 tokens (diffusers' WanPipeline default)


def sequence_length(tokenizer, requested: int | None = None) -> int:
    """Prompt length in tokens: as asked, else 512 capped by the tokenizer's own limit (a toy base says 48)."""
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
