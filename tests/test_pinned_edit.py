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
# (pinned again 2026-12-06: the bundle's second stage annealed over 3,450 steps instead of 2,300)
BUNDLE = "5df51e610d5abcb939f0fdb187cf1bcee9be438d6645984e87d1a68571190413"
PINNED_VIDEO = "404e05c482a43033545107beef19faf62529504cb45e2aca972eab82faf7ee6c"
PINNED_MASK = "429ab375aeabf289286b61760cb30196ed22eb8d2055901b9b423225785cb0e3"
PINNED_IMAGE = "bc169df6510eed19cf821fb86e8589443571283773a255eec71c3eb95fae0135"


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
