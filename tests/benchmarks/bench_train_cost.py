"""Cost of a training step: adapter training vs full fine-tuning, and image pairs vs video pairs.

    python tests/benchmarks/bench_train_cost.py [--config tiny|wan2.1-1.3b] [--layers N] [--hw H W] [--steps N]

Four variants of one flow-matching step on the same random-weight WanTransformer3DModel:
- `adapter-1f`: ImVideoEdit's training (adapter trainable, base frozen) on image pairs (1 latent frame);
- `full-1f`: the same with every base weight trainable too (full fine-tuning), AdamW over all;
- `adapter-17f` / `full-17f`: video pairs of 17 frames (5 latent frames with Wan's 4x temporal VAE).

Steps per second: all four variants built in one process and stepped in turn (interleaved rounds), so
the machine's noise hits all alike; reported as ratios of median step times. Peak memory: each variant
alone in a fresh process (the peak resident set during its steps above the resident set of the built
model: activations, gradients, optimiser state), or the CUDA allocator's peak on a GPU. Not a test.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
from bench_step_cost import CONFIGS
from diffusers import WanTransformer3DModel
from peak_memory import peak_above_start

from imvedit.models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer
from imvedit.training.flow_matching import flow_matching_loss

VARIANTS = ("adapter-1f", "full-1f", "adapter-17f", "full-17f")


def build(args, variant: str, device: torch.device):
    cfg = dict(CONFIGS[args.config])
    if args.layers:
        cfg["num_layers"] = args.layers
    torch.manual_seed(0)
    base = WanTransformer3DModel(**cfg).to(device)
    adapter = ImVideoEditAdapter.for_base(base).to(device)
    model = ImVideoEditTransformer(base, adapter)
    full = variant.startswith("full")
    base.requires_grad_(full)
    params = [p for p in list(adapter.parameters()) + list(base.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    frames = 1 if variant.endswith("1f") else 5  # 17 video frames -> 5 latent frames
    c, (h, w) = cfg["in_channels"], args.hw
    g = torch.Generator().manual_seed(0)
    batch = {
        "source": torch.randn(args.batch, c, frames, h, w, generator=g).to(device),
        "target": torch.randn(args.batch, c, frames, h, w, generator=g).to(device),
        "text": torch.randn(args.batch, 16, cfg["text_dim"], generator=g).to(device),
        "gate": torch.randn(args.batch, cfg["text_dim"], generator=g).to(device),
        "empty": torch.zeros(1, 16, cfg["text_dim"], device=device),
        "empty_gate": torch.zeros(1, cfg["text_dim"], device=device),
    }
    trainable = sum(p.numel() for p in params)
    return model, optimizer, batch, trainable


def step(model, optimizer, batch) -> None:
    loss = flow_matching_loss(
        model, source_latents=batch["source"], target_latents=batch["target"], text=batch["text"],
        gate_text=batch["gate"], empty_text=batch["empty"], empty_gate_text=batch["empty_gate"],
        generator=torch.Generator().manual_seed(1), text_dropout=0.0, source_dropout=0.0, shift=3.0,
    )  # fmt: skip
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def memory_child(args, variant: str) -> None:
    """One variant alone: build it, then take `--steps` steps and report the peak memory they needed
    above the built model: activations, gradients and optimiser state (what differs between variants).
    CPU: the kernel's peak resident set (VmHWM), reset after the build; CUDA: the allocator's peak."""
    device = torch.device(args.device)
    model, optimizer, batch, trainable = build(args, variant, device)

    def steps():
        for _ in range(args.steps):
            step(model, optimizer, batch)

    extra = peak_above_start(steps, cuda=device.type == "cuda")
    print(json.dumps({"variant": variant, "peak_above_model": extra, "trainable": trainable}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--layers", type=int, default=None, help="fewer blocks for a quicker run")
    p.add_argument(
        "--hw", type=int, nargs=2, default=(16, 16), help="latent height and width (64x64 px on the toy VAE)"
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant (after one warm-up)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return memory_child(args, args.memory_child)

    device = torch.device(args.device)
    built = {v: build(args, v, device) for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for v in VARIANTS:  # warm-up
        step(*built[v][:3])
    for _ in range(args.steps):
        for v in VARIANTS:
            start = time.perf_counter()
            step(*built[v][:3])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[v].append(time.perf_counter() - start)
    median = {v: statistics.median(t) for v, t in times.items()}
    del built

    memory = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--memory-child", v, "--config", args.config, "--batch", str(args.batch),
               "--steps", str(args.steps), "--device", args.device, "--hw", *map(str, args.hw)]  # fmt: skip
        if args.layers:
            cmd += ["--layers", str(args.layers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout  # noqa: S603
        memory[v] = json.loads(out.strip().splitlines()[-1])
    extra = {v: memory[v]["peak_above_model"] for v in VARIANTS}
    print(
        json.dumps(
            {
                "config": args.config,
                "layers": args.layers,
                "latent_hw": list(args.hw),
                "batch": args.batch,
                "device": str(device),
                "machine": platform.machine(),
                "trainable_parameters": {v: memory[v]["trainable"] for v in VARIANTS},
                "steps_per_s": {v: round(1 / median[v], 3) for v in VARIANTS},
                "step_time_ratio_full_over_adapter": {
                    "1 frame": round(median["full-1f"] / median["adapter-1f"], 3),
                    "17 frames": round(median["full-17f"] / median["adapter-17f"], 3),
                },
                "step_time_ratio_17f_over_1f": {
                    "adapter": round(median["adapter-17f"] / median["adapter-1f"], 3),
                    "full": round(median["full-17f"] / median["full-1f"], 3),
                },
                "peak_memory_above_model_mb": {v: round(extra[v] / 2**20, 1) for v in VARIANTS},
                "peak_memory_ratio_full_over_adapter": {
                    "1 frame": round(extra["full-1f"] / extra["adapter-1f"], 3),
                    "17 frames": round(extra["full-17f"] / extra["adapter-17f"], 3),
                },
                "peak_memory_ratio_17f_over_1f_adapter": round(extra["adapter-17f"] / extra["adapter-1f"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
