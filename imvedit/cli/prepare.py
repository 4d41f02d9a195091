from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..toy.world import DEFAULT_WORLD
from ._common import emit, fail, progress_bar, run
from ._options import JsonOutput, Overwrite, model_option, world_option


def prepare(
    source: str = typer.Argument(
        ...,
        help="A folder of pairs with manifest.csv/.jsonl, a saved Hugging Face dataset, parquet/arrow file(s), a hub dataset id, or 'toy'.",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="The prepared folder to write."),
    limit: int | None = typer.Option(None, "--limit", help="Keep at most N pairs."),
    seed: int | None = typer.Option(None, "--seed", help="Shuffle with this seed before --limit."),
    max_area: int = typer.Option(480 * 832, "--max-area", help="Downscale pairs larger than this many pixels."),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="Column layout of a known dataset: instructpix2pix, magicbrush, ultraedit, vifeedit. (default: detected)",
    ),
    source_col: str | None = typer.Option(None, "--source-col", help="Column of the source image."),
    target_col: str | None = typer.Option(None, "--target-col", help="Column of the edited image."),
    instruction_col: str | None = typer.Option(None, "--instruction-col", help="Column of the instruction."),
    caption_col: str | None = typer.Option(None, "--caption-col", help="Column of the edited image's description."),
    cache: bool = typer.Option(False, "--cache", help="Also cache VAE latents and text embeddings (needs --model)."),
    model: Annotated[str | None, model_option("--cache: none, it is needed")] = None,
    split: str = typer.Option("train", "--split", help="Hub datasets: the split to read."),
    revision: str | None = typer.Option(None, "--revision", help="Hub datasets: a branch, tag or commit to pin."),
    streaming: bool = typer.Option(
        False, "--streaming", help="Hub datasets: read rows as they download (with --limit, only what is needed)."
    ),
    toy_frames: int = typer.Option(
        1, "--toy-frames", help="toy: frames per pair; 1 renders image pairs, 4k+1 (e.g. 17) video pairs."
    ),
    world: Annotated[str, world_option("toy")] = DEFAULT_WORLD,
    overwrite: Overwrite = False,
    json_out: JsonOutput = False,
) -> None:
    """Turn an image-pair dataset into training input for `imvedit train`."""
    from ..data.pairs import PrepareConfig
    from ..data.pairs import prepare as run_prepare

    columns = {
        k: v
        for k, v in {
            "source": source_col,
            "target": target_col,
            "instruction": instruction_col,
            "caption": caption_col,
        }.items()
        if v
    }
    from ..errors import UsageError

    if cache and model is None:
        fail(UsageError("--cache needs --model.", "Name the base you will train on, e.g. --model shapes-wan."))
    config = PrepareConfig(
        source,
        output,
        limit,
        seed,
        max_area,
        overwrite=overwrite,
        columns=columns,
        preset=preset,
        cache_model=model if cache else None,
        split=split,
        revision=revision,
        streaming=streaming,
        toy_frames=toy_frames,
        toy_world=world,
    )
    with progress_bar("prepare", not json_out) as bar:
        summary = run(lambda: run_prepare(config, progress=bar))
    emit(summary, json_out, f"Wrote {summary['kept']} pairs to {output} (dropped: {summary['dropped'] or 'none'}).")
