"""What the latent cache costs at prepare time and saves at training time, as ratios in one run.

    python tests/benchmarks/bench_prepare_cache.py [--model shapes-wan] [--pairs 256] [--steps 30]

1. `prepare toy` of N pairs without and with `--cache` (pairs per second each; ratio of times).
2. `train` for S steps of batch 16 from the plain folder (VAE + text encoder every step) and from the
   cached one (neither loaded), interleaved; median step time of each (from log.jsonl) and the ratio.
Defaults to the bundled toy base when the build has it, else tiny-random. Not a test.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from imvedit.data.pairs import PrepareConfig, prepare
from imvedit.models.bases import bundle_available
from imvedit.training.train import TrainConfig, train


def _step_times(run: Path) -> list[float]:
    t = [json.loads(x)["seconds"] for x in (run / "log.jsonl").read_text().splitlines()]
    return [b - a for a, b in zip(t, t[1:], strict=False)][2:]  # skip warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="shapes-wan" if bundle_available() else "tiny-random")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    size = 64 if args.model == "shapes-wan" else 32
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        prepare(PrepareConfig("toy", tmp / "plain", limit=args.pairs, seed=0, toy_size=size))
        plain_s = time.perf_counter() - start
        start = time.perf_counter()
        prepare(PrepareConfig("toy", tmp / "cached", limit=args.pairs, seed=0, toy_size=size, cache_model=args.model))
        cached_s = time.perf_counter() - start
        options = dict(model=args.model, max_steps=args.steps, batch_size=16, cross_attention_text="mixed")
        steps = {"plain": [], "cached": []}
        for round_ in range(2):  # interleaved, so both see the same machine load
            for name in ("plain", "cached"):
                train(TrainConfig(tmp / name, tmp / f"run-{name}-{round_}", **options))
                steps[name] += _step_times(tmp / f"run-{name}-{round_}")
    plain_step, cached_step = statistics.median(steps["plain"]), statistics.median(steps["cached"])
    print(
        json.dumps(
            {
                "model": args.model,
                "pairs": args.pairs,
                "prepare_pairs_per_s": round(args.pairs / plain_s, 1),
                "prepare_cache_pairs_per_s": round(args.pairs / cached_s, 1),
                "prepare_cache_over_plain_time": round(cached_s / plain_s, 2),
                "train_step_s": round(plain_step, 4),
                "train_step_cached_s": round(cached_step, 4),
                "train_cached_over_plain_step": round(cached_step / plain_step, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
