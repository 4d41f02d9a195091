"""One bundled edit, pinned by a hash of its frames: a restructuring of the code must not change what an edit
gives. The hash changes only with the bundled weights (imvedit/assets) or a deliberate change of behaviour;
update it then, and say why in the commit."""

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.models.bases import SHAPES_WAN_ADAPTER
from imvedit.toy.world import render, sample_scene
from imvedit.video.io import read_image, read_video, write_image, write_video

# sha256 of the bundled adapter file these were pinned with, then of the decoded uint8 frames of each output
BUNDLE = "3633abc97afd57e5c0ec2ba7867e46e4e87d3d3bb5c4b8df3b0a7aaf516c7f87"
PINNED_VIDEO = "3d6a39054e09e3c29a3832ee8d712c8276618083f3bfdd05ce2603bb200d33d3"
PINNED_MASK = "8cbf0093064e3273a15c072e0178c91ef5a317b7d3c59999bdc52dcab4c9a827"
PINNED_IMAGE = "038af15a99acc6244b383ef6583d8a8b960552b12366e21969b0ebf228ab0dca"


def _digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


@pytest.mark.skipif(not SHAPES_WAN_ADAPTER.exists(), reason="this build has no toy edit adapter")
def test_a_bundled_edit_gives_the_pinned_frames(tmp_path):
    bundle = hashlib.sha256(SHAPES_WAN_ADAPTER.read_bytes()).hexdigest()
    assert bundle == BUNDLE, f"the bundled adapter changed ({bundle}): pin this test's frames again"
    source = render(sample_scene(np.random.default_rng(3)), 9, 64)
    clip = write_video(tmp_path / "in.mp4", source, fps=8)
    args = ["--steps", "3", "--seed", "0", "--save-mask", str(tmp_path / "mask.mp4")]
    result = CliRunner().invoke(app, ["edit", str(clip), "make it night", "-o", str(tmp_path / "out.mp4"), *args])
    assert result.exit_code == 0, result.output
    image = tmp_path / "in.png"
    write_image(image, source[0])
    result = CliRunner().invoke(app, ["edit", str(image), "make it night", "-o", str(tmp_path / "out.png"), *args[:4]])
    assert result.exit_code == 0, result.output
    video = _digest(read_video(tmp_path / "out.mp4")[0])
    mask = _digest(read_video(tmp_path / "mask.mp4")[0])
    still = _digest(read_image(tmp_path / "out.png"))
    assert (video, mask, still) == (PINNED_VIDEO, PINNED_MASK, PINNED_IMAGE)
