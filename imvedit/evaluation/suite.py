"""`imvedit eval --suite paper`: the paper's claims rerun on the shapes world, every method side by side.

Every variant (our method, the baselines of docs/method.md and the ablations of our switches) is trained
with the same data budget (steps x batch), seed and recipe on the bundled shapes-wan base, then edits the
same held-out shapes-world clips (`imvedit eval --bench toy`). The suite writes:

    REPORT/results.md                   the table, the plots and what the numbers say about each claim
    REPORT/results/results.json         every number the page shows, and where and when they were measured
    REPORT/results/quality_vs_compute.svg, REPORT/results/temporal_error.svg

Training runs and prepared pairs go into WORK (kept, so an interrupted suite continues where it stopped:
a run whose folder already holds the same config is not trained again). Nothing on the page is typed by
hand; rerun the suite to change it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from .. import jsonutil
from ..data.cache import base_id, read_cache_meta
from ..data.pairs import PrepareConfig, prepare
from ..errors import UsageError
from ..fsutil import atomic_path
from ..models.adapter_format import read_adapter_metadata
from ..models.bases import SHAPES_WAN, SHAPES_WAN_ADAPTER
from ..training.train import TrainConfig, train
from .toy_bench import BENCH_METRICS, ToyBenchConfig, run_toy_bench


@dataclass(frozen=True)
class Variant:
    name: str
    group: str  # "method", "baseline" or "ablation"
    about: str  # one line for the table
    arch: str = "imvedit"  # what `imvedit train --arch` trains
    switches: dict = field(default_factory=dict)  # adapter switches on top of the suite's recipe
    # "images", "videos" (17-frame shapes-world clips), "none" (untrained) or "bundled" (the shipped adapter,
    # evaluated as `imvedit edit` uses it: trained by its own recipe, not the suite's)
    data: str = "images"
    eval_arch: str | None = None  # `eval --arch` (per-frame, sdedit)
    reuse: str | None = None  # evaluate this variant's adapter instead of training one

    @property
    def trained_here(self) -> bool:
        """Whether the suite trains this variant's adapter (or reuses one it trained): not sdedit, not bundled."""
        return self.data in ("images", "videos")


VARIANTS = (
    Variant("imvedit", "method", "ours: cached one-way source, SDA pos/neg + aligned term, text gate"),
    Variant("bundled", "method", "the shipped adapter (what `imvedit edit` uses), trained by its own two-stage "
            "recipe, imvedit/toy/configs/adapter*.yaml (docs/toy.md): far more steps than the suite's", data="bundled"),
    Variant("vifeedit", "baseline", "two-way in-context source (2x tokens), pos/neg LoRA, no gate", arch="vifeedit"),
    Variant("concat-video", "baseline", "source on the patch channels + LoRA, trained on video pairs", "concat",
            data="videos"),
    Variant("concat-image", "baseline", "the same, trained on image pairs", "concat"),
    Variant("per-frame", "baseline", "our adapter on each frame alone (no 3D attention across frames)",
            eval_arch="per-frame", reuse="imvedit"),
    Variant("sdedit", "baseline", "untrained: noise the source (strength 0.7), denoise with the text", data="none",
            eval_arch="sdedit"),
    Variant("no-gate", "ablation", "g = 1", switches={"gate": "none"}),
    Variant("gate-no-text", "ablation", "gate without the instruction", switches={"gate": "no_text"}),
    Variant("zero-out", "ablation", "one branch with a zero-initialised output instead of pos/neg",
            switches={"branches": "zero_out"}),
    Variant("every-2nd-block", "ablation", "SDA in every 2nd block", switches={"every_k_blocks": 2}),
    Variant("ffn-lora", "ablation", "plus LoRA on every feed-forward", switches={"ffn_lora": True}),
    Variant("two-way", "ablation", "our adapter with the two-way, uncached source stream",
            switches={"source_stream": "two_way"}),
)  # fmt: skip
VARIANT_NAMES = tuple(v.name for v in VARIANTS)
SUITES = ("paper",)
VIDEO_FRAMES = 17  # the clips `concat-video` trains on (17 latent frames: the toy VAE keeps every frame)

# The training recipe every variant shares: the bundled adapter's (imvedit/toy/configs/adapter.yaml) without
# its `cross_lora`, `text_difference` and `edit_loss_weight`, so that each variant is the paper's components
# and nothing of ours on top. Its lr and sigma shift are training settings every variant gets alike: at shift
# 12 most steps land at high noise, where whether the object takes the named colour is decided (docs/toy.md)
RECIPE = {
    "lr": 1e-3, "flow_shift": 12.0, "cross_attention_text": "mixed", "gate_text": "instruction", "text_dropout": 0.1,
}  # fmt: skip
RECIPE_SWITCHES = {"rank": 16, "aligned_rank": 16, "gate_dim": 32}
# Every variant edits with the same text guidance, whatever its base's default: SDEdit moves only under
# guidance, and one scale for all keeps the comparison about the methods
EVAL_GUIDANCE = 3.0


@dataclass
class SuiteConfig:
    report: Path  # folder for results.md and results/ (plots, results.json)
    work: Path  # folder for prepared pairs and training runs (kept for resuming)
    quick: bool = False  # a smoke run: a few steps, pairs and clips (minutes; the numbers mean nothing)
    train_steps: int | None = None  # optimiser steps per variant (default 600: 5 epochs of 2,000 pairs; quick: 4)
    batch_size: int | None = None  # pairs (or clips) per step (default 16; quick: 2)
    pairs: int | None = None  # image pairs, and as many video clips, rendered for training (default 2000)
    clips: int | None = None  # held-out clips each variant edits (default 16, as the toy bench; quick: 1)
    eval_steps: int | None = None  # denoising steps per edit (default 20; quick: 3)
    seed: int = 0  # training seed and held-out clip seed
    only: tuple[str, ...] = ()  # run these variants only (the page then has only their rows)
    model: str = "shapes-wan"  # the frozen base

    def validate(self) -> None:
        unknown = [n for n in self.only if n not in VARIANT_NAMES]
        if unknown:
            raise UsageError(f"Unknown variant(s): {', '.join(unknown)}.", f"Use some of: {', '.join(VARIANT_NAMES)}.")
        for name in ("train_steps", "batch_size", "pairs", "clips", "eval_steps"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {v}.")
        if Path(self.report).exists() and not Path(self.report).is_dir():
            raise UsageError(f"{self.report} is a file.", "Give --report a folder.")
        if "bundled" in self.only and self.model != SHAPES_WAN:
            raise UsageError(f"The bundled adapter is made for {SHAPES_WAN}, not {self.model}.", "Drop it from --only.")

    def resolved(self) -> dict:
        q = self.quick
        return {
            "train_steps": self.train_steps or (4 if q else 600),
            "batch_size": self.batch_size or (2 if q else 16),
            "pairs": self.pairs or (16 if q else 2000),
            "video_clips": self.pairs or (4 if q else 2000),
            "clips": self.clips or (1 if q else 16),
            "eval_steps": self.eval_steps or (3 if q else 20),
        }


def _prepared(work: Path, frames: int, limit: int, seed: int, model: str, log: Callable[[str], None]) -> Path:
    """Shapes-world training pairs (frames = 1) or clips, cached for `model`; reused when already made."""

    out = work / f"pairs-{'images' if frames == 1 else f'videos{frames}'}-{limit}-seed{seed}"
    meta = read_cache_meta(out) if (out / "manifest.jsonl").is_file() else None
    if meta is not None and meta["key"]["base"] == base_id(model):  # made whole, for this base
        return out
    log(f"rendering {limit} {'image pairs' if frames == 1 else f'{frames}-frame video pairs'}")
    prepare(PrepareConfig("toy", out, limit=limit, seed=seed, cache_model=model, toy_frames=frames, overwrite=True))
    return out


def _train(variant: Variant, pairs: Path, run_dir: Path, opts: dict, config: SuiteConfig) -> tuple[dict, bool]:
    """Train one variant, or find its finished run with the same config: (the run's summary, reused)."""

    cfg = TrainConfig(
        pairs_dir=pairs, output=run_dir, model=config.model, max_steps=opts["train_steps"],
        batch_size=opts["batch_size"], seed=config.seed, arch=variant.arch,
        adapter={**RECIPE_SWITCHES, **variant.switches}, overwrite=True, **RECIPE,
    )  # fmt: skip
    done = run_dir / "summary.json"
    if done.is_file() and yaml.safe_load((run_dir / "config.yaml").read_text()) == cfg.to_dict():
        return json.loads(done.read_text()), True
    return train(cfg), False


def run_suite(config: SuiteConfig, log: Callable[[str], None] | None = None) -> dict:
    """Train and evaluate every variant, then write the page. Returns what results.json holds."""

    config.validate()
    log = log or (lambda msg: None)
    opts = config.resolved()
    work, report = Path(config.work), Path(config.report)
    work.mkdir(parents=True, exist_ok=True)
    variants = [v for v in VARIANTS if not config.only or v.name in config.only]
    if config.model != SHAPES_WAN:  # the shipped adapter fits the bundled base only
        variants = [v for v in variants if v.data != "bundled"]
    # a variant that reuses another's adapter needs that one trained too
    needed = {v.name for v in variants} | {v.reuse for v in variants if v.reuse}
    started = time.time()
    rows, reused = [], []
    summaries: dict[str, dict] = {}
    for v in [v for v in VARIANTS if v.name in needed and v.trained_here and not v.reuse]:
        frames = VIDEO_FRAMES if v.data == "videos" else 1
        limit = opts["video_clips"] if v.data == "videos" else opts["pairs"]
        pairs = _prepared(work, frames, limit, config.seed, config.model, log)
        log(f"training {v.name}")
        summaries[v.name], was_reused = _train(v, pairs, work / "runs" / v.name, opts, config)
        if was_reused:
            reused.append(v.name)
    evaluation_started = time.time()
    for v in variants:
        log(f"evaluating {v.name}")
        rows.append(_evaluate(v, summaries.get(v.reuse or v.name), work, opts, config))
    results = {
        "suite": "paper",
        "quick": config.quick,
        "options": {
            **opts,
            "seed": config.seed,
            "model": config.model,
            "frames": ToyBenchConfig.frames,
            "size": ToyBenchConfig.size,
            "guidance": EVAL_GUIDANCE,
        },
        "recipe": {**RECIPE, "adapter": RECIPE_SWITCHES},
        "machine": machine(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.time() - started, 1),  # this invocation
        "evaluation_seconds": round(time.time() - evaluation_started, 1),
        # every run's own training time, whether trained now or reused from an earlier invocation
        "training_seconds": round(sum(s["seconds"] for s in summaries.values()), 1),
        "reused_runs": reused,
        "rows": rows,
    }
    if config.only:
        results = _join_earlier(results, report, log)
    write_page(results, report)
    return results


def _evaluate(v: Variant, summary: dict | None, work: Path, opts: dict, config: SuiteConfig) -> dict:
    """One variant on the held-out clips: its row of the page. `summary`: its training run's, if it has one."""

    adapter = str(work / "runs" / (v.reuse or v.name)) if v.trained_here else None
    bench = ToyBenchConfig(
        model=config.model, adapter=adapter, clips=opts["clips"], seed=config.seed, steps=opts["eval_steps"],
        guidance=EVAL_GUIDANCE, report=work / "eval" / v.name, arch=v.eval_arch,
    )  # fmt: skip
    result = run_toy_bench(bench)  # adapter None: the bundled one (bundled), or none at all (sdedit's arch)
    if v.data == "bundled":  # trained elsewhere: its size is in its file, its training time and pairs are not
        params = read_adapter_metadata(SHAPES_WAN_ADAPTER)["training"]["trainable_parameters"]
        training = {"trainable_parameters": params, "training_seconds": None, "seen": None, "seen_unit": "-"}
    else:
        training = {
            "trainable_parameters": summary["trainable_parameters"] if summary else 0,
            "training_seconds": summary["seconds"] if summary else 0.0,
            "seen": summary["pairs_seen"] if summary else 0,
            "seen_unit": "clips" if v.data == "videos" else ("pairs" if summary else "-"),
        }
    return {
        "name": v.name,
        "group": v.group,
        "about": v.about,
        "arch": result["arch"],
        "data": v.data,
        **{k: result["overall"][k] for k in BENCH_METRICS if k != "gate_iou"},
        "gate_iou": result["local"]["gate_iou"] if result["local"]["clips"] else None,
        **training,
        "edit_seconds_per_frame": result["edit_seconds_per_frame"],
        "per_kind": {k: a["edit_psnr"] for k, a in result["per_kind"].items()},
        "kinds": {k: _metrics(a) for k, a in result["per_kind"].items()},
        "per_group": {
            g: _metrics(result["local"] if g == "local" else result["per_kind"][g])
            for g in GROUPS
            if (result["local"]["clips"] if g == "local" else g in result["per_kind"])
        },
    }


def _invocations(results: dict) -> list[dict]:
    """Which invocation measured which rows, with its timings; a page from one invocation has one."""
    keys = ("date", "seconds", "training_seconds", "evaluation_seconds", "reused_runs")
    return results.get("invocations") or [
        {**{k: results[k] for k in keys}, "rows": [r["name"] for r in results["rows"]]}
    ]


def _join_earlier(results: dict, report: Path, log: Callable[[str], None]) -> dict:
    """A run of some variants (--only) keeps the other rows of the page already in REPORT when that page was
    measured with the same options and recipe on the same machine: one variant is rerun, or one added, without
    retraining the rest. Each row's invocation is recorded and named on the page."""

    try:
        earlier = json.loads((report / "results" / "results.json").read_text())
    except (OSError, ValueError):
        return results
    same_machine = all(earlier.get("machine", {}).get(k) == results["machine"][k] for k in ("cpu", "cores", "torch"))
    if not same_machine or any(earlier.get(k) != results[k] for k in ("suite", "quick", "options", "recipe")):
        log("the page in --report was measured with other options or elsewhere: it is replaced by these rows only")
        return results
    new = {r["name"] for r in results["rows"]}
    kept = [r for r in earlier["rows"] if r["name"] not in new]
    order = {name: i for i, name in enumerate(VARIANT_NAMES)}
    invocations = [
        {**inv, "rows": [n for n in inv["rows"] if n not in new]} for inv in _invocations(earlier)
    ] + _invocations(results)
    return {
        **results,
        "rows": sorted(kept + results["rows"], key=lambda r: order.get(r["name"], len(order))),
        "invocations": [inv for inv in invocations if inv["rows"]],
    }


def machine() -> dict:
    """Where the numbers were measured (no host names or paths)."""
    cpu = platform.processor() or platform.machine()
    try:  # the CPU model on Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": platform.system(),
    }


# ---------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------


def _f(v, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _seen(row: dict) -> str:
    """What a row trained on: "9,600 pairs", "0" untrained, "–" trained elsewhere (the bundled adapter)."""
    if row["seen"] is None:
        return "–"
    return f"{row['seen']:,} {row['seen_unit'] if row['seen'] else ''}"


def _metrics(aggregate: dict) -> dict:
    return {k: v for k, v in aggregate.items() if k != "clips"}


def _row(results: dict, name: str) -> dict | None:
    return next((r for r in results["rows"] if r["name"] == name), None)


# Thresholds of the claims, written on the page beside each verdict
SAME_AS_VIDEO_DB = 1.0  # claim 1: image pairs' edit_region_psnr at most this far below video pairs'
CONSISTENCY_RATIO = 1.5  # claim 2: per-frame temporal_error at least this many times imvedit's
COMPUTE_SHARE = 0.5  # claim 3: imvedit's training time at most this share of concat-video's
OVER_SDEDIT_DB = 5.0  # edits happen: imvedit's edit_region_psnr at least this far above untrained SDEdit's
GROUPS = ("local", "background", "global")  # edit kinds, judged apart (docs/toy.md)


def _groups(row: dict) -> dict[str, dict]:
    """A row's metrics per group of edit kinds; a row from before groups were kept has its overall only."""
    return row.get("per_group") or {"all kinds": row}


def _verdict(name: str, threshold: str, ours: dict, other: dict, metric: str, held, digits: int = 2) -> str:
    """One claim judged per group of edit kinds: `held(ours_value, other_value)` decides each group."""
    parts, verdicts = [], {}
    for group, mine in _groups(ours).items():
        theirs = _groups(other).get(group)
        a, b = mine.get(metric), (theirs or {}).get(metric)
        if a is None or b is None:
            continue
        verdicts[group] = held(a, b)
        parts.append(f"{group} {_f(a, digits)} vs {_f(b, digits)} ({'held' if verdicts[group] else 'not held'})")
    if not verdicts:
        return f"**{name}**: not measured."
    yes = [g for g, v in verdicts.items() if v]
    if len(verdicts) == 1:
        summary = "held" if yes else "not held"
    else:
        summary = "held for every group" if len(yes) == len(verdicts) else (
            f"held for {', '.join(yes)} only" if yes else "not held for any group"
        )  # fmt: skip
    return f"**{name} — {summary}.** Threshold: {threshold}. {metric}: " + "; ".join(parts) + "."


def claims(results: dict) -> list[str]:
    """Whether each of the paper's claims held on these numbers, per group of edit kinds, against the
    thresholds above (only where both sides were run)."""
    out = []
    ours, video, per_frame = _row(results, "imvedit"), _row(results, "concat-video"), _row(results, "per-frame")
    sdedit = _row(results, "sdedit")
    if ours and video:
        out.append(_verdict(
            "1. Image pairs edit videos about as well as video pairs (imvedit vs concat-video)",
            f"imvedit's edit_region_psnr at least concat-video's − {SAME_AS_VIDEO_DB:g} dB",
            ours, video, "edit_region_psnr", lambda a, b: a >= b - SAME_AS_VIDEO_DB,
        ))  # fmt: skip
    if ours and per_frame:
        out.append(_verdict(
            "2. The frozen 3D attention keeps the edit consistent (per-frame vs imvedit)",
            f"per-frame's temporal_error at least {CONSISTENCY_RATIO:g}x imvedit's",
            per_frame, ours, "temporal_error", lambda a, b: a >= CONSISTENCY_RATIO * b, digits=4,
        ))  # fmt: skip
    if ours and video and video["training_seconds"]:
        share = ours["training_seconds"] / video["training_seconds"]
        held = "held" if share <= COMPUTE_SHARE else "not held"
        out.append(
            f"**3. A small fraction of the compute — {held}.** Threshold: imvedit's training time at most "
            f"{COMPUTE_SHARE:g}x concat-video's for the same steps and batch. imvedit {ours['training_seconds']:.0f} s "
            f"on image pairs, concat-video {video['training_seconds']:.0f} s on video pairs ({share:.2f}x); edit time "
            f"per output frame {_f(ours['edit_seconds_per_frame'], 3)} s. Per-step costs at a Wan2.1-1.3B shape: "
            "`tests/benchmarks/bench_step_cost.py` (docs/method.md)."
        )
    # the suite's imvedit, trained on the same budget as every baseline, and the shipped adapter: one claim each
    for name, row in (("imvedit", ours), ("bundled", _row(results, "bundled"))):
        if row and sdedit:
            out.append(_verdict(
                f"Edits happen ({name} vs untrained SDEdit)",
                f"{name}'s edit_region_psnr at least SDEdit's + {OVER_SDEDIT_DB:g} dB",
                row, sdedit, "edit_region_psnr", lambda a, b: a >= b + OVER_SDEDIT_DB,
            ))  # fmt: skip
    return out


def write_page(results: dict, report: Path) -> Path:
    """results.md, results/results.json and the two plots, each written whole."""
    report = Path(report)
    assets = report / "results"
    assets.mkdir(parents=True, exist_ok=True)
    rows, o, m = results["rows"], results["options"], results["machine"]
    for name, text in (
        ("results.json", jsonutil.dumps(results, indent=2)),
        ("quality_vs_compute.svg", scatter_svg(rows)),
        ("temporal_error.svg", bars_svg(rows)),
    ):
        with atomic_path(assets / name) as tmp:
            tmp.write_text(text)
    ceiling, floor = rows[0]["edit_psnr_ceiling"], rows[0]["temporal_error_floor"]
    head = (
        "| variant | group | edit_psnr | edit_region_psnr | preserve_psnr | temporal_error | gate_iou "
        "| trainable params | training s | seen | edit s / frame |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    table = "".join(
        f"| {r['name']} | {r['group']} | {_f(r['edit_psnr'])} | {_f(r['edit_region_psnr'])} | "
        f"{_f(r['preserve_psnr'])} | {_f(r['temporal_error'], 4)} | {_f(r['gate_iou'], 3)} | "
        f"{r['trainable_parameters']:,} | {_f(r['training_seconds'], 0)} | "
        f"{_seen(r)} | {_f(r['edit_seconds_per_frame'], 3)} |\n"
        for r in rows
    )
    kinds = sorted({k for r in rows for k in r["per_kind"]})
    per_kind = (
        "| variant | " + " | ".join(kinds) + " |\n" + "|---" * (len(kinds) + 1) + "|\n"
        + "".join(f"| {r['name']} | " + " | ".join(_f(r["per_kind"].get(k)) for k in kinds) + " |\n" for r in rows)
    )  # fmt: skip
    about = "".join(f"- `{r['name']}` ({r['group']}): {r['about']}\n" for r in rows)
    versus = _versus_table(results, "imvedit", "concat-video")
    quick = (
        "\n> **Quick mode**: a smoke run of a few steps and one clip; these numbers say nothing about the methods.\n"
        if results["quick"]
        else ""
    )
    device = m["gpu"] or f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads)"
    timing = _timing(results)
    page = f"""# Results: the paper's claims on the shapes world
{quick}
Generated by `nox -s paper` (`imvedit eval --suite paper --report docs`) on {results["date"]}, on {device},
torch {m["torch"]}, Python {m["python"]}, {m["os"]}. {timing}
Do not edit this page by hand: every number comes from `results/results.json`.

**Setup.** Base: the bundled `{o["model"]}` (frozen). Every trained variant: {o["train_steps"]} steps of
{o["batch_size"]} pairs (or clips) from {o["pairs"]:,} rendered image pairs ({o["video_clips"]:,} 17-frame
video pairs for `concat-video`), seed {o["seed"]}, learning rate {results["recipe"]["lr"]}, adapter rank
{results["recipe"]["adapter"]["rank"]}. Evaluation: `imvedit eval --bench toy` on the same {o["clips"]} held-out
clips ({o["frames"]} frames, {o["size"]}x{o["size"]}, {o["eval_steps"]} denoising steps, text guidance {_f(o.get("guidance", 3.0), 0)}), which
no variant saw. The ground truth through the VAE scores edit_psnr {_f(ceiling)} dB and temporal_error
{_f(floor, 4)}: no edit through this VAE can do better. Inside the edit masks it scores edit_region_psnr
{_f(rows[0]["edit_region_psnr_ceiling"])} dB, and the unedited source {_f(rows[0]["edit_region_psnr_unedited"])} dB: doing
nothing. gate_iou is over local edits only; "training s" is
wall-clock on this machine, "edit s / frame" the pipeline's time per output frame.

{head}{table}
{about}
## What the numbers say

{chr(10).join(f"- {c}" for c in claims(results))}

## Plots

![edit quality against training compute](results/quality_vs_compute.svg)

![temporal error per method](results/temporal_error.svg)

## edit_psnr per edit kind

{per_kind}
{versus}"""
    path = report / "results.md"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def _timing(results: dict) -> str:
    invocations = _invocations(results)
    if len(invocations) == 1:
        inv, reused = invocations[0], invocations[0]["reused_runs"]
        return (
            f"Training every variant took {inv['training_seconds'] / 60:.1f} min (the runs' own timings) and "
            f"evaluating them {inv['evaluation_seconds'] / 60:.1f} min; this invocation took "
            f"{inv['seconds'] / 60:.1f} min"
            + (f", reusing {len(reused)} run(s) trained by an earlier one with the same config." if reused else ", from scratch.")
        )  # fmt: skip
    parts = [
        f"{', '.join(inv['rows'])} on {inv['date']} ("
        + (f"training {inv['training_seconds'] / 60:.1f} min, by the runs' own timings, " if inv["training_seconds"] else "nothing trained, ")
        + f"evaluating {inv['evaluation_seconds'] / 60:.1f} min)"
        for inv in invocations
    ]  # fmt: skip
    return (
        f"The rows come from {len(invocations)} invocations with the same options on the same machine (a rerun of "
        f"some variants with `--only` keeps the others): {'; '.join(parts)}."
    )


def _versus_table(results: dict, a: str, b: str) -> str:
    """Two variants side by side on every metric, per edit kind (rows that kept per-kind metrics only)."""
    ra, rb = _row(results, a), _row(results, b)
    if not (ra and rb and ra.get("kinds") and rb.get("kinds")):
        return ""
    metrics = ("edit_psnr", "edit_region_psnr", "preserve_psnr", "temporal_error", "gate_iou")
    head = f"## {a} vs {b}, per edit kind\n\n| kind | " + " | ".join(metrics) + " |\n" + "|---" * (len(metrics) + 1)
    lines = []
    for kind in sorted(set(ra["kinds"]) & set(rb["kinds"])):
        x, y = ra["kinds"][kind], rb["kinds"][kind]
        digits = {"temporal_error": 4, "gate_iou": 3}
        cells = [f"{_f(x.get(m), digits.get(m, 2))} / {_f(y.get(m), digits.get(m, 2))}" for m in metrics]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return head + "|\n" + "\n".join(lines) + f"\n\nEach cell: {a} / {b}.\n"


# ---------------------------------------------------------------------------------------------------
# Plots: small hand-written SVG (no plotting dependency), readable in any browser and on GitHub
# ---------------------------------------------------------------------------------------------------

GROUP_COLOURS = {"method": "#d62728", "baseline": "#1f77b4", "ablation": "#7f7f7f"}


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def scatter_svg(rows: list[dict]) -> str:
    """edit_psnr against training seconds (log scale), one labelled point per variant."""
    w, h, left, bottom, top, right = 640, 400, 60, 50, 30, 150
    pts = [
        (max(r["training_seconds"], 1.0), r["edit_psnr"], r)
        for r in rows
        if r["edit_psnr"] is not None and r["training_seconds"] is not None  # trained elsewhere: no point
    ]
    # [0]: a page of rows trained elsewhere only (`--only bundled` on a fresh page) gets empty axes, not a crash
    xs, ys = [math.log10(p[0]) for p in pts] or [0.0], [p[1] for p in pts] or [0.0]
    x0, x1 = min(xs) - 0.1, max(xs) + 0.1
    y0, y1 = min(ys) - 1, max(ys) + 1

    def px(x):
        return left + (math.log10(x) - x0) / (x1 - x0) * (w - left - right)

    def py(y):
        return h - bottom - (y - y0) / (y1 - y0) * (h - bottom - top)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="13">edit quality vs training compute</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
        f'<text x="{(w - right + left) / 2}" y="{h - 12}" text-anchor="middle">training seconds (log; untrained at 1)</text>',
        f'<text x="14" y="{(h - bottom + top) / 2}" transform="rotate(-90 14 {(h - bottom + top) / 2})" '
        f'text-anchor="middle">edit_psnr (dB)</text>',
    ]
    for e in range(math.floor(x0), math.ceil(x1) + 1):
        for m in (1, 2, 5):
            v = m * 10**e
            if x0 <= math.log10(v) <= x1:
                out.append(f'<text x="{px(v):.1f}" y="{h - bottom + 14}" text-anchor="middle">{v:g}</text>')
    for yv in range(math.ceil(y0), math.floor(y1) + 1):
        out.append(f'<text x="{left - 6}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv}</text>')
    placed: list[tuple[float, float, float]] = []  # label boxes (start, end, baseline) already drawn
    for x, y, r in sorted(pts, key=lambda p: -p[1]):
        c = GROUP_COLOURS.get(r["group"], "black")
        cx, cy = px(x), py(y)
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{c}"/>')
        start, end, base = cx + 6, cx + 6 + 6.2 * len(r["name"]), cy + 4
        while any(start < e2 and end > s2 and abs(base - b2) < 12 for s2, e2, b2 in placed):
            base += 12  # a label would overlap another: move it down a line
        placed.append((start, end, base))
        if base - (cy + 4) > 1:  # a leader from the moved label back to its point
            out.append(f'<line x1="{cx:.1f}" y1="{cy:.1f}" x2="{start:.1f}" y2="{base - 4:.1f}" stroke="#bbb"/>')
        out.append(f'<text x="{start:.1f}" y="{base:.1f}">{_esc(r["name"])}</text>')
    for i, (g, c) in enumerate(GROUP_COLOURS.items()):
        out.append(f'<circle cx="{w - right + 30}" cy="{top + 20 + 16 * i}" r="4" fill="{c}"/>')
        out.append(f'<text x="{w - right + 40}" y="{top + 24 + 16 * i}">{g}</text>')
    return "\n".join(out + ["</svg>"]) + "\n"


def bars_svg(rows: list[dict]) -> str:
    """temporal_error per variant as horizontal bars, with the VAE's floor as a line."""
    bar, gap, left, right, top = 16, 6, 130, 70, 34
    w = 640
    h = top + len(rows) * (bar + gap) + 30
    vals = [r["temporal_error"] or 0.0 for r in rows]
    floor = rows[0]["temporal_error_floor"] or 0.0
    vmax = max(vals + [floor]) * 1.05 or 1.0

    def px(v):
        return left + v / vmax * (w - left - right)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="13">temporal error per method (lower is better)</text>',
    ]
    for i, (r, v) in enumerate(zip(rows, vals, strict=True)):
        y = top + i * (bar + gap)
        c = GROUP_COLOURS.get(r["group"], "black")
        out.append(f'<text x="{left - 6}" y="{y + bar - 4}" text-anchor="end">{_esc(r["name"])}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{px(v) - left:.1f}" height="{bar}" fill="{c}"/>')
        out.append(f'<text x="{px(v) + 4:.1f}" y="{y + bar - 4}">{v:.4f}</text>')
    fx = px(floor)
    out.append(
        f'<line x1="{fx:.1f}" y1="{top - 6}" x2="{fx:.1f}" y2="{h - 24}" stroke="black" stroke-dasharray="4 3"/>'
    )
    out.append(f'<text x="{fx:.1f}" y="{h - 10}" text-anchor="middle">VAE floor {floor:.4f}</text>')
    return "\n".join(out + ["</svg>"]) + "\n"


def result_summary(results: dict) -> str:
    """The table in the terminal."""
    lines = [f"{'variant':16s} {'edit':>7s} {'region':>7s} {'keep':>7s} {'temporal':>9s} {'gate':>6s} {'train s':>8s}"]
    for r in results["rows"]:
        lines.append(
            f"{r['name']:16s} {_f(r['edit_psnr']):>7s} {_f(r['edit_region_psnr']):>7s} {_f(r['preserve_psnr']):>7s} "
            f"{_f(r['temporal_error'], 4):>9s} {_f(r['gate_iou'], 3):>6s} {_f(r['training_seconds'], 0):>8s}"
        )
    return "\n".join(lines) + f"\n({results['seconds'] / 60:.1f} min)"
