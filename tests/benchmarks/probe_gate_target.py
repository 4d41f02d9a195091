"""How well can the gate's training target mark an edit? The target against the true mask, by threshold.

    python tests/benchmarks/probe_gate_target.py [--clips 32] [--thresholds 0.05 0.1 0.2 0.3 0.5]

`gate_supervision` pulls the gate towards each token's share of latent positions whose normalised latents
change by more than a threshold (flow_matching.changed_share); the gate can learn no sharper a map than that
target. For the first frame of the toy bench's clips (the same seeds as `imvedit eval --bench toy`), source
and ground truth go through the bundled base's VAE, and the target at each threshold is scored as the bench
scores a gate map (`toy_bench.gate_target_iou`: `gate_iou` against the pixel mask, local edits only), beside
`gate_iou_ceiling` (an ideal per-token gate). Also the per-position change's percentiles wholly inside, on the edge of and wholly
outside the edited object, which is where a threshold has to fall. Prints one JSON object. Not a test.
"""

import argparse
import json

import numpy as np
import torch

from imvedit.evaluation.toy_bench import BENCH_SEED_OFFSET, encode_frames, gate_iou_ceiling, gate_target_iou
from imvedit.models.bases import SHAPES_WAN, load_base
from imvedit.toy.world import EDIT_KINDS, LOCAL_KINDS, sample_example
from imvedit.training.flow_matching import mean_change

PERCENTILES = (1, 5, 50, 95, 99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.5])
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    base = load_base(SHAPES_WAN, torch_dtype=torch.float32, components=("vae", "transformer"))
    patch = base.transformer.config.patch_size
    ious = {t: [] for t in args.thresholds}
    ceilings, where = [], {"inside": [], "edge": [], "outside": []}
    for i in range(args.clips):
        ex = sample_example(BENCH_SEED_OFFSET + i, frames=1, size=args.size, kinds=EDIT_KINDS)
        if ex.kind not in LOCAL_KINDS:
            continue
        latents = [encode_frames(base.vae, v) for v in (ex.source, ex.target)]
        for t, iou in zip(args.thresholds, gate_target_iou(*latents, ex.mask, patch, args.thresholds), strict=True):
            ious[t].append(iou)
        change = mean_change(*latents)[0, 0, 0].numpy()  # (h, w) latent positions
        k = args.size // change.shape[-1]  # pixels per latent position
        ceilings.append(gate_iou_ceiling(ex.mask, k * patch[-1]))  # pixels per token
        covered = ex.mask[0].reshape(change.shape[0], k, change.shape[1], k).mean(axis=(1, 3))
        where["inside"].append(change[covered == 1])
        where["edge"].append(change[(covered > 0) & (covered < 1)])
        where["outside"].append(change[covered == 0])
    out = {
        "local_clips": len(ceilings),
        "gate_iou_of_target": {str(t): round(float(np.mean(v)), 3) for t, v in ious.items()},
        "gate_iou_ceiling": round(float(np.mean(ceilings)), 3),
        "change_percentiles": {name: _percentiles(np.concatenate(v)) for name, v in where.items()},
    }
    print(json.dumps(out, indent=2))


def _percentiles(values: np.ndarray) -> dict[str, float]:
    return {str(p): round(float(np.percentile(values, p)), 3) for p in PERCENTILES}


if __name__ == "__main__":
    main()
