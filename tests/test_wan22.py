"""A Wan2.2-TI2V-shaped base (48-channel latents, the residual VAE with 2x2 patchify and 16x spatial
stride) trains and edits through the real CLI: the structural options of the real 5B model, tiny."""

import json
import subprocess
import sys

import torch
from diffusers import AutoencoderKLWan

from imvedit.models.bases import build_tiny_random, save_base
from imvedit.video.io import read_video


def test_a_wan22_shaped_base_trains_and_edits(tmp_path, pairs_folder, clip):
    base = build_tiny_random()
    z = 48
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base.vae = AutoencoderKLWan(
            base_dim=8, decoder_base_dim=8, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
            patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4,
            latents_mean=[0.0] * z, latents_std=[1.0] * z,
        ).eval()  # fmt: skip
        base.transformer = (
            type(base.transformer).from_config({**base.transformer.config, "in_channels": z, "out_channels": z}).eval()
        )
    folder = tmp_path / "wan22-tiny"
    save_base(base, folder)

    def imvedit(*args):
        r = subprocess.run([sys.executable, "-m", "imvedit", *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    imvedit("prepare", pairs_folder, "-o", tmp_path / "prepared", "--max-area", 64 * 64)
    r = imvedit("train", tmp_path / "prepared", "-o", tmp_path / "run", "--model", folder, "--max-steps", "2", "--json")
    assert json.loads(r.stdout)["steps"] == 2
    imvedit(
        "edit", clip, "invert the colours", "-o", tmp_path / "out.mp4", "--adapter", tmp_path / "run", "--steps", "2"
    )
    frames, info = read_video(tmp_path / "out.mp4")
    assert frames.shape == read_video(clip)[0].shape and info.has_audio
