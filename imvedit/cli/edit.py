from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .. import jsonutil
from ._common import emit, err_console, progress_bar, run
from ._options import (
    JsonOutput,
    Overwrite,
    adapter_option,
    flow_shift_option,
    guidance_2_option,
    guidance_boundary_option,
    model_option,
)


def edit(
    args: list[str] = typer.Argument(
        None, metavar="INPUT... PROMPT", help="One or more videos (mp4, mov, mkv, webm, ...) or images, then the edit."
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="The edited file; with several inputs, a folder (created if missing)."
    ),
    jobs: Path | None = typer.Option(
        None, "--jobs", help="A YAML or JSONL file of jobs (input, prompt, output, options) instead of INPUT PROMPT."
    ),
    model: Annotated[str | None, model_option("$IMVEDIT_MODEL, the config file, else the bundled toy model")] = None,
    adapter: Annotated[
        str | None, adapter_option("$IMVEDIT_ADAPTER, the config file, or the one --model carries")
    ] = None,
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps. (default: the base's; 30 for Wan)"),
    guidance: float | None = typer.Option(
        None,
        "--guidance",
        help="Text guidance scale, 1 = off. (default: the base's; 5 for Wan, 1.5 on the toy above sigma 0.8)",
    ),
    guidance_2: Annotated[float | None, guidance_2_option("")] = None,
    guidance_boundary: Annotated[float | None, guidance_boundary_option("")] = None,
    source_guidance: float = typer.Option(1.0, "--source-guidance", help="Source guidance scale (1 = off)."),
    flow_shift: Annotated[float | None, flow_shift_option("")] = None,
    strength: float = typer.Option(1.0, "--strength", help="Below 1, start from the noised source."),
    seed: int = typer.Option(0, "--seed", help="Noise seed."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="Text to guide away from."),
    gate_prompt: str | None = typer.Option(None, "--gate-prompt", help="Text for the gate, if not the prompt."),
    max_area: int | None = typer.Option(None, "--max-area", help="Working area in pixels (default: the base's)."),
    resolution: int | None = typer.Option(
        None, "--resolution", help="Working size by its shorter side, e.g. 480 for 480p (instead of --max-area)."
    ),
    window: int | None = typer.Option(
        None, "--window", help="Frames the model sees at once, 4k+1. (default: the base's; 81 for Wan)"
    ),
    overlap: int | None = typer.Option(None, "--overlap", help="Frames shared by consecutive windows. (default: 16)"),
    max_frames: int | None = typer.Option(None, "--max-frames", help="Edit at most this many frames."),
    start: float | None = typer.Option(None, "--start", help="Seconds: edit from here."),
    end: float | None = typer.Option(None, "--end", help="Seconds: edit up to here."),
    model_fps: float | None = typer.Option(
        None, "--model-fps", help="Run the model at this frame rate; the output keeps the input's."
    ),
    codec: str = typer.Option("libx264", "--codec", help="ffmpeg video encoder, e.g. libx264, libx265."),
    crf: int = typer.Option(18, "--crf", help="Quality for x264/x265 (lower is better)."),
    dtype: str | None = typer.Option(None, "--dtype", help="bf16, fp16 or fp32. (default: bf16 on GPU, fp32 on CPU)"),
    device: str | None = typer.Option(None, "--device", help="cuda, cuda:1, cpu, ... (default: first GPU, else CPU)"),
    offload: str = typer.Option(
        "auto",
        "--offload",
        help="none, model (one model on the GPU at a time) or group (blocks stream in); auto: the plan's.",
    ),
    cpu_offload: bool = typer.Option(False, "--cpu-offload", help="The same as --offload model."),
    source_cache: str = typer.Option(
        "auto", "--source-cache", help="Where the source features live: device, cpu (host memory) or recompute."
    ),
    cfg_batch: str = typer.Option(
        "auto", "--cfg-batch", help="Guidance branches in one batch (on, faster) or one by one (off, less memory)."
    ),
    sda_chunking: str = typer.Option(
        "auto", "--sda-chunking", help="The adapter's per-frame attention over the frames in pieces (on, less memory)."
    ),
    base_dtype: str | None = typer.Option(
        None, "--base-dtype", help="fp8: store the frozen base in fp8 (layerwise casting), compute in --dtype."
    ),
    vae_tiling: bool | None = typer.Option(
        None, "--vae-tiling/--no-vae-tiling", help="Encode/decode in tiles. (default: on above 480p)"
    ),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the transformer's repeated blocks."),
    lora: list[str] = typer.Option(
        [], "--lora", help="A Wan LoRA for the base, PATH or PATH:SCALE (repeatable), e.g. a 4-step distillation."
    ),
    attention_backend: str | None = typer.Option(
        None, "--attention-backend", help="A diffusers attention backend, e.g. flash, sage, native."
    ),
    arch: str | None = typer.Option(
        None,
        "--arch",
        help="sdedit: no adapter, noise the source and denoise (needs --strength < 1); per-frame: run an imvedit adapter frame by frame.",
    ),
    save_mask: Path | None = typer.Option(None, "--save-mask", help="Also write the gate map (implicit edit mask)."),
    overwrite: Overwrite = False,
    json_out: JsonOutput = False,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars or notes."),
    # --dry-run: the device-memory plan of the edit; no input, no weights, nothing written
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the edit's device-memory plan (per component, auto's choice and what fits); edit nothing.",
    ),
    size: str | None = typer.Option(
        None, "--size", help="With --dry-run: the working size WxH. (default: the base's area at 832:480)"
    ),
    frames: int | None = typer.Option(
        None, "--frames", help="With --dry-run: frames of the clip. (default: one window)"
    ),
    gpu_memory: float | None = typer.Option(
        None,
        "--gpu-memory",
        help="With --dry-run: GiB of device memory to fit. (default: the GPU's free memory, else 24)",
    ),
    measure: bool = typer.Option(
        False,
        "--measure",
        help="With --dry-run: also run the edit's phases on the meta device and show what they hold.",
    ),
) -> None:
    """Edit videos or images with a text prompt: one file, several (-o FOLDER), or a --jobs file."""
    from ..editing.edit import edit as run_edit
    from ..editing.edit import resolve_model

    if dry_run:
        from ..memory.dry_run import DryRunRequest

        req = DryRunRequest(
            model, adapter, size, frames, gpu_memory, window, overlap, guidance, source_guidance, source_cache,
            cfg_batch, "model" if cpu_offload else offload, base_dtype, vae_tiling, measure, sda_chunking, guidance_2,
        )  # fmt: skip
        _dry_run(req, json_out)
        return

    options = dict(
        model=model, adapter=adapter, steps=steps, guidance=guidance, guidance_2=guidance_2,
        guidance_boundary=guidance_boundary, flow_shift=flow_shift, source_guidance=source_guidance,
        strength=strength, seed=seed, negative_prompt=negative_prompt, gate_prompt=gate_prompt, max_area=max_area,
        resolution=resolution, window=window, overlap=overlap, max_frames=max_frames, start=start, end=end,
        model_fps=model_fps, codec=codec, crf=crf, dtype=dtype, device=device, cpu_offload=cpu_offload,
        vae_tiling=vae_tiling, offload=offload, source_cache=source_cache, cfg_batch=cfg_batch, base_dtype=base_dtype,
        compile=compile_, sda_chunking=sda_chunking, lora=list(lora), attention_backend=attention_backend,
        overwrite=overwrite, arch=arch,
    )  # fmt: skip
    configs, batch = run(lambda: _plan(args or [], output, jobs, save_mask, options))
    if not (quiet or json_out):
        _, _, origin = run(lambda: resolve_model(configs[0].model, configs[0].adapter))
        if origin == "bundle":
            err_console.print(
                "Using the bundled toy model shapes-wan (a 64x64 shapes world); for real footage pass --model with a Wan base and --adapter.",
                markup=False,
            )
    if not batch:
        with progress_bar("edit", not (quiet or json_out)) as bar:
            result = run(lambda: run_edit(configs[0], progress=bar))
        emit(result, json_out, f"Wrote {result['output']} ({result['frames']} frames, {result['seconds']:.1f} s).")
        return
    _run_batch(configs, json_out, quiet)


def _dry_run(req, json_out: bool) -> None:
    """--dry-run: the edit's device-memory plan, printed; no input read, no weights loaded, nothing written."""
    from ..memory.dry_run import edit_dry_run

    result = run(lambda: edit_dry_run(req))
    if json_out:
        sys.stdout.write(jsonutil.dumps(result) + "\n")
    else:
        print_memory_plan(result)


def _plan(args: list[str], output: Path | None, jobs: Path | None, save_mask: Path | None, options: dict):
    """(the jobs' configs, whether they are a batch) from INPUT... PROMPT -o, or a --jobs file."""
    from ..editing.batch import jobs_for_inputs, read_jobs
    from ..editing.edit import EditConfig
    from ..errors import UsageError

    if jobs is not None:
        if args:
            raise UsageError("Give either --jobs or INPUT PROMPT, not both.")
        return read_jobs(jobs, options), True
    if len(args) < 2:
        raise UsageError("Missing INPUT or PROMPT.", 'Usage: imvedit edit in.mp4 "make it winter" -o out.mp4')
    if output is None:
        raise UsageError("Missing -o/--output.", "Say where to write the result, e.g. -o out.mp4.")
    inputs, prompt = [Path(a) for a in args[:-1]], args[-1]
    if len(inputs) == 1 and not (output.is_dir() or str(output).endswith(("/", "\\"))):
        return [EditConfig(inputs[0], prompt, output, save_mask=save_mask, **options)], False
    if save_mask is not None:
        raise UsageError("--save-mask takes one input.", "Use a --jobs file with save_mask per job.")
    if output.parent.exists():
        output.mkdir(exist_ok=True)
    return jobs_for_inputs(inputs, prompt, output, options), True


def _run_batch(configs: list, json_out: bool, quiet: bool) -> None:
    """This process's share of the jobs (`shard`), one line (or JSON object) per job as it ends."""
    from ..editing.batch import run_jobs, shard

    mine = shard(configs)

    def loop() -> int:
        failed = 0
        with progress_bar("edit", not (quiet or json_out)) as bar:
            for record in run_jobs(mine, progress=bar):
                failed += record["status"] == "failed"
                if json_out:
                    sys.stdout.write(jsonutil.dumps(record) + "\n")
                    sys.stdout.flush()
                elif record["status"] == "ok":
                    print(f"ok       {record['output']} ({record['frames']} frames, {record['seconds']:.1f} s)")
                elif record["status"] == "skipped":
                    print(f"skipped  {record['output']} (exists; --overwrite redoes it)")
                else:
                    err_console.print(f"failed   {record['input']}: {record['error']}", markup=False)
        return failed

    failed = run(loop)
    if not quiet:
        err_console.print(f"{len(mine) - failed} of {len(mine)} jobs done, {failed} failed.", markup=False)
    if failed:
        raise typer.Exit(1)


COMPONENTS = {
    "transformer_weights": "transformer weights (on the device)",
    "adapter_weights": "adapter weights",
    "text_encoder": "text encoder: weights + encoding",
    "vae_encode": "VAE encode: weights + activations",
    "vae_decode": "VAE decode: weights + activations",
    "source_cache": "source cache on the device while denoising",
    "step": "one denoising step's activations",
    "source_stream": "recording the source (above its cache)",
    "latents": "latents and prompt embeddings",
}


def _options_label(o: dict) -> str:
    tiling = "tiled VAE" if o["vae_tiling"] else "untiled VAE"
    chunks = ", SDA in pieces" if o["sda_chunking"] == "on" else ""
    return (
        f"cache {o['source_cache']}, cfg-batch {o['cfg_batch']}, offload {o['offload']}, {o['base_dtype']}{chunks}, "
        f"{tiling}"
    )


def print_memory_plan(r: dict) -> None:
    """The dry run for a terminal: the chosen plan per component and phase, then every option set tried."""
    from rich.console import Console
    from rich.table import Table

    out = Console(highlight=False)
    out.print(
        f"Memory plan: {r['model']} at {r['size']}, {r['frames']} frames ({r['windows']} window(s) of "
        f"{r['tokens_per_window']:,} tokens), on {r['gpu_memory_gib']:g} GiB (usable {r['usable_gib']:g}).",
        markup=False,
    )
    measured = r.get("measured")
    table = Table(title=f"Chosen: {_options_label(r['options'])}", title_justify="left")
    table.add_column("component")
    table.add_column("GiB (plan)", justify="right")
    if measured:
        table.add_column("GiB (meta measured)", justify="right")
    for key, value in r["components"].items():
        table.add_row(
            COMPONENTS.get(key, key), f"{value:.2f}", *([f"{measured['components'][key]:.2f}"] if measured else [])
        )
    table.add_section()
    for key, value in r["phases"].items():
        row = [f"peak while: {key}", f"{value:.2f}"]
        table.add_row(*row, *([f"{measured['phases'].get(key, 0):.2f}"] if measured else []))
    out.print(table)
    verdict = "fits" if r["fits"] else "does not fit"
    out.print(f"Device peak {r['peak_gib']:.2f} GiB (in {r['dominant']}): {verdict}.", markup=False)
    tried = Table(title="Option sets tried, fastest first", title_justify="left")
    for column in ("options", "peak GiB", "fits", "peak while"):
        tried.add_column(column)
    for a in r["alternatives"]:
        tried.add_row(_options_label(a["options"]), f"{a['peak_gib']:.2f}", "yes" if a["fits"] else "no", a["dominant"])
    out.print(tried)
