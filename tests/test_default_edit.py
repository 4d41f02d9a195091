"""The first edit a new user runs: `imvedit edit examples/shapes.mp4 "make the circle red" -o out.mp4`, no flags.

The clip is the shipped one, checked against the scene that rendered it, so this fails if the bundle, the clip or
the edit path stops recolouring the object. tests/benchmarks/bench_default_edit.py times all four of the issue's
edits and reads the rest; this asserts what the bundled adapter was measured to do (docs/toy.md).
"""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.evaluation.metrics import psnr
from imvedit.models.bases import SHAPES_WAN_ADAPTER
from imvedit.toy.reading import read_edit
from imvedit.toy.world import EXAMPLE_FPS, EXAMPLE_FRAMES, EXAMPLE_SCENE, EXAMPLE_SIZE, render
from imvedit.video.io import read_video

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "shapes.mp4"


def test_the_shipped_example_is_its_scene_rendered():
    frames, info = read_video(EXAMPLE)
    assert (len(frames), info.width, info.height, info.fps) == (EXAMPLE_FRAMES, EXAMPLE_SIZE, EXAMPLE_SIZE, EXAMPLE_FPS)
    # crf 0 keeps the YUV 4:2:0 frames exactly; only the colour at the circle's edge is subsampled (29.2 dB)
    assert psnr(frames / 255.0, render(EXAMPLE_SCENE, EXAMPLE_FRAMES, EXAMPLE_SIZE) / 255.0) > 28.0


@pytest.mark.skipif(not SHAPES_WAN_ADAPTER.exists(), reason="this build has no toy edit adapter")
def test_make_the_circle_red_recolours_the_circle_in_nearly_every_frame(tmp_path):
    out = tmp_path / "out.mp4"
    result = CliRunner().invoke(app, ["edit", str(EXAMPLE), "make the circle red", "-o", str(out)])
    assert result.exit_code == 0, result.output
    source, info = read_video(EXAMPLE)
    edited, out_info = read_video(out)
    assert edited.shape == source.shape and (out_info.fps, out_info.width) == (info.fps, info.width)
    read = read_edit(source, edited, EXAMPLE_SCENE, color="red")
    assert read["object_to_color"] >= 0.9, read  # the circle's pixels closer to red than to blue
    # the background is no pink or black: it stays nearer its own green than the other edits' colours
    assert read["background_to"] == 0.0, read
    assert read["rest_psnr"] >= 22.0, read  # the rest of the frame kept (issue 24's target; measured 22.9 dB)
