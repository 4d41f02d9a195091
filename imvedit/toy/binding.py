"""Does the pretrained toy base draw what a caption names? Its binding on the simple world, measured.

    python -m imvedit.toy.binding BASE_DIR [--config PRETRAIN_CONFIG [--trained]] [--samples 24] [--json]

For captions the base never trained on, the base draws a clip from noise (text to video, no adapter), and each
frame is read back: the object is every pixel far from the background the caption names (rendered exactly),
its colour the palette colour nearest to its median pixel, its shape the template (rendered at the mask's
centre, over a few sizes) with the best IoU. A sample binds a colour or a shape when most of its frames do.
With the pretraining config, every caption of the transformer stage's training clips is skipped; with
`--trained` as well, those captions are the ones drawn instead: a base that does not bind the captions it was
taught has not learnt to draw objects at all, which held-out captions alone cannot tell from not generalising.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ..models.bases import load_base
from ..pipeline.pipeline_imvedit import ImVideoEditPipeline
from .bundle import load_config
from .pretrain import dataset_scenes
from .reading import read_object
from .world import Scene, caption, sample_scene


@torch.no_grad()
def binding_report(base, samples: int = 24, frames: int = 9, steps: int = 20, guidance: float = 3.0,
                   seed: int = 0, exclude: set[str] | None = None, size: int = 64,
                   scenes: list[Scene] | None = None) -> dict:  # fmt: skip
    """Share of `samples` clips whose object has the named colour, the named shape, and both. `scenes`: draw
    the captions of these (those with an object, in order) instead of sampling new ones."""
    pipe = ImVideoEditPipeline.from_base(base)
    pipe.set_progress_bar_config(disable=True)
    rng, rows = np.random.default_rng(seed + 555), []
    given = iter([s for s in scenes if s.objects]) if scenes is not None else None
    blank = np.zeros((frames, size, size, 3), np.uint8)  # the world's canvas (a loaded folder says Wan's area)
    while len(rows) < samples:
        scene = sample_scene(rng, 1, world="simple") if given is None else next(given, None)
        if scene is None:
            break  # fewer given scenes than samples
        text = caption(scene)
        if exclude and text in exclude:
            continue  # a caption the base trained on
        out = pipe(blank, text, num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator().manual_seed(seed + len(rows))).frames  # fmt: skip
        read = [read_object(np.rint(f * 255).astype(np.uint8), scene) for f in out]
        (obj,) = scene.objects
        color = np.mean([r["color"] == obj.color for r in read])
        shape = np.mean([r["shape"] == obj.shape for r in read])
        rows.append({"caption": text, "color": color, "shape": shape, "iou": float(np.mean([r["iou"] for r in read]))})
    share = lambda key: round(float(np.mean([r[key] > 0.5 for r in rows])), 3)  # noqa: E731
    both = round(float(np.mean([r["color"] > 0.5 and r["shape"] > 0.5 for r in rows])), 3)
    return {"samples": len(rows), "color": share("color"), "shape": share("shape"), "both": both,
            "mean_iou": round(float(np.mean([r["iou"] for r in rows])), 3), "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> None:

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="a pretrained toy base folder (pretrain.py's output)")
    parser.add_argument("--config", help="the pretraining config: skip the captions its transformer stage trained on")
    parser.add_argument(
        "--trained", action="store_true", help="draw the captions the transformer stage trained on (needs --config)"
    )
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="the whole report, rows included")
    args = parser.parse_args(argv)
    if args.trained and not args.config:
        parser.error("--trained needs --config, the pretraining config whose captions to draw")
    scenes = dataset_scenes(load_config(args.config)) if args.config else None
    draw = scenes if args.trained else None  # the trained captions themselves ...
    trained = {caption(s) for s in scenes} if scenes is not None and draw is None else None  # ... or skip them
    base = load_base(args.base, torch_dtype=torch.float32)
    report = binding_report(base, args.samples, steps=args.steps, exclude=trained, scenes=draw)
    report["held_out"] = trained is not None
    report["trained_captions"] = args.trained
    if args.json:
        print(json.dumps(report))
    else:
        print({k: v for k, v in report.items() if k != "rows"})


if __name__ == "__main__":
    main()
