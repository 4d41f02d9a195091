"""Cost of one denoising step: ImVideoEdit (source cached) vs the plain base step vs ViFeEdit's two-way step.

    python tests/benchmarks/bench_step_cost.py [--config wan2.1-1.3b|tiny] [--layers N] [--frames F] [--hw H W]
        [--threads N] [--clock wall|cpu]

Three variants on the same random-weight WanTransformer3DModel (the two adapted ones on copies of it),
same inputs, both guidance branches batched as the pipeline does:
- `plain`: one step of the base alone (the physical floor);
- `imvedit`: the edit stream with the source features cached once (docs/method.md);
- `vifeedit`: `--arch vifeedit`, the source beside the target in one sequence at every step.

Step times: interleaved rounds in one process, reported as ratios of medians (this machine is shared
and noisy: only ratios are reported). Peak memory: each variant alone in a fresh process, the peak
resident set (or CUDA allocator peak) during its steps above the built model and inputs. Not a test.
"""

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time

import torch
import yaml
from diffusers import WanTransformer3DModel
from peak_memory import peak_above_start

from imvedit.models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer

CONFIGS = {
    "wan2.1-1.3b": dict(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    ),
    "tiny": dict(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=8, out_channels=8,
        text_dim=64, freq_dim=64, ffn_dim=512, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=256,
    ),
}  # fmt: skip
VARIANTS = ("plain", "imvedit", "vifeedit")


def build(args, variant: str, base: WanTransformer3DModel | None = None):
    """(a callable taking one step of `variant`, its base). Give each adapted variant its own copy of the
    base: a base holds one adapter at a time."""
    cfg = dict(CONFIGS[args.config])
    if args.layers:
        cfg["num_layers"] = args.layers
    if base is None:
        torch.manual_seed(0)
        base = WanTransformer3DModel(**cfg).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    shape = (2, cfg["in_channels"], args.frames, *args.hw)  # batch 2: the two guidance branches
    x, src = torch.randn(shape, generator=g), torch.randn((1, *shape[1:]), generator=g)
    text = torch.randn(2, 64, cfg["text_dim"], generator=g)
    pooled = torch.randn(2, cfg["text_dim"], generator=g)
    t = torch.tensor([500.0, 500.0])
    if variant == "plain":
        return (lambda: base(x, t, text, return_dict=False)), base
    switches = dict(args.switch) if variant == "imvedit" else {}
    adapter = ImVideoEditAdapter.for_base(base, arch=variant, rank=args.rank, **switches)
    with torch.no_grad():
        for prm in adapter.parameters():  # non-zero weights: no shortcut through zero-initialised maps
            prm.normal_(0, 0.02)
    model = ImVideoEditTransformer(base, adapter)
    with torch.no_grad():
        # once per video, already through the branches as inference keeps it; batch 1 serves both branches
        features = model.encode_source(src, torch.zeros(1, 64, cfg["text_dim"]), prepare=True)
    return (lambda: model(x, t, text, features, pooled)), base


def _switch(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)  # numbers and booleans as such


@torch.no_grad()
def memory_child(args, variant: str) -> None:
    step, _ = build(args, variant)
    step()  # the first call allocates the kernels' workspaces; steady state is what is compared

    def three_steps():
        for _ in range(3):
            step()

    print(json.dumps({"variant": variant, "peak_above_model": peak_above_start(three_steps)}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="tiny", choices=sorted(CONFIGS))
    p.add_argument("--layers", type=int, default=None, help="fewer blocks for a quicker run (the ratio is per block)")
    p.add_argument("--frames", type=int, default=5, help="latent frames")
    p.add_argument("--hw", type=int, nargs=2, default=(16, 16), help="latent height and width")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--rank", type=int, default=32, help="the adapters' rank (the bundled toy recipe uses 16)")
    p.add_argument(
        "--switch", type=_switch, action="append", default=[],
        help="an adapter switch for the imvedit variant, e.g. branches=zero_out (repeatable)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument(
        "--clock", default="wall", choices=("wall", "cpu"),
        help="cpu: the process's CPU time, which other jobs on a shared machine barely disturb (use --threads 1: "
        "idle threads spinning at a barrier would count too)",
    )  # fmt: skip
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args, args.memory_child)
    plain, base = build(args, "plain")
    steps = {"plain": plain}
    for v in ("imvedit", "vifeedit"):  # identical weights; the plain base stays unhooked
        steps[v] = build(args, v, copy.deepcopy(base))[0]
    times = {v: [] for v in VARIANTS}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    with torch.no_grad():
        for i in range(args.repeat + 1):
            for v in VARIANTS:
                t0 = clock()
                steps[v]()
                if i:  # the first round warms up
                    times[v].append(clock() - t0)
    med = {v: statistics.median(t) for v, t in times.items()}
    del steps
    memory = {}
    for v in VARIANTS:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            v,
            "--config",
            args.config,
            "--frames",
            str(args.frames),
            "--hw",
            *map(str, args.hw),
            "--rank",
            str(args.rank),
        ]
        cmd += ["--layers", str(args.layers)] if args.layers else []
        cmd += [f"--switch={k}={v}" for k, v in args.switch]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout  # noqa: S603
        memory[v] = json.loads(out.strip().splitlines()[-1])["peak_above_model"]
    tokens = args.frames * args.hw[0] * args.hw[1] // 4
    print(json.dumps({
        "config": args.config, "layers": args.layers or CONFIGS[args.config]["num_layers"], "rank": args.rank,
        "switches": dict(args.switch),
        "tokens_per_video": tokens, "threads": torch.get_num_threads(), "clock": args.clock,
        "machine": platform.machine(),
        "step_s": {v: round(med[v], 4) for v in VARIANTS},
        "ratio_imvedit_over_plain": round(med["imvedit"] / med["plain"], 3),
        "ratio_imvedit_over_vifeedit": round(med["imvedit"] / med["vifeedit"], 3),
        "ratio_vifeedit_over_plain": round(med["vifeedit"] / med["plain"], 3),
        "peak_memory_above_model_mb": {v: round(memory[v] / 2**20, 1) for v in VARIANTS},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
