from __future__ import annotations

from pathlib import Path

import typer

from ._common import emit, err_console, progress_bar, run


def edit(
    input: Path = typer.Argument(..., help="The video (mp4, mov, mkv, webm, ...) or image to edit."),
    prompt: str = typer.Argument(..., help='The edit, e.g. "make it winter".'),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the edited file."),
    model: str | None = typer.Option(None, "--model", help="The base; optional when the adapter names its base."),
    adapter: str | None = typer.Option(None, "--adapter", help="An adapter .safetensors or a run folder."),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps. [default: the base's; 30 for Wan]"),
    guidance: float | None = typer.Option(
        None, "--guidance", help="Text guidance scale, 1 = off. [default: the base's; 5 for Wan]"
    ),
    source_guidance: float = typer.Option(1.0, "--source-guidance", help="Source guidance scale (1 = off)."),
    strength: float = typer.Option(1.0, "--strength", help="Below 1, start from the noised source."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="Text to guide away from."),
    max_area: int | None = typer.Option(None, "--max-area", help="Working area in pixels (default: the base's)."),
    save_mask: Path | None = typer.Option(None, "--save-mask", help="Also write the gate map (implicit edit mask)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Edit a video or an image with a text prompt."""
    from ..edit import EditConfig
    from ..edit import edit as run_edit

    config = EditConfig(
        input,
        prompt,
        output,
        model,
        adapter,
        steps,
        guidance,
        source_guidance,
        strength,
        seed,
        negative_prompt,
        max_area=max_area,
        overwrite=overwrite,
        save_mask=save_mask,
    )
    from ..models.bases import bundle_available

    if model is None and adapter is None and bundle_available():
        err_console.print(
            "Using the bundled toy model shapes-wan (a 64x64 shapes world); for real footage pass --model with a Wan base and --adapter.",
            markup=False,
        )
    with progress_bar("edit", not json_out) as bar:
        result = run(lambda: run_edit(config, progress=bar))
    emit(result, json_out, f"Wrote {output} ({result['frames']} frames, {result['seconds']:.1f} s).")
