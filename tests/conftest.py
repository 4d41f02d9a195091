import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in the tests may reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# diffusers copies a folder's custom pipeline file here before importing it; keep that out of the home dir
os.environ.setdefault("HF_MODULES_CACHE", __import__("tempfile").mkdtemp(prefix="hf-modules-"))

import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from imvedit.models.bases import build_tiny_random  # noqa: E402
from imvedit.video.io import ffmpeg_exe  # noqa: E402


@pytest.fixture
def tiny_base():
    return build_tiny_random()


def make_a14b_folder(path: Path, boundary_ratio: float = 0.875) -> Path:
    """A tiny Wan2.2-T2V-A14B-shaped base: `build_tiny_random()` as the high-noise expert, a second
    transformer of the same architecture with other weights as the low-noise one, and the boundary,
    saved the way diffusers saves Wan2.2-A14B."""
    from diffusers import WanPipeline, WanTransformer3DModel

    base = build_tiny_random()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        low = WanTransformer3DModel.from_config(base.transformer.config).eval()
    WanPipeline(
        tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae, scheduler=base.scheduler,
        transformer=base.transformer, transformer_2=low, boundary_ratio=boundary_ratio,
    ).save_pretrained(str(path))  # fmt: skip
    return path


@pytest.fixture
def a14b_folder(tmp_path):
    return make_a14b_folder(tmp_path / "wan22-a14b-tiny")


def make_clip(path: Path, size="64x48", rate="8", frames=9, audio=True, pix_fmt="yuv420p") -> Path:
    """A real test clip from ffmpeg's lavfi sources, with a sine audio track."""
    cmd = [ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440"]
    cmd += ["-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", pix_fmt]
    if audio:
        cmd += ["-c:a", "aac", "-t", str(frames / float(eval(rate)))]  # noqa: S307 - a literal rate
    subprocess.run(cmd + [str(path)], check=True)
    return path


@pytest.fixture
def clip(tmp_path):
    return make_clip(tmp_path / "in.mp4")


def make_pairs_folder(root: Path, n=4, size=(56, 40), corrupt: int = 0) -> Path:
    """A folder of image pairs with a CSV manifest; the last `corrupt` source files are not images."""
    import csv

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "target", "instruction", "caption"])
        for i in range(n):
            a = (rng.random((size[1], size[0], 3)) * 255).astype("uint8")
            Image.fromarray(a).save(root / f"s{i}.png")
            Image.fromarray(255 - a).save(root / f"t{i}.png")
            if i >= n - corrupt:
                (root / f"s{i}.png").write_text("not an image")
            w.writerow([f"s{i}.png", f"t{i}.png", "invert the colours", "an inverted picture"])
    return root


@pytest.fixture
def pairs_folder(tmp_path):
    return make_pairs_folder(tmp_path / "pairs")


def randomize_adapter(adapter, std=0.05, seed=1):
    """Give every adapter weight (including the zero-initialised ones) a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return adapter


def _sigint_default() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen_interruptible(cmd, **kwargs) -> subprocess.Popen:
    """Popen a command whose SIGINT works like Ctrl-C even when the tests themselves run as a background
    job: a shell starts background jobs with SIGINT ignored, the child inherits that, and Python then
    keeps ignoring it (as a backgrounded `imvedit` should)."""
    return subprocess.Popen(cmd, preexec_fn=_sigint_default, **kwargs)  # noqa: PLW1509 - set before exec, no threads


def run_killed_then_resumed(monkeypatch, module, name: str, call: int, run) -> None:
    """`run()` with `module.name` raising KeyboardInterrupt on its `call`-th call (a kill mid-run), then
    `run()` again with it restored: the resume under test."""
    real, calls = getattr(module, name), []

    def dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dies)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(module, name, real)
    run()
