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
# (pinned again 2026-12-06: the toy bases' default guidance became 1.5 down to sigma 0.8, then off)
BUNDLE = "b1f0354521a627f045403087e74692299a7378edd3f716b59cc1acdfd31965ad"
PINNED_VIDEO = "ba8d5908051e7d06a23bac5f6a23bc1680cdfd32992975ac4b7abd5de97500b2"
PINNED_MASK = "70ced701db04ada6f18239a2355a46c2da863de30d668c7f9bda43fbf248ae65"
PINNED_IMAGE = "329481d633b18c91d6f423dce1224e0951851e5704428fe0468ccfdaa5fec809"


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
