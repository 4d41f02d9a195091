"""The eval report renders in a real browser: headless Chromium takes a screenshot of index.html and
the page shows the source and edit frames (the frame strips), not a blank or broken page.

    nox -s report_screenshot      (needs Debian's chromium; not part of the default test run)
"""

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.toy.world import render, sample_scene
from imvedit.video.io import write_video

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    for i in range(2):
        write_video(tmp_path / f"s{i}.mp4", render(sample_scene(np.random.default_rng(i)), frames=9, size=64), 8)
    (tmp_path / "m.yaml").write_text(
        "- {source: s0.mp4, instruction: make it night}\n- {source: s1.mp4, instruction: make it red}\n"
    )
    report = tmp_path / "report"
    r = CliRunner().invoke(app, ["eval", "--manifest", str(tmp_path / "m.yaml"), "--report", str(report),
                                 "--model", "tiny-random", "--steps", "2", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["clips"] == 2
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1000,1400", (report / "index.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    page = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    strip = np.asarray(Image.open(report / "strips" / "clip-0000.png").convert("RGB")).astype(int)
    assert page.std() > 20  # not a blank page
    # the strip's most frequent non-white colours (the shapes world's background and objects) are on the page
    colours = {tuple(c) for c in strip.reshape(-1, 3)[::97] if tuple(c) != (255, 255, 255)}
    on_page = {tuple(c) for c in page.reshape(-1, 3)}
    assert len(colours & on_page) / len(colours) > 0.5
    shutil.copy(shot, report / "screenshot.png")
    if out := __import__("os").environ.get("IMVEDIT_SCREENSHOT"):
        shutil.copy(shot, out)
