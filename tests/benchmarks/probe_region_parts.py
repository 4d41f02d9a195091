"""Where inside the edit mask does an adapter's error sit: the object's outline, or its fill?

    python tests/benchmarks/probe_region_parts.py [--adapter ADAPTER] [--clips 32] [--band 3]

The toy bench's held-out clips (the same seeds, pipeline and default guidance as `imvedit eval --bench toy`),
edited by the bundled adapter or `--adapter`. For each clip whose edit mask is not the whole frame, the
mask is split into its interior (the mask eroded by `--band` pixels) and the band along its outline, and
`edit_region_psnr` is given for each (no interior where it would hold under a tenth of the mask). The
interior's error is split once more: its mean colour offset (the edited fill's mean minus the ground
truth's, per channel, in levels of 255) and the interior's PSNR with that offset taken away, which is what
the fill would score in the right shade. Prints one strict JSON object (a perfect region's inf as null):
per kind means, and each clip. Not a test.
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from imvedit import jsonutil
from imvedit.evaluation.metrics import psnr
from imvedit.evaluation.toy_bench import ToyBenchConfig, bench_pipeline, edit_bench_clips

PARTS = ("region", "interior", "band", "band_share", "interior_offset_removed", "interior_offset_levels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--band", type=int, default=3, help="pixels of the mask along its outline")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    config = ToyBenchConfig(adapter=args.adapter, clips=args.clips)
    config.validate()
    pipe, _, _, base = bench_pipeline(config)
    clips = []
    for ex, out, _ in edit_bench_clips(config, pipe, config.resolved_guidance(base)):
        if ex.mask.any() and not ex.mask.all():
            clips.append(
                {"kind": ex.kind, "instruction": ex.instruction, **parts(out.frames, ex.target, ex.mask, args.band)}
            )
    kinds = sorted({c["kind"] for c in clips})
    means = {k: {p: _mean([c[p] for c in clips if c["kind"] == k]) for p in PARTS} for k in kinds}
    print(jsonutil.dumps({"band_pixels": args.band, "per_kind": means, "clips": clips}, indent=2))


def parts(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, band: int) -> dict:
    """The region's PSNR, its interior's and its outline band's; the interior's mean colour offset and its
    PSNR without it. `pred` on [0, 1], `target` in 0..255, `mask` (frames, h, w)."""

    target = target.astype(np.float64) / 255.0
    interior = erode(mask, band)
    band_pixels = mask & ~interior
    row = {
        "region": psnr(pred, target, mask),
        "band": psnr(pred, target, band_pixels),
        "band_share": float(band_pixels.sum() / mask.sum()),
    }
    if interior.sum() < 0.1 * mask.sum():  # a thin region (replace's crescents): nearly all outline
        return {**row, "interior": None, "interior_offset_removed": None, "interior_offset_levels": None}
    offset = pred[interior].mean(axis=0) - target[interior].mean(axis=0)  # per channel
    return {
        **row,
        "interior": psnr(pred, target, interior),
        "interior_offset_removed": psnr(pred - offset, target, interior),
        "interior_offset_levels": float(np.abs(offset).mean() * 255),
    }


def erode(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Each frame's mask eroded by `pixels` (a square neighbourhood); outside the frame counts as inside."""

    m = torch.from_numpy(mask.astype(np.float32))[:, None]
    return (-F.max_pool2d(-m, 2 * pixels + 1, stride=1, padding=pixels))[:, 0].numpy() > 0.5


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None and np.isfinite(v)]  # a perfect clip's inf would swamp the rest
    return round(float(np.mean(values)), 2) if values else None


if __name__ == "__main__":
    main()
