from __future__ import annotations

from pathlib import Path

import typer

from ._common import emit, run


def eval_(
    pred: Path = typer.Option(..., "--pred", help="The edited video or image."),
    source: Path = typer.Option(..., "--source", help="The video or image it was made from."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as one JSON object."),
) -> None:
    """Score an edit against its source (PSNR, flicker, temporal error)."""
    from ..evaluation.evaluate import EvalConfig, evaluate_pair

    metrics = run(lambda: evaluate_pair(EvalConfig(pred, source)))
    lines = "\n".join(f"{k:28s} {v}" for k, v in metrics.items())
    emit(metrics, json_out, lines)
