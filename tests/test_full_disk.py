"""A full disk fails cleanly: one line that says so, exit code 1, and nothing partial left behind."""

import errno
import subprocess
import uuid

import pytest
from conftest import make_clip, randomize_adapter
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.models.adapter_file import save_adapter
from imvedit.models.bases import build_tiny_random
from imvedit.models.imvedit import ImVideoEditAdapter

runner = CliRunner()


def test_export_onto_a_full_disk(tmp_path, monkeypatch):
    base = build_tiny_random()
    src = save_adapter(
        randomize_adapter(ImVideoEditAdapter.for_base(base.transformer, rank=2)),
        tmp_path / "a.safetensors",
        base.identity,
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def full_disk(tensors, filename, metadata=None):  # writes a little, then the device is full
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    monkeypatch.setattr("imvedit.models.adapter_format.save_file", full_disk)
    for target in (out_dir / "x.safetensors", out_dir / "folder"):
        r = runner.invoke(app, ["export", str(src), "-o", str(target)])
        assert r.exit_code == 1 and "The disk is full" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert list(out_dir.iterdir()) == []  # no file, no temporary, no staged folder


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KB tmpfs: a real full disk. Skipped where this process may not mount (most CI runners)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_edit_onto_a_full_disk(tmp_path, small_disk):
    clip = make_clip(tmp_path / "in.mp4", size="320x240", frames=40, rate="8")  # its edit needs more than 200 KB
    r = subprocess.run(
        ["python", "-m", "imvedit", "edit", str(clip), "make it winter", "-o", str(small_disk / "out.mp4"),
         "--model", "tiny-random", "--steps", "1", "--crf", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "space" in r.stderr.lower()
    assert list(small_disk.iterdir()) == []
