"""Cost of a whole edit: ImVideoEdit vs the plain base's text-to-video generation of the same size and steps.

    python tests/benchmarks/bench_edit_cost.py [--model shapes-wan] [--frames 17] [--size 64] [--steps 20]

Three variants on the same base, the same prompt, size, frame count, steps and text guidance:
- `t2v`: diffusers' own `WanPipeline` generating a clip from the prompt (the floor: no source at all);
- `imvedit`: `ImVideoEditPipeline` editing a clip (VAE encode, the cached source stream once, denoise, decode);
- `vifeedit`: the same pipeline with a `--arch vifeedit` adapter (the source in the sequence every step).
Adapters get random non-zero weights (cost does not depend on what they learned). Times: interleaved rounds
in one process, ratios of medians. Peak memory: each variant alone in a fresh process, the peak resident
set above the loaded models (CUDA: the allocator's peak). Not a test.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from diffusers import WanPipeline
from peak_memory import peak_above_start

from imvedit.models.bases import load_base
from imvedit.models.imvedit import ImVideoEditAdapter
from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline
from imvedit.toy.world import sample_example

VARIANTS = ("t2v", "imvedit", "vifeedit")
PROMPT = "a red circle and a blue square on a green background"


def build(args, variant: str):
    """A callable running one whole generation or edit of `variant`."""
    base = load_base(args.model, torch_dtype=torch.float32)
    kw = dict(num_inference_steps=args.steps, guidance_scale=3.0)
    if variant == "t2v":
        pipe = WanPipeline(base.tokenizer, base.text_encoder, base.vae, base.scheduler, base.transformer)
        pipe.set_progress_bar_config(disable=True)
        # WanPipeline rounds num_frames to 4k + 1 for Wan's VAE; for a VAE that keeps every frame (the toy's,
        # factor 1) it always adds one, so ask for one fewer: both variants then make exactly `frames` frames
        frames = args.frames - 1 if pipe.vae_scale_factor_temporal == 1 else args.frames
        return lambda: pipe(
            PROMPT, height=args.size, width=args.size, num_frames=frames, output_type="np",
            generator=torch.Generator().manual_seed(0), max_sequence_length=_length(base), **kw,
        )  # fmt: skip
    torch.manual_seed(0)
    adapter = ImVideoEditAdapter.for_base(base.transformer, arch=variant)
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.02)
    pipe = ImVideoEditPipeline.from_base(base, adapter)
    pipe.set_progress_bar_config(disable=True)
    video = sample_example(0, frames=args.frames, size=args.size).source
    return lambda: pipe(video, PROMPT, generator=torch.Generator().manual_seed(0), **kw)


def _length(base) -> int:
    from imvedit.models.wan import sequence_length

    return sequence_length(base.tokenizer)


def memory_child(args, variant: str) -> None:
    run = build(args, variant)
    print(json.dumps({"variant": variant, "peak_above_models": peak_above_start(run)}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="shapes-wan")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return memory_child(args, args.memory_child)
    runs = {v: build(args, v) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for i in range(args.repeat + 1):
        for v in VARIANTS:
            t0 = time.perf_counter()
            out = runs[v]()
            if i:
                times[v].append(time.perf_counter() - t0)
            frames = out.frames if v != "t2v" else np.asarray(out.frames[0])
            assert frames.shape[0] == args.frames, (v, frames.shape)
    med = {v: statistics.median(t) for v, t in times.items()}
    del runs
    memory = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--memory-child", v, "--model", args.model, "--frames", str(args.frames),
               "--size", str(args.size), "--steps", str(args.steps)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout  # noqa: S603
        memory[v] = json.loads(out.strip().splitlines()[-1])["peak_above_models"]
    print(json.dumps({
        "model": args.model, "frames": args.frames, "size": args.size, "steps": args.steps,
        "threads": torch.get_num_threads(), "machine": platform.machine(),
        "seconds": {v: round(med[v], 3) for v in VARIANTS},
        "ratio_imvedit_over_t2v": round(med["imvedit"] / med["t2v"], 3),
        "ratio_vifeedit_over_t2v": round(med["vifeedit"] / med["t2v"], 3),
        "ratio_imvedit_over_vifeedit": round(med["imvedit"] / med["vifeedit"], 3),
        "peak_memory_above_models_mb": {v: round(memory[v] / 2**20, 1) for v in VARIANTS},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
