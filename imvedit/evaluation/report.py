"""The pictures of an evaluation: a static HTML report per run, and a comparison across runs.

`write_report`: `index.html` with, per clip, the source and the edit side by side (playable videos), a
frame strip PNG (rows: source, edit, gate map when imvedit made the edit) and the clip's metrics.
`compare_runs`: a table of every run's overall metrics and a bar chart PNG, from their metrics.json.
Static files only (no scripts), so a report can be opened from disk or served as is.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..errors import UsageError
from ..fsutil import atomic_path
from ..video.io import is_image, read_image, read_video
from .images import contact_sheet


def _frames(path) -> np.ndarray:
    return (read_image(path) if is_image(path) else read_video(path)[0]).astype(np.float32) / 255.0


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.4g}"
    return html.escape(str(v))


def _media(path: Path, report: Path) -> str:
    rel = html.escape(os.path.relpath(path, report))
    if is_image(path):
        return f'<img src="{rel}" width="320">'
    return f'<video src="{rel}" controls loop muted width="320"></video>'


def write_report(result: dict, report: Path) -> Path:
    report = Path(report)
    (report / "strips").mkdir(parents=True, exist_ok=True)
    parts = []
    for clip in result["per_clip"]:
        title = html.escape(f"#{clip['row']}: {clip['instruction']}")
        if clip["status"] != "ok":
            parts.append(f"<section><h2>{title}</h2><p>failed: {html.escape(clip['error'])}</p></section>")
            continue
        rows = [_frames(clip["source"]), _frames(clip["pred"])]
        if clip.get("gate"):
            rows.append(_frames(clip["gate"]))
        strip = contact_sheet(rows, report / "strips" / f"clip-{clip['row']:04d}.png")
        metrics = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in clip.items() if isinstance(v, float)
        )
        parts.append(
            f"<section><h2>{title}</h2>"
            f"<div class=pair>{_media(Path(clip['source']), report)}{_media(Path(clip['pred']), report)}</div>"
            f'<p><img src="strips/{strip.name}" alt="frames: source, edit{", gate" if clip.get("gate") else ""}"></p>'
            f"<table>{metrics}</table></section>"
        )
    overall = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in result["overall"].items())
    skipped = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in result.get("skipped", {}).items())
    page = (
        "<!doctype html><meta charset=utf-8><title>imvedit eval</title>"
        "<style>body{font-family:sans-serif;margin:2em}.pair{display:flex;gap:1em}td{padding:0 1em 0 0}"
        "section img{max-width:100%}</style>"
        f"<h1>imvedit eval</h1><p>{result['clips']} clip(s), {result.get('failed', 0)} failed; "
        f"imvedit {html.escape(result['imvedit_version'])}, metrics v{html.escape(result['metrics_version'])}; "
        f"model {_fmt(result.get('model'))}, adapter {_fmt(result.get('adapter'))}</p>"
        f"<h2>Overall (mean over clips)</h2><table>{overall}</table>"
        + (f"<h3>Skipped</h3><ul>{skipped}</ul>" if skipped else "")
        + "".join(parts)
    )
    with atomic_path(report / "index.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return report / "index.html"


def compare_runs(runs: list[Path], out: Path) -> dict:
    """A table (dict and markdown) and a bar chart PNG of the overall metrics of several eval reports."""
    if len(runs) < 2:
        raise UsageError("--compare needs at least two report folders.", "Give the --report folders of two evals.")
    results = {}
    for run in runs:
        path = Path(run) / "metrics.json" if Path(run).is_dir() else Path(run)
        if not path.is_file():
            raise UsageError(f"{run} holds no metrics.json.", "Give folders written by `imvedit eval --report`.")
        results[str(run)] = json.loads(path.read_text())
    metrics = sorted({k for r in results.values() for k in r["overall"]})
    table = {m: {run: r["overall"].get(m) for run, r in results.items()} for m in metrics}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| metric | " + " | ".join(Path(r).name for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(_fmt(v) for v in table[m].values()) + " |" for m in metrics]
    markdown = "\n".join(lines) + "\n"
    with atomic_path(out / "compare.md") as tmp:
        tmp.write_text(markdown)
    _bar_chart(table, [Path(r).name for r in results], out / "compare.png")
    return {
        "runs": list(results),
        "table": table,
        "markdown": str(out / "compare.md"),
        "plot": str(out / "compare.png"),
    }


COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _bar_chart(table: dict, names: list[str], path: Path) -> None:
    """One panel per metric, one bar per run, each panel scaled to its own largest finite value."""
    metrics = [m for m, vals in table.items() if any(v is not None and math.isfinite(v) for v in vals.values())]
    panel_w, panel_h, bar_w = 40 + 30 * len(names), 160, 22
    width = max(200, panel_w * len(metrics))
    img = Image.new("RGB", (width, panel_h + 40 + 14 * len(names)), "white")
    draw = ImageDraw.Draw(img)
    for i, m in enumerate(metrics):
        x0 = i * panel_w + 10
        values = [v for v in table[m].values()]
        top = max(abs(v) for v in values if v is not None and math.isfinite(v)) or 1.0
        draw.text((x0, 2), m[:16], fill="black")
        draw.line((x0, panel_h, x0 + panel_w - 20, panel_h), fill="black")
        for j, v in enumerate(values):
            if v is None or not math.isfinite(v):
                continue
            h = int((panel_h - 30) * abs(v) / top)
            bx = x0 + 5 + j * 30
            draw.rectangle((bx, panel_h - h, bx + bar_w, panel_h), fill=COLOURS[j % len(COLOURS)])
            draw.text((bx, panel_h + 3), f"{v:.3g}", fill="black")
    for j, name in enumerate(names):
        y = panel_h + 22 + 14 * j
        draw.rectangle((10, y, 20, y + 10), fill=COLOURS[j % len(COLOURS)])
        draw.text((26, y - 1), name, fill="black")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
