from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..toy.world import DEFAULT_WORLD
from ._common import emit, err_console, fail, progress_bar, run
from ._options import (
    JsonOutput,
    adapter_option,
    flow_shift_option,
    guidance_2_option,
    guidance_boundary_option,
    model_option,
    world_option,
)


def eval_(
    pred: Path | None = typer.Option(
        None, "--pred", help="The edited video or image, or a folder of them (with --source)."
    ),
    source: Path | None = typer.Option(
        None, "--source", help="The video or image it was made from, or a folder with the same file names."
    ),
    prompts: Path | None = typer.Option(
        None, "--prompts", help="YAML/JSON mapping of file name to prompt, for CLIP text alignment."
    ),
    clip: str | None = typer.Option(
        None, "--clip", help="CLIP weights (folder or hub id, e.g. openai/clip-vit-large-patch14) for CLIP-T/CLIP-F."
    ),
    dino: str | None = typer.Option(None, "--dino", help="DINOv2 weights (e.g. facebook/dinov2-base) for DINO-F."),
    judge_url: str | None = typer.Option(
        None, "--judge-url", help="An OpenAI-compatible endpoint (e.g. http://localhost:8000/v1) for VLM-judge scores."
    ),
    judge_model: str | None = typer.Option(None, "--judge-model", help="The model the judge endpoint serves."),
    frames_per_clip: int = typer.Option(64, "--frames-per-clip", help="Frames per clip scored (sampled uniformly)."),
    manifest: Path | None = typer.Option(
        None,
        "--manifest",
        help="YAML/JSONL rows {source, instruction, caption?, mask?, output?}: edit what is missing, score all (needs --report).",
    ),
    compare: list[Path] | None = typer.Option(
        None,
        "--compare",
        help="Report folders of earlier evals to compare (repeat it); writes a table and a plot into --report.",
    ),
    suite: str | None = typer.Option(
        None,
        "--suite",
        help="Run an evaluation suite: 'paper' trains every method and ablation on the shapes world and writes REPORT/results.md.",
    ),
    quick: bool = typer.Option(False, "--quick", help="--suite: a smoke run (a few steps and one clip per variant)."),
    work: Path | None = typer.Option(
        None,
        "--work",
        help="--suite: folder for its pairs and training runs (kept for resuming). (default: REPORT/.suite-work)",
    ),
    train_steps: int | None = typer.Option(
        None, "--train-steps", help="--suite: training steps per variant. (default: 600)"
    ),
    only: str | None = typer.Option(
        None,
        "--only",
        help="--suite: comma-separated variants to run (default: all); the page in --report keeps its other rows if measured alike.",
    ),
    bench: str | None = typer.Option(
        None, "--bench", help="Run a benchmark instead: 'toy' (held-out shapes-world edits with exact ground truth)."
    ),
    model: Annotated[str | None, model_option("--bench/--manifest/--suite edits: the bundled shapes-wan")] = None,
    adapter: Annotated[str | None, adapter_option("--bench/--manifest edits: the bundled one")] = None,
    clips: int | None = typer.Option(None, "--clips", help="--bench/--suite: held-out clips to edit. (default: 16)"),
    seed: int = typer.Option(0, "--seed", help="--bench: which held-out clips."),
    frames: int = typer.Option(17, "--frames", help="--bench: frames per clip."),
    size: int = typer.Option(64, "--size", help="--bench: canvas size in pixels."),
    edits: str | None = typer.Option(
        None, "--edits", help="--bench: comma-separated edit kinds (recolor,replace,remove,add,background,global)."
    ),
    steps: int | None = typer.Option(
        None,
        "--steps",
        help="--bench/--manifest: denoising steps. (default: 20 for --bench, the base's for --manifest)",
    ),
    guidance: float | None = typer.Option(
        None, "--guidance", help="--bench: text guidance. (default: the base's, as `imvedit edit`; 3 with sdedit)"
    ),
    guidance_2: Annotated[float | None, guidance_2_option("--bench: ")] = None,
    guidance_boundary: Annotated[float | None, guidance_boundary_option("--bench: ")] = None,
    flow_shift: Annotated[float | None, flow_shift_option("--bench: ")] = None,
    prompt: str = typer.Option(
        "instruction",
        "--prompt",
        help="--bench: feed the cross-attention the 'instruction' (what `imvedit edit` does) or the edited clip's "
        "'description'.",
    ),
    arch: str | None = typer.Option(
        None, "--arch", help="--bench: sdedit (no adapter) or per-frame (an imvedit adapter frame by frame)."
    ),
    strength: float | None = typer.Option(
        None, "--strength", help="--bench: below 1, start from the noised source. (default: 1; 0.7 with sdedit)"
    ),
    world: Annotated[str, world_option("--bench")] = DEFAULT_WORLD,
    report: Path | None = typer.Option(
        None, "--report", help="Folder for metrics.json (and, with --bench, contact sheets)."
    ),
    json_out: JsonOutput = False,
) -> None:
    """Score edits: an output against its source (--pred/--source), a benchmark (--bench toy) or a suite (--suite paper)."""
    if suite is not None:
        from ..evaluation.suite import SUITES, SuiteConfig, result_summary, run_suite

        if suite not in SUITES:
            fail(UsageError(f"Unknown suite {suite!r}.", f"Use --suite {' or '.join(SUITES)}."))
        if report is None:
            fail(UsageError("--suite needs --report DIR for results.md and its plots.", "Add --report docs."))
        names = tuple(n.strip() for n in only.split(",") if n.strip()) if only else ()
        scfg = SuiteConfig(
            report=report, work=work or report / ".suite-work", quick=quick, train_steps=train_steps, clips=clips,
            eval_steps=steps, seed=seed, only=names, model=model or "shapes-wan",
        )  # fmt: skip
        result = run(lambda: run_suite(scfg, log=None if json_out else lambda m: err_console.print(f"suite: {m}")))
        emit(result, json_out, result_summary(result) + f"\npage: {report / 'results.md'}")
        return
    if bench is not None:
        from ..evaluation.toy_bench import ToyBenchConfig, run_toy_bench

        if bench != "toy":
            fail(UsageError(f"Unknown bench {bench!r}.", "Use --bench toy."))
        kinds = tuple(k.strip() for k in edits.split(",") if k.strip()) if edits else ()
        cfg = ToyBenchConfig(
            model=model, adapter=adapter, clips=clips or 16, seed=seed, frames=frames, size=size, edits=kinds,
            steps=steps or 20, guidance=guidance, guidance_2=guidance_2, guidance_boundary=guidance_boundary,
            prompt=prompt, report=report, arch=arch, strength=strength, world=world, flow_shift=flow_shift,
        )  # fmt: skip
        with progress_bar("bench", not json_out) as bar:
            result = run(lambda: run_toy_bench(cfg, progress=bar))
        emit(result, json_out, _bench_table(result))
        return
    judge = None
    if judge_url or judge_model:
        if not (judge_url and judge_model):
            fail(UsageError("--judge-url and --judge-model go together.", "Give both, or neither."))
        from ..evaluation.judge import Judge

        judge = Judge(judge_url, judge_model)
    if compare:
        from ..evaluation.report import compare_runs

        if report is None:
            fail(UsageError("--compare needs --report DIR for the table and the plot.", "Add --report compare/."))
        result = run(lambda: compare_runs(list(compare), report))
        emit(result, json_out, result["markdown"] + f"plot: {result['plot']}")
        return
    if manifest is not None:
        from ..evaluation.manifest import ManifestEvalConfig, run_manifest

        if report is None:
            fail(UsageError("--manifest needs --report DIR (edits, metrics.json, index.html).", "Add --report eval/."))
        mcfg = ManifestEvalConfig(manifest, report, model, adapter, steps, clip, dino, frames_per_clip, judge)
        with progress_bar("eval", not json_out) as bar:
            result = run(lambda: run_manifest(mcfg, progress=bar))
        emit(result, json_out, _eval_table(result) + f"\nreport: {report / 'index.html'}")
        if result["failed"]:
            raise typer.Exit(1)
        return
    from ..evaluation.evaluate import EvalConfig, evaluate

    if pred is None or source is None:
        fail(UsageError("Give --pred and --source, or --bench toy.", "See `imvedit eval --help`."))
    cfg = EvalConfig(pred, source, prompts, clip, dino, judge, frames_per_clip, report)
    with progress_bar("eval", not json_out) as bar:
        result = run(lambda: evaluate(cfg, progress=bar))
    emit(result, json_out, _eval_table(result))


def _eval_table(result: dict) -> str:
    lines = [f"{k:26s} {_fmt(v)}" for k, v in result["overall"].items()]
    lines += [f"{k:26s} skipped: {why}" for k, why in result["skipped"].items()]
    return "\n".join(lines) + f"\n({result['clips']} clip(s); means over clips)"


def _fmt(v) -> str:
    return "-" if v is None else format(v, ".4f")


def _bench_table(result: dict) -> str:
    from ..evaluation.toy_bench import BENCH_METRICS as cols

    head = f"{'kind':12s} {'clips':>5s} " + " ".join(f"{c[:18]:>18s}" for c in cols)
    lines = [head]
    for name, agg in [*result["per_kind"].items(), ("overall", result["overall"])]:
        vals = " ".join(f"{'-' if agg[c] is None else format(agg[c], '.3f'):>18s}" for c in cols)
        lines.append(f"{name:12s} {agg['clips']:5d} {vals}")
    return "\n".join(lines) + f"\n({result['clips']} clips in {result['seconds']:.1f} s)"
