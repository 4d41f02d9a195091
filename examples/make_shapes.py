"""Render `examples/shapes.mp4`, the sample clip for the bundled toy model, from the shapes world.

    python examples/make_shapes.py [-o examples/shapes.mp4]

The scene is fixed (`imvedit.toy.world.EXAMPLE_SCENE`, not sampled), so the clip and its caption never
change: one large blue circle drifting over a flat green background, in the simple world the bundled base was
trained on, 33 frames (Wan's 4k + 1) at 64x64, 12 fps.
"""

from __future__ import annotations

import argparse
from fractions import Fraction

from imvedit.toy.world import EXAMPLE_FPS, EXAMPLE_FRAMES, EXAMPLE_SCENE, EXAMPLE_SIZE, caption, render
from imvedit.video.io import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default="examples/shapes.mp4")
    args = parser.parse_args()
    # crf 0: exact in YUV 4:2:0, so the model sees the rendered frames up to the colour subsampled at edges
    write_video(args.output, render(EXAMPLE_SCENE, EXAMPLE_FRAMES, EXAMPLE_SIZE), Fraction(EXAMPLE_FPS), crf=0)
    print(f"wrote {args.output}: {caption(EXAMPLE_SCENE)}")


if __name__ == "__main__":
    main()
