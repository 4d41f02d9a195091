"""`imvedit eval --manifest FILE --report DIR`: edit what is missing, score everything, write a report.

A manifest (YAML list or JSONL) has one row per clip:
- `source` (required): the video or image to edit;
- `instruction` (required): the edit, read by the gate and, without a caption, by the cross-attention;
- `caption` (optional): a description of the wanted result, given to the cross-attention instead;
- `mask` (optional): a video or image, white where the edit should act; adds `preserve_psnr` (PSNR
  against the source outside the mask) and `edit_region_change` (mean change inside it);
- `output` (optional): an edit that already exists (from any tool); otherwise imvedit makes it in
  `DIR/edits/` with `--model/--adapter` (rerunning skips the edits already there: resumable).
Relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import __version__, jsonutil
from ..editing.batch import run_jobs
from ..editing.edit import EditConfig
from ..errors import UsageError
from ..fsutil import atomic_path
from .evaluate import METRICS_VERSION, _mean, score_pair
from .learned import MetricModels
from .report import write_report

ROW_KEYS = {"source", "instruction", "caption", "mask", "output"}


@dataclass
class ManifestEvalConfig:
    manifest: Path  # YAML list or JSONL of {source, instruction, caption?, mask?, output?}
    report: Path  # folder: edits/, strips/, metrics.json, index.html
    model: str | None = None  # base for the edits imvedit makes (default: as `imvedit edit` chooses)
    adapter: str | None = None  # adapter for those edits
    steps: int | None = None  # denoising steps for those edits (default: the base's)
    clip: str | None = None  # CLIP weights for CLIP-T/CLIP-F
    dino: str | None = None  # DINOv2 weights for DINO-F
    max_frames: int = 64  # frames per clip scored
    judge: object | None = None  # a judge.Judge for VLM scores; None skips them

    def validate(self) -> None:
        if not Path(self.manifest).is_file():
            raise UsageError(f"Manifest {self.manifest} does not exist.", "Give a YAML or JSONL file of clips.")
        if Path(self.report).is_file():
            raise UsageError(f"--report {self.report} is a file.", "Give a folder.")


def read_manifest(path: Path) -> list[dict]:
    text = Path(path).read_text(encoding="utf-8")
    try:
        rows = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if Path(path).suffix.lower() == ".jsonl"
            else yaml.safe_load(text)
        )
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"Manifest {path} is not valid: {str(e).splitlines()[0]}", "Fix the file.") from e
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"Manifest {path} holds no rows.", "Give a list of {source, instruction} rows.")
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("source") or not isinstance(row.get("instruction"), str):
            raise UsageError(f"{Path(path).name}, row {i} needs source and instruction.", "Fix that row.")
        unknown = sorted(set(row) - ROW_KEYS)
        if unknown:
            raise UsageError(
                f"{Path(path).name}, row {i} has unknown keys {', '.join(unknown)}.",
                f"Keys: {', '.join(sorted(ROW_KEYS))}.",
            )
        resolved = dict(row)
        for key in ("source", "mask", "output"):
            if row.get(key):
                p = Path(str(row[key])).expanduser()
                resolved[key] = p if p.is_absolute() else Path(path).parent / p
        out.append(resolved)
    return out


def run_manifest(config: ManifestEvalConfig, progress=None) -> dict:

    config.validate()
    rows = read_manifest(config.manifest)
    report = Path(config.report)
    (report / "edits").mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, row in enumerate(rows):
        if row.get("output") is None:
            name = f"{i:04d}-{Path(row['source']).name}"
            row["output"] = report / "edits" / name
            row["gate"] = report / "edits" / f"{Path(name).stem}.gate{Path(name).suffix}"
            if not Path(row["output"]).exists():
                jobs.append(
                    EditConfig(
                        input=row["source"],
                        prompt=row.get("caption") or row["instruction"],
                        output=row["output"],
                        gate_prompt=row["instruction"],
                        save_mask=row["gate"],
                        model=config.model,
                        adapter=config.adapter,
                        steps=config.steps,
                    )  # fmt: skip
                )
    failures = {}
    for n, record in enumerate(run_jobs(jobs), 1):  # one model load for all edits
        if record["status"] == "failed":
            failures[record["output"]] = record["error"]
        if progress:
            progress(n, len(jobs) + len(rows))
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = MetricModels.load(config.clip, config.dino, device, config.judge)
    clips = []
    for i, row in enumerate(rows):
        entry = {"row": i, "instruction": row["instruction"], "caption": row.get("caption")}
        if str(row["output"]) in failures or not Path(row["output"]).exists():
            clips.append({**entry, "source": str(row["source"]), "pred": str(row["output"]), "status": "failed",
                          "error": failures.get(str(row["output"]), "the edit does not exist")})  # fmt: skip
            continue
        scores = score_pair(
            Path(row["output"]),
            Path(row["source"]),
            row.get("caption") or row["instruction"],
            models,
            config.max_frames,
            instruction=row["instruction"],  # the judge reads the instruction, CLIP-T the caption
            mask_path=row.get("mask"),
        )
        if row.get("gate") and Path(row["gate"]).exists():
            scores["gate"] = str(row["gate"])
        clips.append({**entry, **scores, "status": "ok"})
        if progress:
            progress(len(jobs) + i + 1, len(jobs) + len(rows))
    ok = [c for c in clips if c["status"] == "ok"]
    names = sorted({k for c in ok for k, v in c.items() if isinstance(v, float)})
    result = {
        "imvedit_version": __version__,
        "metrics_version": METRICS_VERSION,
        "manifest": str(config.manifest),
        "model": config.model,
        "adapter": config.adapter,
        "metric_models": models.names,
        "skipped": models.skipped,
        "clips": len(clips),
        "failed": len(clips) - len(ok),
        "overall": {k: _mean([c.get(k) for c in ok]) for k in names},
        "per_clip": clips,
    }
    with atomic_path(report / "metrics.json") as tmp:
        tmp.write_text(jsonutil.dumps(result, indent=2))
    write_report(result, report)
    return result
