"""`imvedit edit`: one video (or image) in, the edited file out, looking like the input.

The model runs at a working size (the base's preferred area, multiples of its stride, aspect kept);
the result is resized back to the input's exact size and written with the input's frame rate and
audio. The output appears whole or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UsageError
from .fsutil import check_output_path
from .models.adapter_file import load_adapter, read_adapter_metadata
from .models.bases import SHAPES_WAN, SHAPES_WAN_ADAPTER, Base, bundle_available, load_base
from .pipeline.pipeline_imvedit import ImVideoEditPipeline
from .video.io import is_image, read_image, read_video, write_image, write_video

ADAPTER_FILE = "adapter.safetensors"


@dataclass
class EditConfig:
    input: Path  # a video (mp4, mov, mkv, webm, ...) or an image (png, jpg, webp)
    prompt: str  # the edit: an instruction ("make it winter") or a description of the result
    output: Path  # where to write the edited file (same kind as the input)
    model: str | None = None  # the base; may be omitted when the adapter names its base
    adapter: str | None = None  # an adapter .safetensors or a run folder holding adapter.safetensors
    steps: int | None = None  # denoising steps (default: the base's, 30 for Wan)
    guidance: float | None = None  # text guidance scale, 1 turns it off (default: the base's, 5 for Wan)
    source_guidance: float = 1.0  # source guidance scale (1 turns it off)
    strength: float = 1.0  # < 1 starts from the noised source instead of pure noise
    seed: int = 0  # the noise seed
    negative_prompt: str = ""  # text guided away from
    gate_prompt: str | None = None  # text for the gate, when it should differ from the prompt
    max_area: int | None = None  # working area in pixels (default: the base's)
    overwrite: bool = False  # replace an existing output
    save_mask: Path | None = None  # also write the gate map (the implicit edit mask) as a video/image
    crf: int = 18  # H.264 quality of the output (lower is better)

    def validate(self) -> None:
        if not self.prompt or not self.prompt.strip():
            raise UsageError("The prompt is empty.", 'Say what the edit should do, e.g. "make it winter".')
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {self.steps}.")
        if not 0.0 < self.strength <= 1.0:
            raise UsageError(f"--strength must be in (0, 1], got {self.strength}.")
        if self.model is None and self.adapter is None and not bundle_available():
            raise UsageError(
                "No --model given, and this build has no bundled toy model to fall back on.",
                "Pass --model (a diffusers Wan folder, a hub id, or 'tiny-random') and --adapter.",
            )
        if Path(self.input).suffix.lower() != Path(self.output).suffix.lower() and is_image(self.input) != is_image(
            self.output
        ):
            kind = "an image" if is_image(self.input) else "a video"
            raise UsageError(
                f"The input is {kind}; the output {self.output} is not.", "Give the output a matching extension."
            )
        check_output_path(self.output, [self.input], self.overwrite)
        if self.save_mask is not None:
            check_output_path(self.save_mask, [self.input, self.output], self.overwrite)


def resolve_adapter_path(adapter: str | Path) -> Path:
    p = Path(adapter)
    return p / ADAPTER_FILE if p.is_dir() else p


def load_model(model: str | None, adapter: str | None, device: torch.device, dtype: torch.dtype) -> tuple[Base, object]:
    """The base (named, or the one the adapter names) and the adapter, checked against each other."""
    meta = None
    if adapter is not None:
        adapter_path = resolve_adapter_path(adapter)
        meta = read_adapter_metadata(adapter_path)
        model = model or meta["base"]["name"]
    base = load_base(model, torch_dtype=dtype)
    loaded = None
    if adapter is not None:
        loaded, _ = load_adapter(adapter_path, base.fingerprint)
    for m in (base.transformer, base.vae, base.text_encoder):
        m.to(device)
    if loaded is not None:
        loaded.to(device)
        if dtype != torch.float32:
            loaded.to(dtype)
    return base, loaded


def working_size(width: int, height: int, area: int, multiple: int) -> tuple[int, int]:
    """The model's size for a frame: about `area` pixels, aspect kept, sides multiples of `multiple`."""
    scale = (area / (width * height)) ** 0.5
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return w, h


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if frames.shape[2] == size[0] and frames.shape[1] == size[1]:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BICUBIC)) for f in frames])


def edit(config: EditConfig, progress: Callable[[int, int], None] | None = None) -> dict:
    """Edit `config.input` into `config.output`. Returns what was done (sizes, frames, seconds)."""
    config.validate()
    start = time.time()
    image = is_image(config.input)
    if image:
        frames, fps, audio = read_image(config.input), None, None
    else:
        frames, info = read_video(config.input)
        fps, audio = info.fps, (config.input if info.has_audio else None)
    height, width = frames.shape[1:3]

    model, adapter_path = config.model, config.adapter
    if model is None and adapter_path is None:  # the embedded default (validate checked it ships)
        model, adapter_path = SHAPES_WAN, str(SHAPES_WAN_ADAPTER)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    base, adapter = load_model(model, adapter_path, device, dtype)
    steps = config.steps or base.default_steps
    guidance = config.guidance if config.guidance is not None else base.default_guidance
    pipe = ImVideoEditPipeline(base.tokenizer, base.text_encoder, base.vae, base.scheduler, base.transformer, adapter)
    pipe.set_progress_bar_config(disable=True)
    work = working_size(width, height, config.max_area or base.default_area, pipe.size_multiple)

    def on_step(_pipe, i, _t, _kw):
        if progress:
            progress(i + 1, steps)
        return _kw

    result = pipe(
        _resize(frames, work),
        config.prompt,
        negative_prompt=config.negative_prompt,
        gate_prompt=config.gate_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        source_guidance_scale=config.source_guidance,
        strength=config.strength,
        generator=torch.Generator().manual_seed(config.seed),
        callback_on_step_end=on_step,
    )
    edited = _resize((result.frames * 255).round().clip(0, 255).astype(np.uint8), (width, height))
    if image:
        write_image(config.output, edited[0])
    else:
        write_video(config.output, edited, fps, audio_from=audio, crf=config.crf)
    if config.save_mask is not None and result.gate is not None:
        mask = _resize(np.repeat((result.gate[..., None] * 255).round().astype(np.uint8), 3, axis=-1), (width, height))
        if is_image(config.save_mask):
            write_image(config.save_mask, mask[0])
        else:
            write_video(config.save_mask, mask, fps or 1, crf=config.crf)
    return {
        "input": str(config.input),
        "output": str(config.output),
        "frames": int(frames.shape[0]),
        "size": [int(width), int(height)],
        "working_size": list(work),
        "fps": str(fps) if fps else None,
        "model": base.name,
        "adapter": str(resolve_adapter_path(adapter_path)) if adapter_path else None,
        "seconds": round(time.time() - start, 3),
    }
