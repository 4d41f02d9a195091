"""`imvedit edit --dry-run`: the memory plan of an edit as one JSON-ready dict, from flags alone.

No input file and no weights: the base's configs are read (a config-only folder is enough), the working
size and clip length come from `--size`/`--frames` (or the base's defaults), and the options left at auto
are chosen by `edit_plan.choose` against `--gpu-memory`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..editing.edit import resolve_model, working_size
from ..errors import UsageError
from ..models.adapter_file import read_adapter_metadata
from ..models.loading import resolve_adapter_path
from .edit_plan import CHOICES, EditShape, choose, default_gpu_memory_gib, usable_gib
from .measure import measure_edit
from .spec import read_base_spec


@dataclass
class DryRunRequest:
    """What `--dry-run` reads of the edit's flags (None: the default `imvedit edit` would use)."""

    model: str | None = None
    adapter: str | None = None
    size: str | None = None  # "WxH"
    frames: int | None = None
    gpu_memory_gib: float | None = None
    window: int | None = None
    overlap: int | None = None
    guidance: float | None = None
    source_guidance: float = 1.0
    source_cache: str | None = None  # None or "auto": the plan's choice
    cfg_batch: str | None = None
    offload: str | None = None
    base_dtype: str | None = None  # None: bf16, as `imvedit edit` (auto never picks fp8 for the user)
    vae_tiling: bool | None = None
    measure: bool = False  # also run the phases on the meta device
    sda_chunking: str | None = None  # the SDA over a window's frames in pieces ("on") or whole ("off")
    guidance_2: float | None = None  # the text guidance below the guidance boundary (None: the base's)


def parse_size(size: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {size!r} is not WxH.", "Give the working size, e.g. --size 832x480.") from None
    if w < 1 or h < 1:
        raise UsageError(f"--size {size} must be positive.", "Give the working size, e.g. --size 832x480.")
    return w, h


def _default_size(area: int, multiple: int) -> tuple[int, int]:
    """The base's working area at Wan's landscape 832:480, sides multiples of the base's stride."""

    return working_size(832, 480, area, multiple)


def edit_dry_run(req: DryRunRequest) -> dict:
    """The plan (and with `measure`, the meta-device measurement) of the edit the flags describe."""

    model, adapter, _ = resolve_model(req.model, req.adapter)
    if model is None:  # the adapter names its base
        model = read_adapter_metadata(resolve_adapter_path(adapter))["base"]["name"]
    spec = read_base_spec(model, adapter)
    t = spec.config("transformer")
    multiple = spec.config("vae").get("scale_factor_spatial", 8) * t.get("patch_size", (1, 2, 2))[1]
    width, height = parse_size(req.size) if req.size else _default_size(spec.default_area, multiple)
    if width % multiple or height % multiple:
        raise UsageError(f"--size {width}x{height}: this base needs multiples of {multiple}.")
    window = req.window or spec.window_frames
    frames = req.frames or window
    if frames < 1:
        raise UsageError(f"--frames must be at least 1, got {frames}.")
    shape = EditShape(
        width, height, frames, window, req.overlap or spec.window_overlap,
        # a negative branch unless every step's scale is 1: as given, else the base's defaults
        guidance=spec.guided(req.guidance, req.guidance_2),
        source_guidance=req.source_guidance != 1.0,
    )  # fmt: skip
    gpu = req.gpu_memory_gib if req.gpu_memory_gib is not None else default_gpu_memory_gib()
    requested = {k: getattr(req, k) for k in CHOICES}
    # as the edit itself: fp8 changes the weights, so it is planned when asked for, never chosen
    requested["base_dtype"] = req.base_dtype or "bf16"
    choice = choose(spec, shape, requested, gpu, req.vae_tiling)
    plan = choice.chosen
    result = {
        "model": model,
        "adapter": adapter,
        "size": f"{width}x{height}",
        "frames": frames,
        "windows": plan.detail["windows"],
        "tokens_per_window": plan.detail["tokens_per_window"],
        "gpu_memory_gib": round(gpu, 2),
        "usable_gib": round(usable_gib(gpu), 2),
        "fits": choice.fits,
        "peak_gib": plan.peak_gib,
        "dominant": plan.dominant,
        "options": plan.options.as_dict(),
        "components": plan.components,
        "phases": plan.phases,
        "alternatives": [
            {"options": p.options.as_dict(), "peak_gib": p.peak_gib, "fits": fits, "dominant": p.dominant}
            for p, fits in choice.alternatives
        ],
        "note": "a plan from the configs (weights exact, activations as the code allocates them on the meta "
        "device); usable = 90 % of the device, the rest for the CUDA context and allocator",
    }
    if req.measure:
        m = measure_edit(spec, shape, plan.options)
        result["measured"] = {"peak_gib": m.peak_gib, "components": m.components, "phases": m.phases}
    return result
