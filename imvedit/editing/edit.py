"""`imvedit edit`: one video (or image) in, the edited file out, looking like the input.

The model runs at a working size (the base's preferred area, multiples of its stride, aspect kept)
on frames that ffmpeg scales while decoding, so a long 4K clip never sits in memory at full size.
Videos longer than the base's window are edited in overlapping temporal windows blended at every
step. The result is resized back to the input's exact size and streamed to the encoder with the
input's frame rate and audio; it appears at the destination whole or not at all.

Which model, when no flag says: `--model/--adapter`, else `$IMVEDIT_MODEL`/`$IMVEDIT_ADAPTER`, else
the user config file (`$IMVEDIT_CONFIG`, default `~/.config/imvedit/config.yaml`, keys `model` and
`adapter`), else the bundled toy model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from ..errors import UsageError
from ..fsutil import check_output_path
from ..memory.edit_plan import SDA_CHUNKS, EditShape, choose, default_gpu_memory_gib
from ..memory.spec import read_base_spec
from ..models.adapter_file import read_adapter_metadata
from ..models.bases import (
    SHAPES_WAN,
    SHAPES_WAN_ADAPTER,
    Base,
    bundle_available,
    check_guidance_boundary,
    with_flow_shift,
)
from ..models.dtypes import DTYPES
from ..models.loading import EDIT_ARCHS, load_model, resolve_adapter_path
from ..pipeline.pipeline_imvedit import ImVideoEditPipeline
from ..video.io import VideoInfo, clip_writer, is_image, iter_clip, probe_clip, resize_frame

OFFLOADS = ("auto", "none", "model", "group")
SOURCE_CACHES = ("auto", "device", "cpu", "recompute")
CFG_BATCHES = ("auto", "on", "off")
SDA_CHUNKINGS = ("auto", "on", "off")
# fp8 storage of the frozen base through diffusers' layerwise casting; "bf16" (or none) keeps --dtype
BASE_DTYPES = {"fp8": torch.float8_e4m3fn, "bf16": None}
Progress = Callable[..., None]  # progress(done, total, info="stage")


@dataclass
class EditConfig:
    input: Path  # a video (mp4, mov, mkv, webm, ...) or an image (png, jpg, webp)
    prompt: str  # the edit: an instruction ("make it winter") or a description of the result
    output: Path  # where to write the edited file (same kind as the input)
    model: str | None = None  # the base; may be omitted when the adapter names its base
    adapter: str | None = None  # an adapter .safetensors or a run folder holding adapter.safetensors
    steps: int | None = None  # denoising steps (default: the base's, 30 for Wan)
    guidance: float | None = None  # text guidance scale, 1 turns it off (default: the base's, 5 for Wan)
    # the text guidance below guidance_boundary (a sigma, default the base's: Wan2.2-A14B's expert boundary),
    # where fine detail is drawn; None: --guidance throughout (the toy bases: 1.5 above sigma 0.8, then off)
    guidance_2: float | None = None
    guidance_boundary: float | None = None
    # the sampler's sigma shift (default: the base scheduler's); higher spends more of the steps at high
    # noise, where an edit's colours and layout are decided (on the toy it moved results little; the
    # adapter's training flow_shift mattered, docs/toy.md)
    flow_shift: float | None = None
    source_guidance: float = 1.0  # source guidance scale (1 turns it off)
    strength: float = 1.0  # < 1 starts from the noised source instead of pure noise
    seed: int = 0  # the noise seed
    negative_prompt: str = ""  # text guided away from
    gate_prompt: str | None = None  # text for the gate, when it should differ from the prompt
    max_area: int | None = None  # working area in pixels (default: the base's)
    resolution: int | None = None  # instead of max_area: the working size's shorter side, e.g. 480 ("480p")
    overwrite: bool = False  # replace an existing output
    save_mask: Path | None = None  # also write the gate map (the implicit edit mask) as a video/image
    crf: int = 18  # quality of the output for x264/x265 (lower is better)
    codec: str = "libx264"  # the ffmpeg video encoder
    window: int | None = None  # frames the model sees at once (default: the base's, 81 for Wan)
    overlap: int | None = None  # frames consecutive windows share (default: the base's, 16 for Wan)
    max_frames: int | None = None  # edit at most this many frames (after --start)
    start: float | None = None  # seconds: edit from here
    end: float | None = None  # seconds: edit up to here
    model_fps: float | None = None  # run the model on frames subsampled to this rate; the output keeps the input's
    dtype: str | None = None  # "bf16" | "fp16" | "fp32" (default: bf16 on a GPU, fp32 on the CPU)
    device: str | None = None  # "cuda", "cuda:1", "cpu", ... (default: the first GPU, else the CPU)
    cpu_offload: bool = False  # the same as offload="model" (kept for existing job files)
    # where the models live: "none" (on the device; the text encoder only while it encodes), "model" (diffusers
    # model CPU offload: one model on the device at a time), "group" (diffusers group offloading: the
    # transformer's blocks stream in one by one), "auto" (the memory plan's choice for this device)
    offload: str = "auto"
    # where the source stream's features live while denoising: "device", "cpu" (host memory, each block
    # brought in as it runs), "recompute" (no cache: the stream runs inside every pass), "auto"
    source_cache: str = "auto"
    cfg_batch: str = "auto"  # the guidance branches in one batch ("on", faster) or one by one ("off"), "auto"
    # each block's SDA over a window's latent frames in pieces ("on": a fraction of its memory, the same frames)
    # or all at once ("off"), "auto"
    sda_chunking: str = "auto"
    base_dtype: str | None = None  # "fp8": the frozen base's weights stored in fp8, computed in --dtype
    vae_tiling: bool | None = None  # decode/encode in spatial tiles (default: on above 480p)
    compile: bool = False  # torch.compile the transformer's repeated blocks (diffusers' compile_repeated_blocks)
    # standard diffusers-format Wan LoRAs for the frozen base, "PATH" or "PATH:SCALE" (e.g. a 4-step distillation)
    lora: list[str] = field(default_factory=list)
    attention_backend: str | None = None  # a diffusers attention backend, e.g. "flash", "sage", "native"
    arch: str | None = None  # "sdedit" (no adapter: noise the source and denoise) or "per-frame" (see load_model)

    def validate(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UsageError("The prompt is empty.", 'Say what the edit should do, e.g. "make it winter".')
        try:
            self.prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # a shell passed bytes that are not UTF-8 (Python keeps them as surrogates)
            raise UsageError(
                "The prompt is not valid UTF-8 text.", "Pass the prompt in UTF-8 (check your terminal's locale)."
            ) from e
        if len(self.prompt) > 10_000:
            raise UsageError(f"The prompt is {len(self.prompt)} characters long.", "Keep it under 10,000 characters.")
        if self.resolution is not None and self.max_area is not None:
            raise UsageError("Give --resolution or --max-area, not both.")
        if (self.resolution is not None and self.resolution < 8) or (self.max_area is not None and self.max_area < 64):
            raise UsageError("--resolution must be at least 8 pixels and --max-area at least 64.")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"--steps must be at least 1, got {self.steps}.")
        if self.flow_shift is not None and not self.flow_shift > 0:
            raise UsageError(f"--flow-shift must be positive, got {self.flow_shift}.", "Wan uses 3 at 480p, 5 at 720p.")
        check_guidance_boundary(self.guidance_boundary)
        if not 0.0 < self.strength <= 1.0:
            raise UsageError(f"--strength must be in (0, 1], got {self.strength}.")
        if self.arch is not None and self.arch not in EDIT_ARCHS:
            raise UsageError(f"Unknown --arch {self.arch!r}.", f"Use {' or '.join(EDIT_ARCHS)}, or drop --arch.")
        if self.arch == "sdedit" and self.strength >= 1.0:
            raise UsageError(
                "--arch sdedit starts from the noised source: it needs --strength below 1.", "Add e.g. --strength 0.7."
            )
        if self.window is not None and (self.window < 1 or (self.window - 1) % 4):
            raise UsageError(f"--window must be 4k + 1 frames (e.g. 17, 81), got {self.window}.")
        if self.overlap is not None and self.overlap < 1:
            raise UsageError(f"--overlap must be at least 1 frame, got {self.overlap}.")
        if self.max_frames is not None and self.max_frames < 1:
            raise UsageError(f"--max-frames must be at least 1, got {self.max_frames}.")
        if (self.start is not None and self.start < 0) or (self.end is not None and self.end <= (self.start or 0.0)):
            raise UsageError(
                "--start must be ≥ 0 and --end after it.", "Give times in seconds, e.g. --start 2 --end 7.5."
            )
        if self.model_fps is not None and self.model_fps <= 0:
            raise UsageError(f"--model-fps must be positive, got {self.model_fps}.")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UsageError(f"Unknown --dtype {self.dtype!r}.", f"Use one of {', '.join(DTYPES)}.")
        for name, value, choices in (
            ("--offload", self.offload, OFFLOADS),
            ("--source-cache", self.source_cache, SOURCE_CACHES),
            ("--cfg-batch", self.cfg_batch, CFG_BATCHES),
            ("--sda-chunking", self.sda_chunking, SDA_CHUNKINGS),
        ):
            if value not in choices:
                raise UsageError(f"Unknown {name} {value!r}.", f"Use one of {', '.join(choices)}.")
        if self.cpu_offload and self.offload not in ("auto", "model"):
            raise UsageError("--cpu-offload is --offload model.", "Give one of them.")
        if self.base_dtype is not None and self.base_dtype not in BASE_DTYPES:
            raise UsageError(f"Unknown --base-dtype {self.base_dtype!r}.", f"Use one of {', '.join(BASE_DTYPES)}.")
        for spec in self.lora:
            lora_spec(spec)
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


def user_config_path() -> Path:
    return Path(os.environ.get("IMVEDIT_CONFIG") or Path.home() / ".config" / "imvedit" / "config.yaml").expanduser()


def resolve_model(model: str | None, adapter: str | None) -> tuple[str, str | None, str]:
    """(model, adapter, where they came from: "flags" | "environment" | "config file" | "bundle")."""
    if model is not None or adapter is not None:
        return model, adapter, "flags"  # the adapter's metadata names its base when model is None
    env_model, env_adapter = os.environ.get("IMVEDIT_MODEL"), os.environ.get("IMVEDIT_ADAPTER")
    if env_model or env_adapter:
        return env_model, env_adapter, "environment"
    path = user_config_path()
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(
                f"The config file {path} is not valid YAML: {e}".splitlines()[0], "Fix or remove it."
            ) from e
        if not isinstance(data, dict) or set(data) - {"model", "adapter"}:
            raise UsageError(f"The config file {path} may only set `model` and `adapter`.", "Fix or remove it.")
        if data.get("model") or data.get("adapter"):
            return data.get("model"), data.get("adapter"), "config file"
    if not bundle_available():
        raise UsageError(
            "No --model given, and this build has no bundled toy model to fall back on.",
            "Pass --model (a diffusers Wan folder, a hub id, or 'tiny-random') and --adapter, or set IMVEDIT_MODEL.",
        )
    return SHAPES_WAN, str(SHAPES_WAN_ADAPTER), "bundle"


def working_size(width: int, height: int, area: int, multiple: int) -> tuple[int, int]:
    """The model's size for a frame: about `area` pixels, aspect kept, sides multiples of `multiple`."""
    scale = (area / (width * height)) ** 0.5
    w = max(multiple, round(width * scale / multiple) * multiple)
    h = max(multiple, round(height * scale / multiple) * multiple)
    return w, h


def _area(config: EditConfig, width: int, height: int, base: Base) -> int:
    """The working area: --max-area, or the area whose shorter side is --resolution, or the base's."""
    if config.resolution is not None:
        return round(width * height * (config.resolution / min(width, height)) ** 2)
    return config.max_area or base.default_area


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return (frames * 255).round().clip(0, 255).astype(np.uint8)


def lora_spec(spec: str) -> tuple[Path, float]:
    """ "PATH" or "PATH:SCALE" -> (path, scale); the file must exist."""
    path, _, scale = spec.rpartition(":") if ":" in Path(spec).name else (spec, "", "")
    try:
        value = float(scale) if scale else 1.0
    except ValueError:
        raise UsageError(
            f"--lora {spec}: {scale!r} is not a scale.", "Write PATH or PATH:SCALE, e.g. lora.safetensors:0.8."
        ) from None
    if not Path(path).is_file():
        raise UsageError(f"--lora {path} does not exist.", "Give a diffusers-format Wan LoRA .safetensors file.")
    return Path(path), value


def load_loras(transformer, specs: list[str]) -> None:
    """Standard Wan LoRAs onto the frozen base through diffusers' own loader (its format conversions
    included), fused into the weights: the adapter's hooks then see the LoRA'd base, and a step costs no more."""
    from diffusers.loaders import WanLoraLoaderMixin

    for i, spec in enumerate(specs):
        path, scale = lora_spec(spec)
        try:
            state = WanLoraLoaderMixin.lora_state_dict(str(path))
            transformer.load_lora_adapter(state, adapter_name=f"lora{i}", prefix="transformer")
        except (ValueError, KeyError, OSError) as e:
            raise UsageError(
                f"--lora {path} is not a Wan LoRA diffusers can load: {e}".splitlines()[0],
                "Give a LoRA trained for this Wan base (diffusers, musubi-tuner or ComfyUI format).",
            ) from e
        transformer.fuse_lora(lora_scale=scale, adapter_names=[f"lora{i}"])


def place_models(pipe: ImVideoEditPipeline, offload: str, device: torch.device) -> None:
    """Put the loaded models where `offload` says, with diffusers' own offloading; the adapters (small, and
    run inside the transformers' blocks rather than called) stay on the device in every mode."""
    adapters = [a for a in (pipe.adapter, pipe.adapter_2) if a is not None]
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)  # the adapters are in _exclude_from_cpu_offload
    elif offload == "group":
        pipe.enable_group_offload(
            onload_device=device, offload_type="block_level", num_blocks_per_group=1,
            use_stream=device.type == "cuda", exclude_modules=["adapter", "adapter_2", "vae"],
        )  # fmt: skip
        pipe.vae.to(device)
    else:
        # UMT5-XXL (10.6 GiB) and, with two experts, the expert not in use wait in host memory on a GPU
        on_gpu = device.type == "cuda"
        pipe.offload_text_encoder = pipe.offload_inactive_expert = on_gpu
        pipe.text_encoder.to("cpu" if on_gpu else device)
        pipe.transformer.to(device)
        if pipe.transformer_2 is not None:
            pipe.transformer_2.to("cpu" if on_gpu else device)
        pipe.vae.to(device)
    for a in adapters:
        a.to(device)


@dataclass
class Editor:
    """Loaded models, reused across the jobs of one batch (keyed by everything that changes what is loaded)."""

    loaded: dict = field(default_factory=dict)

    def pipeline(self, config: EditConfig, offload: str = "none") -> tuple[ImVideoEditPipeline, Base, str | None]:
        model, adapter, _ = resolve_model(config.model, config.adapter)
        device = edit_device(config)
        dtype = DTYPES[config.dtype] if config.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
        key = (model, adapter, str(device), dtype, offload, config.arch, config.base_dtype, config.compile,
               tuple(config.lora), config.attention_backend)  # fmt: skip
        if key not in self.loaded:
            self.loaded.clear()  # one model in memory at a time
            loaded = load_model(model, adapter, torch.device("cpu"), dtype, config.arch)
            base = loaded.base
            pipe = ImVideoEditPipeline.from_base(base, loaded.adapter, loaded.adapter_2)
            pipe.set_progress_bar_config(disable=True)
            transformers = [t for t in (pipe.transformer, pipe.transformer_2) if t is not None]
            for t in transformers:
                load_loras(t, config.lora)
                if BASE_DTYPES.get(config.base_dtype) is not None:
                    t.enable_layerwise_casting(storage_dtype=BASE_DTYPES[config.base_dtype], compute_dtype=dtype)
                _set_attention_backend(t, config.attention_backend)
            place_models(pipe, offload, device)
            if config.compile:
                for t in transformers:
                    t.compile_repeated_blocks(dynamic=True)
            self.loaded[key] = (pipe, base, adapter)
        return self.loaded[key]


TILING_AREA = 832 * 480  # above 480p the VAE works in tiles unless told otherwise


def memory_options(config: EditConfig, gpu_memory_gib: float | None = None) -> dict:
    """The edit's offload, source cache and guidance batching: as given, and for each left at "auto" what the
    memory plan (`imvedit edit --dry-run`) picks for this input on this GPU: the fastest set that fits its
    free memory (or `gpu_memory_gib`). On a CPU, whose memory is the host's, the fastest: everything in place
    and batched. The base's storage dtype is never changed behind the user's back (fp8 is asked for)."""
    chosen = {
        "offload": "model" if config.cpu_offload else config.offload,
        "source_cache": config.source_cache,
        "cfg_batch": config.cfg_batch,
        "sda_chunking": config.sda_chunking,
    }
    if "auto" not in chosen.values():
        return chosen
    if gpu_memory_gib is None and edit_device(config).type != "cuda":
        fastest = {"offload": "none", "source_cache": "device", "cfg_batch": "on", "sda_chunking": "off"}
        return {k: fastest[k] if v == "auto" else v for k, v in chosen.items()}
    plan = _plan_for_input(config, chosen, gpu_memory_gib)
    return {k: plan[k] for k in chosen}


def _plan_for_input(config: EditConfig, chosen: dict, gpu_memory_gib: float | None) -> dict:
    """The memory plan's choice for `config.input` at its working size and length, from the configs alone."""

    model, adapter, _ = resolve_model(config.model, config.adapter)
    if model is None:  # the adapter names its base
        model = read_adapter_metadata(resolve_adapter_path(adapter))["base"]["name"]
    spec = read_base_spec(model, adapter)
    t, vae = spec.config("transformer"), spec.config("vae")
    multiple = vae.get("scale_factor_spatial", 8) * t.get("patch_size", (1, 2, 2))[1]
    info = probe_clip(config.input)
    width, height, frames = info.width, info.height, info.frame_count_estimate or spec.window_frames
    frames = min(frames, config.max_frames or frames)
    area = config.max_area or spec.default_area
    if config.resolution is not None:
        area = round(width * height * (config.resolution / min(width, height)) ** 2)
    w, h = working_size(width, height, area, multiple)
    shape = EditShape(
        w, h, frames, config.window or spec.window_frames, config.overlap or spec.window_overlap,
        guidance=spec.guided(config.guidance, config.guidance_2),
        source_guidance=config.source_guidance != 1.0,
    )  # fmt: skip
    requested = {**chosen, "base_dtype": config.base_dtype or "bf16"}
    gpu = gpu_memory_gib if gpu_memory_gib is not None else default_gpu_memory_gib()
    return choose(spec, shape, requested, gpu, config.vae_tiling).chosen.options.as_dict()


def edit_device(config: EditConfig) -> torch.device:
    return torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _set_attention_backend(transformer, backend: str | None) -> None:
    if not backend:
        return
    try:
        transformer.set_attention_backend(backend)
    except (ValueError, ImportError, RuntimeError) as e:
        raise UsageError(
            f"Attention backend {backend!r} is not available: {e}".splitlines()[0],
            "Drop --attention-backend or install the kernel it needs.",
        ) from e


def edit(config: EditConfig, progress: Progress | None = None, editor: Editor | None = None) -> dict:
    """Edit `config.input` into `config.output`. Returns what was done (sizes, frames, seconds).

    An image is a one-frame clip here (video/io reads and writes both), so there is one path for both."""
    config.validate()
    start_time = time.time()
    progress = progress or (lambda *a, **k: None)
    options = memory_options(config)
    pipe, base, adapter_path = (editor or Editor()).pipeline(config, options["offload"])
    info = probe_clip(config.input)
    width, height = info.width, info.height
    work = working_size(width, height, _area(config, width, height, base), pipe.size_multiple)
    frames = _decode(config, info, work, progress)
    # --model-fps: the model sees every k-th frame; each output frame repeats the latest edited one.
    k = max(1, round(float(info.fps) / config.model_fps)) if config.model_fps and not info.still else 1
    decoded, frames = len(frames), frames[::k]
    tiling = config.vae_tiling if config.vae_tiling is not None else work[0] * work[1] > TILING_AREA
    if tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    result, n_windows = _run_pipeline(pipe, base, config, options, frames, progress)
    edited = _to_uint8(result.frames)
    out = {"fps": info.fps, "size": (width, height), "crf": config.crf}
    with clip_writer(config.output, **out, codec=config.codec, **_audio(config, info)) as writer:
        for i in range(decoded):  # the output has every decoded frame, at the input's rate
            writer.write(resize_frame(edited[min(i // k, len(edited) - 1)], (width, height)))
            progress(i + 1, decoded, info="encode")
    if config.save_mask is not None and result.gate is not None:
        gate = _to_uint8(np.repeat(result.gate[..., None], 3, axis=-1))
        with clip_writer(config.save_mask, **out) as writer:
            for i in range(decoded):
                writer.write(resize_frame(gate[min(i // k, len(gate) - 1)], (width, height)))
    return {
        "input": str(config.input),
        "output": str(config.output),
        "frames": int(decoded),
        "model_frames": int(len(frames)),
        "windows": n_windows,
        "size": [int(width), int(height)],
        "working_size": list(work),
        "fps": None if info.still else str(info.fps),
        "model": base.name,
        "adapter": str(resolve_adapter_path(adapter_path)) if adapter_path else None,
        "memory": {**options, "vae_tiling": tiling},
        "seconds": round(time.time() - start_time, 3),
    }


def _decode(config: EditConfig, info: VideoInfo, work: tuple[int, int], progress: Progress) -> np.ndarray:
    """The input's frames at the working size (the trimmed part, at most --max-frames)."""
    frames = []
    for frame in iter_clip(config.input, info, work, config.start, config.end, config.max_frames):
        frames.append(frame)
        progress(len(frames), info.frame_count_estimate or len(frames), info="decode")
    return np.stack(frames)


def _audio(config: EditConfig, info: VideoInfo) -> dict:
    """The output's audio: the input's, over the trimmed span (none for an image or a silent video)."""
    if not info.has_audio:
        return {}
    return {"audio_from": config.input, "audio_start": config.start, "audio_end": config.end}


def _run_pipeline(pipe, base: Base, config: EditConfig, options: dict, frames: np.ndarray, progress: Progress):
    """The denoising run with the config's (or the base's default) settings; returns it and its window count."""
    steps = config.steps or base.default_steps
    guidance, guidance_2, boundary = base.guidance(config.guidance, config.guidance_2, config.guidance_boundary)
    window, overlap = config.window or base.window_frames, config.overlap or base.window_overlap
    n_windows = len(pipe.latent_windows(len(frames), window, overlap))
    pipe.scheduler = with_flow_shift(base.scheduler, config.flow_shift)  # a batch's jobs may differ

    def on_step(_pipe, i, _t, kw):
        progress(i + 1, steps, info=f"denoise ({n_windows} window{'s' if n_windows > 1 else ''})")
        return kw

    result = pipe(
        frames,
        config.prompt,
        negative_prompt=config.negative_prompt,
        gate_prompt=config.gate_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        guidance_scale_2=guidance_2,
        guidance_boundary=boundary,
        source_guidance_scale=config.source_guidance,
        strength=config.strength,
        generator=torch.Generator().manual_seed(config.seed),
        window_size=window,
        window_overlap=overlap,
        source_cache=options["source_cache"],
        cfg_batch=options["cfg_batch"] == "on",
        sda_chunks=SDA_CHUNKS if options["sda_chunking"] == "on" else 1,
        callback_on_step_end=on_step,
    )
    return result, n_windows
