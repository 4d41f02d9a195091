from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ._common import emit, progress_bar, run
from ._options import JsonOutput, Overwrite, model_option


def train(
    pairs_dir: Path | None = typer.Argument(
        None, help="A folder written by `imvedit prepare` (or `pairs_dir` in --config)."
    ),
    output: Path | None = typer.Option(None, "-o", "--output", help="The run folder to write (adapter, config, log)."),
    config: Path | None = typer.Option(None, "--config", help="A YAML file of training options; flags override it."),
    model: Annotated[str | None, model_option("tiny-random")] = None,
    epochs: int | None = typer.Option(None, "--epochs", help="Passes over the pairs. (default: 5)"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N optimiser steps."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Pairs per step. (default: 1)"),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate. (default: 1e-4)"),
    seed: int | None = typer.Option(None, "--seed", help="Seed for init, data order and noise. (default: 0)"),
    mixed_precision: str | None = typer.Option(None, "--mixed-precision", help="no, bf16 or fp16. (default: no)"),
    gradient_checkpointing: bool | None = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Save memory in the frozen base."
    ),
    save_every: int | None = typer.Option(None, "--save-every", help="Write a resumable checkpoint every N steps."),
    resume: str | None = typer.Option(
        None,
        "--resume",
        help="Continue from the run folder's latest checkpoint (--resume, --resume latest) or from the checkpoint folder given.",
    ),
    init: str | None = typer.Option(
        None, "--init", help="Start from a finished adapter's weights (file or run folder) instead of a fresh init."
    ),
    validate_every: int | None = typer.Option(
        None, "--validate-every", help="Every N steps, save a picture of a few fixed pairs edited (run/validation/)."
    ),
    optimizer: str | None = typer.Option(
        None, "--optimizer", help="adamw, adamw-fused, or adamw8bit (bitsandbytes). (default: adamw)"
    ),
    ema_decay: float | None = typer.Option(
        None, "--ema-decay", help="Also keep an EMA of the adapter weights (e.g. 0.999): run/adapter_ema.safetensors."
    ),
    gate_supervision: float | None = typer.Option(
        None, "--gate-supervision", help="Weight of the loss that teaches the gate where the pairs change. (default: 0)"
    ),
    arch: str | None = typer.Option(
        None, "--arch", help="What to train: imvedit, vifeedit, concat or per-frame (baselines). (default: imvedit)"
    ),
    warmup_steps: int | None = typer.Option(None, "--warmup-steps", help="Linear learning-rate warm-up. (default: 0)"),
    lr_schedule: str | None = typer.Option(None, "--lr-schedule", help="constant or cosine. (default: constant)"),
    cache: str | None = typer.Option(
        None, "--cache", help="auto: use the pairs folder's cache when made for this base; no: encode. (default: auto)"
    ),
    overwrite: Overwrite = False,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print parameter counts and a peak-memory estimate from the configs; train nothing."
    ),
    gpu_memory: float | None = typer.Option(
        None, "--gpu-memory", help="With --dry-run: GB of device memory to fit; says which options would fit."
    ),
    max_area: int | None = typer.Option(
        None, "--max-area", help="With --dry-run and no pairs folder: training pixels per pair. (default: 480x832)"
    ),
    expert: str | None = typer.Option(
        None,
        "--expert",
        help="A base with two experts (Wan2.2-A14B): train the adapter of the high-noise expert, the low-noise one, or both. (default: both)",
    ),
    json_out: JsonOutput = False,
) -> None:
    """Train an ImVideoEdit adapter on image pairs; the base stays frozen."""
    from ..training.train import TrainConfig
    from ..training.train import train as run_train

    flags = {
        "pairs_dir": pairs_dir, "output": output, "model": model, "epochs": epochs, "max_steps": max_steps,
        "batch_size": batch_size, "lr": lr, "seed": seed, "mixed_precision": mixed_precision,
        "gradient_checkpointing": gradient_checkpointing, "cache": cache, "overwrite": overwrite or None,
        "save_every": save_every, "resume": resume, "validate_every": validate_every, "warmup_steps": warmup_steps, "lr_schedule": lr_schedule,
        "ema_decay": ema_decay, "optimizer": optimizer, "gate_supervision": gate_supervision,
        "arch": arch, "expert": expert, "init": init,
    }  # fmt: skip
    if dry_run:
        from ..training.train import dry_run as plan_run

        result = run(lambda: plan_run(config, {k: v for k, v in flags.items() if v is not None}, gpu_memory, max_area))
        emit(result, json_out, _plan_text(result))
        return
    cfg = run(lambda: TrainConfig.from_sources(config, {k: v for k, v in flags.items() if v is not None}))
    with progress_bar("train", not json_out) as bar:
        summary = run(lambda: run_train(cfg, progress=lambda s, t, loss: bar(s, t, f"loss {loss:.4f}")))
    if int(os.environ.get("RANK", "0")) != 0:
        return  # one report per run: the main process's
    emit(
        summary,
        json_out,
        f"Trained {summary['steps']} steps (final loss {summary['final_loss']:.4f}); {_written(summary, cfg.output)}",
    )


def _written(summary: dict, output) -> str:
    from ..training.train import FILES

    if "experts" not in summary:
        return f"adapter in {output}/{FILES['high']}"
    return "; ".join(
        f"{e}-noise expert: {summary['steps_per_expert'][e]} steps, {output}/{FILES[e]}" for e in summary["experts"]
    )


def _plan_text(r: dict) -> str:
    e = r["estimate"]
    experts = f" ({r['experts']} expert(s) trained, {r['expert_parameters'] / 1e9:.2f}B each)" if "experts" in r else ""
    lines = [
        f"Base transformer: {r['transformer_parameters'] / 1e9:.2f}B parameters{experts}; adapter (trainable): "
        f"{r['adapter_parameters'] / 1e6:.1f}M ({100 * r['adapter_fraction']:.1f}%).",
        f"Peak device memory, estimated ({r['note']}): {e['peak_gb']} GB for {e['tokens_per_step']} tokens per step",
        "  " + ", ".join(f"{k.replace('_', ' ')} {v} GB" for k, v in e["parts_gb"].items()),
    ]
    if "fits" in r:
        if r["fits"]:
            lines.append(f"Fits in {r['gpu_memory_gb']} GB.")
        else:
            s = r["suggestion"]
            verdict = "fits" if s.get("fits", True) else "still does not fit"
            lines.append(
                f"Does not fit in {r['gpu_memory_gb']} GB. With {'; '.join(s['options'])}: {s['peak_gb']} GB ({verdict})."
            )
    return "\n".join(lines)
