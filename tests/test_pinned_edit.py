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
BUNDLE = "b1f0354521a627f045403087e74692299a7378edd3f716b59cc1acdfd31965ad"
PINNED_VIDEO = "2b6e156176f0c2e5d8449595e308ff2679c85db3b000abaf30998992cd97b169"
PINNED_MASK = "247c440135282a297fe822153952ce9a6e1f34b35e6bbdfd7850368e149e47bd"
PINNED_IMAGE = "c558fceab21495909fcb271473e3595a5f137df36d8502e0629c40327a317365"


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
