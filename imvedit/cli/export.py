from __future__ import annotations

from pathlib import Path

import typer

from ._common import emit, run


def export(
    source: Path = typer.Argument(..., help="A run folder or an adapter .safetensors."),
    output: Path = typer.Option(..., "-o", "--output", help="The adapter file to write (.safetensors)."),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, fp16 or bf16."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Export a trained adapter as a standalone, verified .safetensors file."""
    from ..export import ExportConfig
    from ..export import export as run_export

    result = run(lambda: run_export(ExportConfig(source, output, dtype, overwrite)))
    emit(result, json_out, f"Wrote {output} ({result['parameters']} parameters, {dtype}, base {result['base']}).")
