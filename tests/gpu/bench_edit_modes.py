"""Time and peak GPU memory of one edit in every memory mode, on a real Wan base (needs a CUDA GPU).

    python tests/gpu/bench_edit_modes.py --model Wan-AI/Wan2.1-T2V-1.3B-Diffusers [--adapter run/] \
        [--size 832x480] [--frames 81] [--steps 4] [--modes device/on/none cpu/off/none recompute/off/group ...]

Each mode is `source_cache/cfg_batch/offload[/fp8][/pieces]` (`pieces`: `--sda-chunking on`). Without --adapter a random adapter for the base is used
(the memory and time of an edit do not depend on its weights). The input is a synthetic moving pattern at the
working size. For each mode: wall time of the whole edit, the CUDA allocator's peak, and the largest pixel
difference from the first mode (the modes must agree: fp32 latents, the same arithmetic up to batching).
Prints a Markdown table and, with --json, one JSON object per mode. Not a test: CI has no GPU.
"""

import argparse
import json
import time

import numpy as np
import torch

from imvedit.editing.edit import place_models
from imvedit.memory.edit_plan import SDA_CHUNKS
from imvedit.models.imvedit import ImVideoEditAdapter
from imvedit.models.loading import load_model
from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline

GIB = 1024**3


def pattern(frames: int, width: int, height: int) -> np.ndarray:
    """A bright disc moving over a gradient: enough structure for the VAE, no file needed."""
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        cx, cy = width * (0.2 + 0.6 * f / max(1, frames - 1)), height / 2
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < (height / 5) ** 2
        out[f, ..., 0] = np.where(disc, 230, 40 + 150 * x // width)
        out[f, ..., 1] = np.where(disc, 60, 80)
        out[f, ..., 2] = np.where(disc, 60, 40 + 150 * y // height)
    return out


def build(args, mode: str) -> ImVideoEditPipeline:
    cache, cfg, offload, *rest = mode.split("/")
    device, dtype = torch.device("cuda"), torch.bfloat16
    loaded = load_model(args.model, args.adapter, torch.device("cpu"), dtype)
    base, adapters = loaded.base, [loaded.adapter, loaded.adapter_2]
    for i, t in enumerate((base.transformer, base.transformer_2)):
        if t is not None and adapters[i] is None and args.adapter is None:  # random weights: same memory and time
            adapters[i] = ImVideoEditAdapter.for_base(t).to(dtype)
            with torch.no_grad():
                for p in adapters[i].parameters():
                    p.normal_(0, 0.02)
    pipe = ImVideoEditPipeline.from_base(base, *adapters)
    pipe.set_progress_bar_config(disable=True)
    if "fp8" in rest:
        pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype)
    place_models(pipe, offload, device)
    pipe.vae.enable_tiling()
    return pipe, cache, cfg == "on", SDA_CHUNKS if "pieces" in rest else 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", default=None)
    p.add_argument("--size", default="832x480")
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--modes", nargs="+", default=["device/on/none", "cpu/on/none", "cpu/off/none", "recompute/off/none",
                                                   "cpu/off/model", "cpu/off/group", "cpu/off/group/fp8",
                                                   "cpu/off/group/fp8/pieces"])  # fmt: skip
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    width, height = map(int, args.size.lower().split("x"))
    video = pattern(args.frames, width, height)
    rows, first = [], None
    for mode in args.modes:
        pipe, cache, cfg_batch, sda_chunks = build(args, mode)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = pipe(video, "make it winter", num_inference_steps=args.steps, guidance_scale=5.0,
                   source_cache=cache, cfg_batch=cfg_batch, sda_chunks=sda_chunks,
                   generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
        torch.cuda.synchronize()
        row = {"mode": mode, "seconds": round(time.perf_counter() - t0, 1),
               "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
               "max_diff": 0.0 if first is None else float(np.abs(out - first).max())}  # fmt: skip
        first = out if first is None else first
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        del pipe, out
        torch.cuda.empty_cache()
    print(f"\n{args.model}, {width}x{height}, {args.frames} frames, {args.steps} steps\n")
    print(
        "| source cache / cfg batch / offload [/ fp8] [/ SDA pieces] | seconds | peak GiB | max pixel diff vs first |"
    )
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['seconds']} | {r['peak_gib']} | {r['max_diff']:.4f} |")


if __name__ == "__main__":
    main()
