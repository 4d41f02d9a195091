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
# (pinned again 2026-12-06: the bundled adapter is twice as wide, each rank and the gate doubled)
BUNDLE = "fcf1c1c1c01b3aabfc4e51e30024b6d386a2150b28a428d01152e29c499c7f0d"
PINNED_VIDEO = "7c16b5f7cda15cedc5eaa0e84cba702d96663a87288e746bdb2f347ccbf8ece1"
PINNED_MASK = "27efd35f50e90c7376e51d8659afc66f4955cc9668b4fc3d6dd776a120ed40ec"
PINNED_IMAGE = "c65458053c9472bac5362b614db77c51c8762a051fa8a2c4d953d2193cc5deeb"


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
