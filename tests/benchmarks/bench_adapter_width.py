"""Cost of a training step of the bundled toy adapter at two widths: the first bundles' and today's (twice as wide).

    python tests/benchmarks/bench_adapter_width.py [--steps N] [--batch N]

The frozen base is the bundled shapes-wan transformer; each adapter takes the switches of stage 1 of the bundle's
recipe (imvedit/toy/configs/adapter.yaml), with its widths (rank, aligned_rank, cross_rank, text_rank, gate_dim)
as written there ("wide") or halved ("narrow"). One step is the recipe's: a batch of 64x64 image pairs (one
latent frame), flow shift 12, edit-weighted loss, AdamW. Both are built in one process and stepped in turn
(interleaved rounds), so the machine's noise hits both alike; reported as the ratio of median step times.
Data loading and text encoding are left out: they do not depend on the width. Not a test.
"""

import argparse
import json
import platform
import statistics
import time

import torch
from diffusers import WanTransformer3DModel

from imvedit.models.bases import SHAPES_WAN_DIR
from imvedit.models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer
from imvedit.toy.bundle import CONFIGS
from imvedit.training.config import TrainConfig
from imvedit.training.flow_matching import flow_matching_loss

WIDTHS = ("rank", "aligned_rank", "cross_rank", "text_rank", "gate_dim")


def switches(recipe: TrainConfig, scale: float) -> dict:
    return {k: int(v * scale) if k in WIDTHS else v for k, v in recipe.adapter.switches().items()}


def load() -> WanTransformer3DModel:
    return WanTransformer3DModel.from_pretrained(SHAPES_WAN_DIR / "transformer").eval()


def build(base: WanTransformer3DModel, recipe: TrainConfig, scale: float, args):
    torch.manual_seed(0)
    adapter = ImVideoEditAdapter.for_base(base, **switches(recipe, scale))
    model = ImVideoEditTransformer(base, adapter)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=recipe.lr)
    c, text_dim = base.config.in_channels, base.config.text_dim
    g = torch.Generator().manual_seed(0)
    source = torch.randn(args.batch, c, 1, 16, 16, generator=g)  # 64x64 px through the toy VAE
    batch = {
        "source_latents": source,
        "target_latents": source + 0.5 * torch.randn(source.shape, generator=g),
        "text": torch.randn(args.batch, args.tokens, text_dim, generator=g),
        "gate_text": torch.randn(args.batch, text_dim, generator=g),
        "empty_text": torch.zeros(1, args.tokens, text_dim),
        "empty_gate_text": torch.zeros(1, text_dim),
    }
    return model, optimizer, batch, sum(p.numel() for p in adapter.parameters())


def step(model, optimizer, batch, recipe: TrainConfig) -> None:
    loss = flow_matching_loss(
        model, **batch, generator=torch.Generator().manual_seed(1), text_dropout=recipe.text_dropout,
        source_dropout=recipe.source_dropout, shift=recipe.flow_shift, edit_weight=recipe.edit_loss_weight,
    )  # fmt: skip
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20, help="timed rounds (after 3 warm-up rounds)")
    p.add_argument("--batch", type=int, default=16, help="pairs per step (the recipe's batch_size)")
    p.add_argument("--tokens", type=int, default=32, help="text tokens per prompt")
    args = p.parse_args()
    recipe = TrainConfig.from_sources(CONFIGS / "adapter.yaml", {}, required=())  # validated, as `train` reads it
    # a base holds one adapter at a time (processors and hooks): each width gets its own copy, frozen by the wrapper
    built = {k: build(load(), recipe, scale, args) for k, scale in (("narrow", 0.5), ("wide", 1.0))}
    times = {k: [] for k in built}
    for r in range(3 + args.steps):
        for k in sorted(built, reverse=r % 2 == 1):  # alternate which goes first in a round
            model, optimizer, batch, _ = built[k]
            start = time.perf_counter()
            step(model, optimizer, batch, recipe)
            if r >= 3:
                times[k].append(time.perf_counter() - start)
    median = {k: statistics.median(t) for k, t in times.items()}
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "batch": args.batch,
                "rounds": args.steps,
                "trainable_parameters": {k: b[3] for k, b in built.items()},
                "median_step_s": {k: round(v, 4) for k, v in median.items()},
                "step_time_ratio_wide_over_narrow": round(median["wide"] / median["narrow"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
