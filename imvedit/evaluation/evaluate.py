"""`imvedit eval --pred --source`: score existing edits (from imvedit or any other tool) against their
sources: one pair of files, or two folders matched by file name with a prompts file.

Model-free metrics always (PSNR against the source, flicker, temporal error); CLIP-T, CLIP-F, DINO-F
when `--clip`/`--dino` weights load, warp error when OpenCV is installed; otherwise those are listed
under `skipped` with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .. import __version__, jsonutil
from ..errors import UsageError
from ..fsutil import atomic_path
from ..video.io import IMAGE_SUFFIXES, is_image, read_image, read_video
from .learned import MetricModels
from .metrics import flicker, psnr, ssim, temporal_error

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"}
METRICS_VERSION = "1"  # bump when a metric's definition changes, so old and new numbers are not mixed


@dataclass
class EvalConfig:
    pred: Path  # the edited video or image, or a folder of them
    source: Path  # the video or image it was made from, or a folder with the same file names
    prompts: Path | None = None  # YAML/JSON mapping {file name: prompt} for CLIP-T (folders or one pair)
    clip: str | None = None  # CLIP weights (folder or hub id) for CLIP-T/CLIP-F; None skips them
    dino: str | None = None  # DINOv2 weights for DINO-F; None skips it
    judge: object | None = None  # a judge.Judge for VLM scores; None skips them
    max_frames: int = 64  # frames per clip read for the metrics (uniformly sampled beyond this)
    report: Path | None = None  # a folder to write metrics.json into

    def validate(self) -> None:
        for p in (self.pred, self.source):
            if not Path(p).exists():
                raise UsageError(f"{p} does not exist.", "Check the path.")
        if Path(self.pred).is_dir() != Path(self.source).is_dir():
            raise UsageError("--pred and --source must both be files or both be folders.")
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise UsageError(
                f"Prompts file {self.prompts} does not exist.", "Give a YAML/JSON mapping of file name to prompt."
            )
        if self.max_frames < 2:
            raise UsageError(f"--frames-per-clip must be at least 2, got {self.max_frames}.")
        if self.report is not None and Path(self.report).is_file():
            raise UsageError(f"--report {self.report} is a file.", "Give a folder.")


def _read(path: Path, max_frames: int):
    frames = read_image(path) if is_image(path) else read_video(path)[0]
    if len(frames) > max_frames:  # uniform sample, first and last included
        idx = [round(i * (len(frames) - 1) / (max_frames - 1)) for i in range(max_frames)]
        frames = frames[idx]
    return frames


def _read_prompts(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UsageError(f"Prompts file {path} is not YAML/JSON: {str(e).splitlines()[0]}", "Fix it.") from e
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise UsageError(f"Prompts file {path} must map file names to prompts.", 'e.g. {"clip1.mp4": "make it winter"}')
    return data


def pairs_of(config: EvalConfig) -> list[tuple[Path, Path]]:
    pred, source = Path(config.pred), Path(config.source)
    if not pred.is_dir():
        return [(pred, source)]
    media = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    preds = sorted(p for p in pred.iterdir() if p.suffix.lower() in media and not p.name.startswith("."))
    missing = [p.name for p in preds if not (source / p.name).is_file()]
    if missing:
        raise UsageError(
            f"{len(missing)} edit(s) in {pred} have no source of the same name in {source} (e.g. {missing[0]}).",
            "Name each edit like its source, or score them one by one.",
        )
    if not preds:
        raise UsageError(f"No videos or images in {pred}.")
    return [(p, source / p.name) for p in preds]


def score_pair(
    pred_path: Path,
    source_path: Path,
    prompt: str | None,
    models: MetricModels,
    max_frames: int,
    instruction: str | None = None,
    mask_path: Path | None = None,
) -> dict:
    """The metrics of one edit. With `mask_path` (white where the edit should act), also what was kept
    outside it (`preserve_psnr`, `preserve_ssim`) and how much changed inside (`edit_region_change`)."""
    pred, source = _read(pred_path, max_frames), _read(source_path, max_frames)
    if pred.shape != source.shape:
        raise UsageError(
            f"{pred_path} is {pred.shape[0]} frames of {pred.shape[2]}x{pred.shape[1]}, "
            f"{source_path} is {source.shape[0]} frames of {source.shape[2]}x{source.shape[1]}.",
            "Compare an edit with the source it was made from.",
        )
    row = {
        "pred": str(pred_path),
        "source": str(source_path),
        "prompt": prompt,
        "frames": int(pred.shape[0]),
        "psnr_vs_source": psnr(pred, source),
        "flicker": flicker(pred),
        "source_flicker": flicker(source),
        "temporal_error_vs_source": temporal_error(pred, source),
        **models.score(pred, source, prompt, instruction),
    }
    if mask_path is not None:
        mask = _read(Path(mask_path), max_frames).mean(-1) > 127  # sampled like the clip
        if len(mask) == 1:
            mask = np.repeat(mask, len(source), axis=0)
        if mask.shape != source.shape[:3]:
            raise UsageError(
                f"Mask {mask_path} is {mask.shape[2]}x{mask.shape[1]}, {len(mask)} frames; {source_path} is not.",
                "Give a mask of the clip's size and length (or one image for all frames).",
            )
        row["preserve_psnr"] = psnr(pred, source, ~mask)
        row["preserve_ssim"] = ssim(pred, source, ~mask)
        change = np.abs(pred.astype(np.float64) - source.astype(np.float64)).mean(-1) / 255.0
        row["edit_region_change"] = float(change[mask].mean()) if mask.any() else None
    return row


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return None
    return math.inf if any(math.isinf(v) for v in finite) else sum(finite) / len(finite)


def evaluate(config: EvalConfig, progress=None) -> dict:
    config.validate()
    pairs = pairs_of(config)
    prompts = _read_prompts(config.prompts)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = MetricModels.load(config.clip, config.dino, device, config.judge)  # once for every clip
    rows = []
    for i, (p, s) in enumerate(pairs, 1):
        rows.append(score_pair(p, s, prompts.get(p.name), models, config.max_frames))
        if progress:
            progress(i, len(pairs))
    names = [k for k in rows[0] if isinstance(rows[0][k], float)]
    result = {
        "imvedit_version": __version__,
        "metrics_version": METRICS_VERSION,
        "metric_models": models.names,
        "skipped": models.skipped,
        "clips": len(rows),
        "overall": {k: _mean([r.get(k) for r in rows]) for k in names},
        "per_clip": rows,
    }
    if config.report is not None:
        Path(config.report).mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(config.report) / "metrics.json") as tmp:
            tmp.write_text(jsonutil.dumps(result, indent=2))
    return result


def evaluate_pair(config: EvalConfig) -> dict:
    """One pred/source pair: its metrics as one flat record (and what was skipped)."""
    result = evaluate(config)
    return {**result["per_clip"][0], "skipped": result["skipped"]}
