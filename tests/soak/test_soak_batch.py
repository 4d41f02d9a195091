"""Soak: one batch of 200 short shapes-world clips, 10% of them corrupt, killed twice and resumed.

    nox -s soak        (not part of the default test run: it takes several minutes)

After the last run, exactly the good clips have outputs, each a valid video with the input's frame
count, and no partial or temporary file is left anywhere in the output folder.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from imvedit.toy.world import render, sample_scene
from imvedit.video.io import read_video, write_video

CLIPS, CORRUPT_EVERY, FRAMES = 200, 10, 5
FAST = ["--model", "tiny-random", "--steps", "1"]


def _make_inputs(root):
    root.mkdir()
    good, bad = [], []
    for i in range(CLIPS):
        path = root / f"clip{i:03d}.mp4"
        if i % CORRUPT_EVERY == CORRUPT_EVERY - 1:
            path.write_bytes(os.urandom(2000))  # random bytes named .mp4
            bad.append(path)
        else:
            frames = render(sample_scene(np.random.default_rng(i)), frames=FRAMES, size=32)
            write_video(path, frames, 8)
            good.append(path)
    return good, bad


def _batch(jobs):
    return [sys.executable, "-m", "imvedit", "edit", "--jobs", str(jobs), *FAST, "--json"]


def test_a_killed_batch_resumes_to_exactly_the_good_outputs(tmp_path):
    good, bad = _make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "\n".join(
            json.dumps({"input": str(p), "prompt": "make it night", "output": str(out / p.name)}) for p in good + bad
        )
    )
    for kill_after in (40, 100):  # two kills, mid-batch, with different signals
        proc = subprocess.Popen(_batch(jobs), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.time() + 900
        while time.time() < deadline and proc.poll() is None and len(list(out.glob("*.mp4"))) < kill_after:
            time.sleep(0.05)
        assert proc.poll() is None, "the batch finished before it could be killed"
        proc.send_signal(signal.SIGKILL if kill_after == 40 else signal.SIGTERM)
        proc.wait(timeout=120)
    r = subprocess.run(_batch(jobs), capture_output=True, text=True, timeout=1800)
    assert r.returncode == 1  # the corrupt inputs fail, every run
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert sum(x["status"] == "failed" for x in records) == len(bad)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in good)  # nothing else, nothing hidden
    for p in good:
        frames, _ = read_video(out / p.name)
        assert frames.shape[0] == FRAMES
