"""Render `examples/shapes.mp4`, the sample clip for the bundled toy model, from the shapes world.

    python examples/make_shapes.py [-o examples/shapes.mp4]

The scene is fixed (not sampled), so the clip and its caption never change: a blue circle and a
yellow square moving over a green background, 33 frames (Wan's 4k + 1) at 64x64, 12 fps.
"""

from __future__ import annotations

import argparse
from fractions import Fraction

from imvedit.toy.world import Background, Obj, Scene, caption, render
from imvedit.video.io import write_video

SCENE = Scene(
    Background("flat", "green", "green"),
    [
        Obj("circle", "blue", x=0.3, y=0.35, vx=0.025, vy=0.015, size=0.3),
        Obj("square", "yellow", x=0.7, y=0.7, vx=-0.02, vy=-0.01, size=0.28),
    ],
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="examples/shapes.mp4")
    args = parser.parse_args()
    # crf 0: lossless, so what the model sees is what the world rendered.
    write_video(args.output, render(SCENE, frames=33, size=64), Fraction(12), crf=0)
    print(f"wrote {args.output}: {caption(SCENE)}")


if __name__ == "__main__":
    main()
