from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import jsonutil
from ..errors import UsageError
from ._common import emit, fail, run
from ._options import JsonOutput, Overwrite, model_option


def export(
    source: Path = typer.Argument(..., help="A run folder, an adapter .safetensors, or an exported folder."),
    output: Path | None = typer.Option(
        None,
        "-o",
        "--output",
        help="Folder to write (with --format adapter or comfyui, a .safetensors path writes the file alone).",
    ),
    fmt: str = typer.Option(
        "adapter", "--format", "-f", help="adapter (file + model card), diffusers (pipeline) or comfyui (file + node)."
    ),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, fp16 or bf16."),
    model: Annotated[str | None, model_option("diffusers: the base to package, the adapter's own")] = None,
    link_base: bool = typer.Option(
        False, "--link-base", help="diffusers: link the base's component folders instead of copying them."
    ),
    ema: bool = typer.Option(False, "--ema", help="Export the run's EMA weights (trained with --ema-decay)."),
    inspect: bool = typer.Option(
        False, "--inspect", help="Print what SOURCE is (base, config, hash status); write nothing."
    ),
    overwrite: Overwrite = False,
    json_out: JsonOutput = False,
) -> None:
    """Export a trained adapter for other tools: a verified .safetensors with a model card, a diffusers
    pipeline, or a ComfyUI adapter with its custom node."""
    if inspect:
        from ..export import inspect_adapter

        info = run(lambda: inspect_adapter(source))
        if json_out:
            typer.echo(jsonutil.dumps(info))
        else:
            _print_inspection(info)
        if not info["hash_ok"]:
            raise typer.Exit(1)
        return
    if output is None:
        fail(UsageError("Missing -o/--output.", "Say where to write the export, e.g. -o my-edit."))
    from ..export import ExportConfig
    from ..export import export as run_export

    config = ExportConfig(source, output, fmt, dtype, model, link_base, ema, overwrite)
    result = run(lambda: run_export(config))
    emit(
        result,
        json_out,
        f"Wrote {output} ({fmt}, {result['parameters']:,} adapter parameters, {dtype}, base {result['base']}).",
    )


def _print_inspection(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_row("file", f"{info['path']} ({info['format']})")
    table.add_row("base", f"{info['base']} (fingerprint {info['base_fingerprint']})")
    table.add_row("parameters", f"{info['parameters']:,}" if "parameters" in info else "?")
    table.add_row("dtype", ", ".join(info.get("dtype", ["?"])))
    table.add_row("config", ", ".join(f"{k}={v}" for k, v in info["adapter_config"].items()))
    training = info.get("training") or {}
    if training:
        keys = ("pairs", "steps", "seconds", "final_loss")
        table.add_row("training", ", ".join(f"{k}={training[k]}" for k in keys if k in training))
    for x in info.get("experts", []):  # Wan2.2-A14B: each expert's file, its base and the file it pairs with
        pair = f"pairs with {x['pair']['file']}" if x.get("pair") else "no pair"
        hashed = "sha256 ok" if x["hash_ok"] else "sha256 MISMATCH"
        table.add_row(
            f"{x['expert']}-noise expert", f"{x['path']} (base {x['base']}, {x['base_fingerprint']}; {pair}; {hashed})"
        )
    if "note" in info:
        table.add_row("experts", info["note"])
    table.add_row("sha256", "ok" if info["hash_ok"] else f"MISMATCH: {info.get('problem')}")
    Console(highlight=False).print(table)
