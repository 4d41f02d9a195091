"""Bases imvedit cannot edit with are refused at once, from their JSON configs, in one line naming what is
supported: image-to-video bases (image-conditioned input channels or image embeddings), VACE bases, and
pipeline or transformer classes it does not know. The public Wan configs it supports still plan."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel

from imvedit.models.bases import build_tiny_random, save_base

CONFIGS = Path(__file__).parent / "data" / "wan_configs"
SUPPORTED = "Supported: Wan2.1-T2V (1.3B, 14B), Wan2.2-TI2V-5B, Wan2.2-T2V-A14B (two experts)."


def imvedit(*args):
    return subprocess.run([sys.executable, "-m", "imvedit", *map(str, args)], capture_output=True, text=True)


def i2v_shaped(folder: Path) -> Path:
    """Wan2.1-I2V's shape, tiny: 36 input channels (16 latent + 4 mask + 16 image latent) over a 16-channel VAE."""
    base = build_tiny_random()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base.vae = AutoencoderKLWan(
            base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
            latents_mean=[0.0] * 16, latents_std=[1.0] * 16,
        ).eval()  # fmt: skip
        base.transformer = WanTransformer3DModel.from_config(
            {**base.transformer.config, "in_channels": 36, "out_channels": 16}
        ).eval()
    save_base(base, folder)
    return folder


def vace_shaped(folder: Path) -> Path:
    """A tiny base whose transformer is a real diffusers WanVACETransformer3DModel."""
    base = build_tiny_random()
    save_base(base, folder)
    cfg = {k: v for k, v in base.transformer.config.items() if not k.startswith("_")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vace = WanVACETransformer3DModel(**cfg, vace_layers=[0], vace_in_channels=8).eval()
    vace.save_pretrained(folder / "transformer")
    return folder


def with_index(folder: Path, **changes) -> Path:
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, **changes}))
    return folder


def config_only(folder: Path, source: str = "wan2.1-t2v-1.3b", **transformer_changes) -> Path:
    """A public config folder with the weights it never had: a refusal must come before any weights are read."""
    for file in ("model_index.json", "transformer/config.json", "vae/config.json"):
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        data = json.loads((CONFIGS / source / file).read_text())
        (folder / file).write_text(json.dumps({**data, **transformer_changes} if "transformer" in file else data))
    return folder


CASES = {
    "i2v-channels": (i2v_shaped, "image-to-video (I2V) base (transformer in_channels 36 > the VAE's 16"),
    "i2v-pipeline": (lambda f: with_index(build_and_save(f), _class_name="WanImageToVideoPipeline"), "image-to-video"),
    "i2v-image-dim": (lambda f: config_only(f, image_dim=1280), "takes image embeddings"),
    "i2v-a14b-config": (lambda f: config_only(f, "wan2.2-t2v-a14b", in_channels=36), "transformer in_channels 36"),
    "vace-class": (vace_shaped, "is a VACE base"),
    "vace-pipeline": (lambda f: with_index(config_only(f), _class_name="WanVACEPipeline"), "is a VACE base"),
    "unknown-pipeline": (lambda f: with_index(config_only(f), _class_name="FluxPipeline"), "FluxPipeline base"),
    "unknown-transformer": (lambda f: config_only(f, _class_name="WanAnimateTransformer3DModel"), "WanAnimate"),
}


def build_and_save(folder: Path) -> Path:
    save_base(build_tiny_random(), folder)
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsupported_bases_are_refused_in_one_line(tmp_path, case):
    make, expected = CASES[case]
    folder = make(tmp_path / case)
    r = imvedit("train", "--dry-run", "--model", folder, "--json")
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and expected in line and SUPPORTED in line, line
    assert not r.stdout


@pytest.mark.parametrize("case", ["i2v-channels", "vace-class", "i2v-image-dim"])
def test_edit_and_train_refuse_them_before_loading_weights(tmp_path, case, clip, pairs_folder):
    make, expected = CASES[case]
    folder = make(tmp_path / case)
    r = imvedit("edit", clip, "make it winter", "-o", tmp_path / "out.mp4", "--model", folder, "--steps", "1")
    assert r.returncode == 2 and expected in r.stderr and SUPPORTED in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.mp4").exists()
    imvedit("prepare", pairs_folder, "-o", tmp_path / "prepared", "--max-area", 32 * 32)
    r = imvedit("train", tmp_path / "prepared", "-o", tmp_path / "run", "--model", folder, "--max-steps", "1")
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", sorted(p.name for p in CONFIGS.iterdir() if p.is_dir()))
def test_the_supported_public_configs_still_plan(model):
    r = imvedit("train", "--dry-run", "--model", CONFIGS / model, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["transformer_parameters"] > 1e9
