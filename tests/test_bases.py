import hashlib
import subprocess
import sys

import pytest
import torch

from imvedit.errors import ImveditError, UsageError
from imvedit.models.bases import build_tiny_random, load_base, save_base, with_flow_shift


def _digest(module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_tiny_random_is_bit_identical_across_processes(tiny_base):
    code = (
        "import hashlib, torch\n"
        "from imvedit.models.bases import build_tiny_random\n"
        "b = build_tiny_random()\n"
        "for m in (b.transformer, b.vae, b.text_encoder):\n"
        "    h = hashlib.sha256()\n"
        "    for k, v in sorted(m.state_dict().items()):\n"
        "        h.update(k.encode()); h.update(v.contiguous().view(torch.uint8).numpy().tobytes())\n"
        "    print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [_digest(m) for m in (tiny_base.transformer, tiny_base.vae, tiny_base.text_encoder)]


def test_tiny_random_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_random()
    assert torch.equal(torch.rand(3), expected)


def test_a_saved_diffusers_layout_loads_like_a_downloaded_wan(tmp_path, tiny_base):
    folder = tmp_path / "Wan-tiny-Diffusers"
    save_base(tiny_base, folder)
    for sub in ("model_index.json", "transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).exists(), sub
    loaded = load_base(str(folder))
    assert loaded.fingerprint == tiny_base.fingerprint
    for a, b in (
        (tiny_base.transformer, loaded.transformer),
        (tiny_base.vae, loaded.vae),
        (tiny_base.text_encoder, loaded.text_encoder),
    ):
        assert _digest(a) == _digest(b)
    assert loaded.tokenizer("a red circle").input_ids == tiny_base.tokenizer("a red circle").input_ids
    assert type(loaded.scheduler).__name__ == type(tiny_base.scheduler).__name__
    # diffusers' own WanPipeline reads the same folder
    from diffusers import WanPipeline

    assert WanPipeline.from_pretrained(str(folder)).transformer.config.num_layers == 2


def test_bad_bases_get_clear_errors(tmp_path):
    with pytest.raises(UsageError, match="not a diffusers-format Wan folder"):
        load_base(str(tmp_path))
    with pytest.raises(UsageError, match="neither a folder nor a hub id"):
        load_base("no-such-model")
    with pytest.raises(ImveditError, match="Could not load base"):
        load_base("someone/not-downloaded-wan")  # HF_HUB_OFFLINE=1: nothing is fetched


def test_a_saved_base_does_not_record_the_folder_it_was_loaded_from(tmp_path):
    from imvedit.models.bases import build_tiny_random, load_base, save_base

    save_base(build_tiny_random(), tmp_path / "a")
    save_base(load_base(str(tmp_path / "a"), torch_dtype=torch.float32), tmp_path / "b")
    configs = list((tmp_path / "b").glob("*/config.json"))
    assert len(configs) >= 3 and not any(str(tmp_path) in c.read_text() for c in configs)


def test_a_two_expert_base_loads_both_experts_and_its_boundary(tmp_path, a14b_folder):
    """Wan2.2-T2V-A14B's layout: `transformer_2` and `boundary_ratio` in model_index.json, as diffusers stores them."""
    base = load_base(str(a14b_folder))
    assert base.experts == ("high", "low") and base.boundary_ratio == 0.875
    assert _digest(base.transformer) != _digest(base.transformer_2)  # two experts, not one loaded twice
    assert base.identity_of("low")["fingerprint"] == base.fingerprint  # one architecture
    save_base(base, tmp_path / "again")
    again = load_base(str(tmp_path / "again"))
    assert again.boundary_ratio == 0.875 and _digest(again.transformer_2) == _digest(base.transformer_2)
    from diffusers import WanPipeline

    assert WanPipeline.from_pretrained(str(tmp_path / "again")).config.boundary_ratio == 0.875
    one = load_base(str(a14b_folder), components=("transformer", "scheduler"))  # the second expert left out
    assert one.transformer_2 is None and one.boundary_ratio is None and load_base("tiny-random").experts == ("high",)


def test_flow_shift_puts_more_steps_at_high_noise_and_leaves_the_base_scheduler_alone():
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    unipc = UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    for scheduler, key in ((FlowMatchEulerDiscreteScheduler(shift=1.0), "shift"), (unipc, "flow_shift")):
        before = scheduler.config[key]
        shifted = with_flow_shift(scheduler, 12.0)
        assert shifted.config[key] == 12.0 and scheduler.config[key] == before and type(shifted) is type(scheduler)
        scheduler.set_timesteps(20)
        shifted.set_timesteps(20)
        assert (shifted.sigmas > 0.9).sum() > (scheduler.sigmas > 0.9).sum()
        assert with_flow_shift(scheduler, None) is scheduler
    with pytest.raises(UsageError, match="no fixed flow shift"):
        with_flow_shift(UniPCMultistepScheduler(), 5.0)  # sigmas not from flow matching: nothing to shift


def test_an_edit_guides_as_given_else_as_the_base_defaults(tiny_base):
    """(scale, scale below the boundary, boundary): the base's pair when neither scale is given; a first scale
    given alone applies throughout, as it did before a second scale existed."""
    b = tiny_base
    b.default_guidance, b.default_guidance_2, b.default_guidance_boundary = 2.0, 1.0, 0.8
    assert b.guidance(None, None, None) == (2.0, 1.0, 0.8)
    assert b.guidance(None, None, 0.5) == (2.0, 1.0, 0.5)
    assert b.guidance(3.0, None, None) == (3.0, None, None)
    assert b.guidance(None, 1.5, None) == (2.0, 1.5, 0.8)
    assert b.guidance(4.0, 2.0, 0.9) == (4.0, 2.0, 0.9)
    with pytest.raises(UsageError, match="--guidance-2"):
        b.guidance(3.0, None, 0.5)  # a boundary with nothing to start
    b.default_guidance_2 = b.default_guidance_boundary = None  # Wan's: one scale
    assert b.guidance(None, None, None) == (2.0, None, None)
    assert b.guidance(None, 1.0, None) == (2.0, 1.0, None)  # the pipeline's experts' boundary, or an error
