"""`imvedit eval --bench toy`: edits of held-out shapes-world videos scored against exact ground truth.

The shapes world renders, for every edit, the ground-truth edited video (same motion) and the mask
of pixels the edit changes, so the bench measures what no real dataset can:

- `edit_psnr`: PSNR (dB) of the edited video against the ground truth, all pixels;
- `edit_region_psnr`: the same inside the edit mask (did the edit happen);
- `preserve_psnr`: the same outside the mask (was the rest kept; local edits only);
- `temporal_error`: mean |(y_t - y_{t-1}) - (g_t - g_{t-1})| on [0, 1] pixels (flicker beyond the true motion);
- `gate_iou`: IoU of the gate map, thresholded at its own mid-range, with the edit mask (local edits only);
- `gate_iou_ceiling`: the same for an ideal gate at the base's token resolution (each token's share of
  edited pixels, upsampled as the pipeline upsamples the gate): what a gate that knew the mask would score;
- `edit_psnr_ceiling`, `edit_region_psnr_ceiling`, `temporal_error_floor`: the ground truth passed
  through the VAE and back, the best any edit through this VAE could score (the region ceiling inside
  the edit mask: what the VAE itself can draw of the edited objects).
- `edit_region_psnr_unedited`: the source itself against the ground truth inside the edit mask: what doing
  nothing scores, so an edit_region_psnr is read between it and the ceiling.

Clips are drawn from seeds disjoint from `imvedit prepare toy`'s, so the adapter never saw them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .. import jsonutil
from ..errors import UsageError
from ..models.bases import SHAPES_WAN, SHAPES_WAN_ADAPTER, check_guidance_boundary, with_flow_shift
from ..models.loading import load_model
from ..models.wan import normalize_latents, video_to_tensor
from ..pipeline.pipeline_imvedit import ImVideoEditPipeline, upsample_gate
from ..toy.world import DEFAULT_WORLD, EDIT_KINDS, LOCAL_KINDS, WORLDS, sample_example
from ..training.flow_matching import EDIT_THRESHOLD, changed_share
from .images import contact_sheet
from .metrics import psnr, temporal_error

BENCH_SEED_OFFSET = 10**9  # far from prepare toy's training seeds
PROMPTS = ("description", "instruction")
SDEDIT_STRENGTH = 0.7
# SDEdit has no adapter: only text guidance moves it off the noised source, so it keeps the guidance it was
# benched with here even where the base's own default (what `imvedit edit` uses) is 1
SDEDIT_GUIDANCE = 3.0
BENCH_METRICS = (
    "edit_psnr",
    "edit_region_psnr",
    "preserve_psnr",
    "temporal_error",
    "gate_iou",
    "gate_iou_ceiling",
    "edit_psnr_ceiling",
    "edit_region_psnr_ceiling",
    "edit_region_psnr_unedited",
    "temporal_error_floor",
)


@dataclass
class ToyBenchConfig:
    model: str | None = None  # the base (default: the bundled shapes-wan)
    adapter: str | None = None  # the adapter (default: the bundled one when the base is shapes-wan)
    clips: int = 16  # held-out clips to edit
    seed: int = 0  # which held-out clips
    frames: int = 17  # frames per clip
    size: int = 64  # canvas size in pixels
    edits: tuple[str, ...] = ()  # edit kinds to draw from (default: all)
    steps: int = 20  # denoising steps
    guidance: float | None = None  # text guidance (default: the base's, what `imvedit edit` uses; 3 with sdedit)
    guidance_2: float | None = None  # below guidance_boundary (default: the base's, as `imvedit edit`)
    guidance_boundary: float | None = None  # the sigma where guidance_2 takes over (default: the base's)
    flow_shift: float | None = None  # the sampler's sigma shift (default: the base scheduler's)
    prompt: str = "instruction"  # what the cross-attention reads: the instruction (as `imvedit edit`) or "description"
    report: Path | None = None  # folder for contact sheets and metrics.json
    arch: str | None = None  # "sdedit" (no adapter) or "per-frame" (an imvedit adapter frame by frame)
    strength: float | None = None  # < 1 starts from the noised source (default: 1, or 0.7 with sdedit)
    world: str = DEFAULT_WORLD  # which shapes world the clips come from (imvedit/toy/world.py WORLDS)

    def validate(self) -> None:

        if self.world not in WORLDS:
            raise UsageError(f"Unknown world {self.world!r}.", f"Use --world {' or '.join(WORLDS)}.")
        if self.clips < 1:
            raise UsageError(f"--clips must be at least 1, got {self.clips}.")
        if self.frames < 1 or self.size < 16:
            raise UsageError("--frames must be at least 1 and --size at least 16.")
        unknown = [k for k in self.edits if k not in EDIT_KINDS]
        if unknown:
            raise UsageError(f"Unknown edit kind(s): {', '.join(unknown)}.", f"Use some of: {', '.join(EDIT_KINDS)}.")
        if self.prompt not in PROMPTS:
            raise UsageError(f"--prompt must be one of {', '.join(PROMPTS)}.")
        if self.flow_shift is not None and not self.flow_shift > 0:
            raise UsageError(f"--flow-shift must be positive, got {self.flow_shift}.")
        check_guidance_boundary(self.guidance_boundary)
        if self.strength is not None and not 0.0 < self.strength <= 1.0:
            raise UsageError(f"--strength must be in (0, 1], got {self.strength}.")

    @property
    def resolved_strength(self) -> float:
        # SDEdit's usual middle ground: enough noise to change colours, little enough to keep the layout
        return self.strength if self.strength is not None else (SDEDIT_STRENGTH if self.arch == "sdedit" else 1.0)

    def resolved_guidance(self, base) -> tuple[float, float | None, float | None]:
        """(scale, scale below the boundary, boundary): as given, else as `imvedit edit` runs on `base` (a Base),
        else for SDEdit one scale throughout, as it was benched."""
        if self.arch == "sdedit" and self.guidance is None and self.guidance_2 is None:
            return SDEDIT_GUIDANCE, None, None
        return base.guidance(self.guidance, self.guidance_2, self.guidance_boundary)


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    finite = [v for v in vals if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.inf


def gate_iou(gate: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the gate, thresholded at the midpoint of its own range, with the boolean edit mask."""
    lo, hi = float(gate.min()), float(gate.max())
    if hi - lo < 1e-6:
        pred = np.zeros_like(mask) if hi < 0.5 else np.ones_like(mask)
    else:
        pred = gate > (lo + hi) / 2
    union = np.logical_or(pred, mask).sum()
    return float(np.logical_and(pred, mask).sum() / union) if union else 1.0


def gate_iou_ceiling(mask: np.ndarray, token: int) -> float:
    """`gate_iou` of an ideal gate on `token`-pixel tokens: each token's share of edited pixels, upsampled
    as the pipeline upsamples the gate. The gate is one value per token, so a mask only a few tokens across
    cannot be traced exactly; this says how close a gate that knew the mask would get. Per frame: a base
    whose VAE compresses time gates per latent frame, which makes a real gate coarser still."""

    f, h, w = mask.shape
    share = mask.reshape(f, h // token, token, w // token, token).mean(axis=(2, 4))
    up = upsample_gate(torch.from_numpy(share)[None, None], (f, h, w))
    return gate_iou(up[0, 0].numpy(), mask)


@torch.no_grad()
def encode_frames(vae, video: np.ndarray) -> torch.Tensor:
    """uint8 frames (f, h, w, 3) to the normalised latents (1, c, f', h', w') the transformer sees."""
    x = video_to_tensor(video).to(vae.device, vae.dtype)
    return normalize_latents(vae, vae.encode(x).latent_dist.mode())


def gate_target_iou(
    source_latents: torch.Tensor,
    target_latents: torch.Tensor,
    mask: np.ndarray,
    patch_size,
    thresholds=(EDIT_THRESHOLD,),
) -> list[float]:
    """`gate_iou` of what `gate_supervision` trains the gate towards (flow_matching.changed_share: each token's
    share of latent positions changed by more than a threshold), for each of `thresholds`, from a pair's
    latents (`encode_frames`) and its pixel mask: no learnt gate can draw a sharper map than its target."""

    ious = []
    for threshold in thresholds:
        share = changed_share(source_latents, target_latents, patch_size, threshold)
        ious.append(gate_iou(upsample_gate(share[:, None], mask.shape)[0, 0].numpy(), mask))
    return ious


@torch.no_grad()
def vae_round_trip(pipe, video: np.ndarray) -> np.ndarray:
    """uint8 frames through the pipeline's VAE and back: what a perfect edit would look like."""

    z = encode_frames(pipe.vae, video)
    y = pipe.vae.decode(normalize_latents(pipe.vae, z, inverse=True), return_dict=False)[0]
    return ((y[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu().numpy()[: len(video)]


def run_toy_bench(config: ToyBenchConfig, progress: Callable[[int, int], None] | None = None) -> dict:
    """Edit `config.clips` held-out clips of the shapes world and score them against their exact ground truth."""

    config.validate()
    start = time.time()
    pipe, model, adapter, base = bench_pipeline(config)
    guidance = config.resolved_guidance(base)
    kinds = tuple(config.edits) or EDIT_KINDS
    if config.report is not None:
        Path(config.report).mkdir(parents=True, exist_ok=True)
    per_clip, sheets_done, edit_seconds = [], set(), 0.0
    for i, (ex, out, seconds) in enumerate(edit_bench_clips(config, pipe, guidance)):
        edit_seconds += seconds
        per_clip.append(_score_clip(pipe, ex, out))
        if config.report is not None and ex.kind not in sheets_done:
            gate = out.gate if out.gate is not None else np.zeros(out.frames.shape[:3])
            sheet = Path(config.report) / f"contact_{ex.kind.replace(' ', '_')}.png"
            contact_sheet([ex.source / 255.0, out.frames, ex.target / 255.0, gate], sheet)
            sheets_done.add(ex.kind)
        if progress:
            progress(i + 1, config.clips)
    result = _summary(config, pipe, model, adapter, per_clip, kinds)
    # what ran, where the options were left to the base
    result["options"].update(zip(("guidance", "guidance_2", "guidance_boundary"), guidance, strict=True))
    result.update(
        seconds=round(time.time() - start, 2),
        # the pipeline alone (encode, denoise, decode), without loading or scoring
        edit_seconds_per_frame=round(edit_seconds / (len(per_clip) * config.frames), 4),
    )
    if config.report is not None:
        (Path(config.report) / "metrics.json").write_text(jsonutil.dumps({**result, "per_clip": per_clip}, indent=2))
    return result


def edit_bench_clips(config: ToyBenchConfig, pipe, guidance: tuple) -> Iterator[tuple]:
    """The bench's held-out clips, each edited by `pipe` as the bench edits them (seeded by clip), with `guidance`
    as `resolved_guidance` gives it: yields (example, pipeline output, seconds in the pipeline)."""
    scale, scale_2, boundary = guidance

    kinds = tuple(config.edits) or EDIT_KINDS
    for i in range(config.clips):
        seed = BENCH_SEED_OFFSET + config.seed * 100_003 + i
        ex = sample_example(seed, frames=config.frames, size=config.size, kinds=kinds, world=config.world)
        prompt = ex.target_caption if config.prompt == "description" else ex.instruction
        t0 = time.perf_counter()
        out = pipe(
            ex.source, prompt, gate_prompt=ex.instruction, num_inference_steps=config.steps,
            guidance_scale=scale, guidance_scale_2=scale_2, guidance_boundary=boundary,
            generator=torch.Generator().manual_seed(config.seed * 7919 + i),
            strength=config.resolved_strength,
        )  # fmt: skip
        yield ex, out, time.perf_counter() - t0


def bench_pipeline(config: ToyBenchConfig):
    """The pipeline the bench edits with, its base's name, the adapter path (None: the base alone, sdedit) and
    the base (for its sampling defaults)."""

    # an adapter names its own base; without either, the bundle (load_model drops the adapter for sdedit)
    model = config.model or (None if config.adapter else SHAPES_WAN)
    adapter = config.adapter or (str(SHAPES_WAN_ADAPTER) if model == SHAPES_WAN else None)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, loaded = load_model(model, adapter, device, torch.float32, config.arch)
    pipe = ImVideoEditPipeline.from_base(base, loaded)
    pipe.scheduler = with_flow_shift(base.scheduler, config.flow_shift)
    pipe.set_progress_bar_config(disable=True)
    if config.size % pipe.size_multiple:
        raise UsageError(f"--size must be a multiple of {pipe.size_multiple} for this base.")
    return pipe, base.name, adapter if loaded is not None else None, base


def _score_clip(pipe, ex, out) -> dict:
    """One edited clip's metrics against its exact target, beside the ceilings of a perfect edit through the VAE."""

    pred, target = out.frames, ex.target.astype(np.float64) / 255.0
    ceiling = vae_round_trip(pipe, ex.target)
    local = ex.kind in LOCAL_KINDS
    return {
        "kind": ex.kind,
        "instruction": ex.instruction,
        "edit_psnr": psnr(pred, target),
        "edit_region_psnr": psnr(pred, target, ex.mask) if ex.mask.any() else None,
        "preserve_psnr": psnr(pred, target, ~ex.mask) if local and (~ex.mask).any() else None,
        "temporal_error": temporal_error(pred, target),
        "gate_iou": gate_iou(out.gate, ex.mask) if local and out.gate is not None else None,
        "gate_iou_ceiling": gate_iou_ceiling(ex.mask, pipe.size_multiple) if local else None,
        "edit_psnr_ceiling": psnr(ceiling, target),
        "edit_region_psnr_ceiling": psnr(ceiling, target, ex.mask) if ex.mask.any() else None,
        "edit_region_psnr_unedited": psnr(ex.source, target, ex.mask) if ex.mask.any() else None,
        "temporal_error_floor": temporal_error(ceiling, target),
    }


def _summary(config: ToyBenchConfig, pipe, model: str, adapter: str | None, per_clip: list[dict], kinds) -> dict:
    """Means over all clips, per kind and over local edits, with what was run."""

    def aggregate(rows):
        return {m: _mean([r[m] for r in rows]) for m in BENCH_METRICS} | {"clips": len(rows)}

    loaded = pipe.adapter
    return {
        "bench": "toy",
        "model": model,
        "adapter": adapter,
        # None: the base alone from noise (no adapter, no --arch)
        "arch": config.arch or (loaded.config.arch if loaded is not None else None),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items() if k != "report"},
        "overall": aggregate(per_clip),
        "per_kind": {
            k: aggregate([r for r in per_clip if r["kind"] == k])
            for k in kinds
            if any(r["kind"] == k for r in per_clip)
        },
        "local": aggregate([r for r in per_clip if r["kind"] in LOCAL_KINDS]),
        "clips": len(per_clip),
    }
