from __future__ import annotations

from pathlib import Path

import typer

from ._common import emit, progress_bar, run


def train(
    pairs_dir: Path = typer.Argument(..., help="A folder written by `imvedit prepare`."),
    output: Path = typer.Option(..., "-o", "--output", help="The run folder to write (adapter, config, log)."),
    model: str = typer.Option(
        "tiny-random", "--model", help="The frozen base: a diffusers Wan folder, a hub id, or tiny-random."
    ),
    epochs: int = typer.Option(5, "--epochs", help="Passes over the pairs."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after N optimiser steps."),
    batch_size: int = typer.Option(1, "--batch-size", help="Pairs per step."),
    lr: float = typer.Option(1e-4, "--lr", help="Learning rate."),
    seed: int = typer.Option(0, "--seed", help="Seed for init, data order and noise."),
    rank: int = typer.Option(32, "--rank", help="Rank of the SDA branches' low-rank updates."),
    mixed_precision: str = typer.Option("no", "--mixed-precision", help="no, bf16 or fp16."),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Save memory in the frozen base."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Train an ImVideoEdit adapter on image pairs; the base stays frozen."""
    from ..training.train import TrainConfig
    from ..training.train import train as run_train

    config = TrainConfig(
        pairs_dir,
        output,
        model,
        epochs,
        max_steps,
        batch_size,
        lr,
        seed=seed,
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
        overwrite=overwrite,
        adapter={"rank": rank},
    )
    with progress_bar("train", not json_out) as bar:
        summary = run(lambda: run_train(config, progress=lambda s, t, loss: bar(s, t, f"loss {loss:.4f}")))
    emit(
        summary,
        json_out,
        f"Trained {summary['steps']} steps (final loss {summary['final_loss']:.4f}); adapter in {output}/adapter.safetensors",
    )
