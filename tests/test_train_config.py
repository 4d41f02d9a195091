import json
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest

from imvedit.errors import UsageError
from imvedit.models.bases import load_base
from imvedit.models.imvedit import ImVideoEditAdapter
from imvedit.training.config import AdapterOptions, TrainConfig


def test_yaml_then_flags(tmp_path, pairs_folder):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"pairs_dir: {pairs_folder}\noutput: {tmp_path / 'run'}\nlr: 0.001\nadapter:\n  rank: 4\n")
    cfg = TrainConfig.from_sources(cfg_file, {"lr": 0.01, "seed": 3})
    assert cfg.lr == 0.01 and cfg.seed == 3 and cfg.adapter == AdapterOptions(rank=4) and cfg.epochs == 5
    assert cfg.to_dict()["adapter"] == {"rank": 4}  # config.yaml records the switches set, nothing more
    cfg.validate()


def test_the_adapter_options_are_the_adapters_switches():
    """AdapterOptions lists each switch the adapter's constructor takes from a user, no more and no fewer."""
    assert tuple(f.name for f in fields(AdapterOptions)) == ImVideoEditAdapter.config_switches()


def test_a_dry_run_refuses_an_unknown_key_as_a_real_run_does(tmp_path, pairs_folder):
    """--dry-run loads its config through the same loader: one line on stderr, exit 2, the same message."""
    config = tmp_path / "run.yaml"
    config.write_text(f"pairs_dir: {pairs_folder}\noutput: {tmp_path / 'run'}\nlearning_rate: 0.1\n")
    errors = []
    for extra in ([], ["--dry-run"]):
        cmd = [sys.executable, "-m", "imvedit", "train", "--config", str(config), *extra]
        r = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
        errors.append(lines[0])
    assert "Unknown training option(s): learning_rate." in errors[0] and errors[1] == errors[0]
    assert not (tmp_path / "run").exists()


def test_unknown_keys_and_python_tags_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pairs_dir: x\noutput: y\nlearning_rate: 0.1\n")
    with pytest.raises(UsageError, match="Unknown training option.*learning_rate"):
        TrainConfig.from_sources(bad, {})
    evil = tmp_path / "evil.yaml"
    evil.write_text("pairs_dir: !!python/object/apply:os.system ['echo hacked']\noutput: y\n")
    with pytest.raises(UsageError, match="Could not read config"):
        TrainConfig.from_sources(evil, {})
    with pytest.raises(UsageError, match="No output given"):
        TrainConfig.from_sources(None, {"pairs_dir": "x"})


def test_validate_refuses_bad_values(tmp_path, pairs_folder):
    base = {"pairs_dir": pairs_folder, "output": tmp_path / "run"}
    for bad, match in [
        ({"lr": 0}, "lr"),
        ({"gate_text": "both"}, "gate_text"),
        ({"gate_threshold": 0}, "gate_threshold"),
        ({"edit_loss_weight": -1}, "edit_loss_weight"),
        ({"low_noise_share": 1.5}, "low_noise_share"),
        ({"low_noise_shift": 0}, "low_noise_shift"),
        ({"adapter": {"rnk": 2}}, "Unknown adapter option"),
    ]:
        with pytest.raises(UsageError, match=match):
            TrainConfig.from_sources(None, {**base, **bad}).validate()


def test_training_from_the_cache_follows_the_same_trajectory_without_vae_or_text_encoder(tmp_path, monkeypatch):
    """Same seed, same pairs: the cached run's losses equal the encoding run's (both fp32 on the CPU; the
    only difference is that the cache encoded each pair alone and training encodes batches, so the
    latents can differ in the last bits: 1e-4 relative is far below step-to-step loss changes)."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5EncoderModel

    from imvedit.data.prepare import PrepareConfig, prepare
    from imvedit.training.train import TrainConfig, train

    prepare(PrepareConfig("toy", tmp_path / "plain", limit=12, seed=0, toy_size=32))
    prepare(PrepareConfig("toy", tmp_path / "cached", limit=12, seed=0, toy_size=32, cache_model="tiny-random"))
    assert (tmp_path / "cached" / "cache" / "meta.json").is_file()
    options = dict(model="tiny-random", max_steps=4, batch_size=4, cross_attention_text="mixed", lr=1e-3)
    plain = train(TrainConfig(tmp_path / "plain", tmp_path / "run1", **options))

    def forbidden(*a, **k):
        raise AssertionError("no VAE or text-encoder forward when training from the cache")

    monkeypatch.setattr(AutoencoderKLWan, "encode", forbidden)
    monkeypatch.setattr(UMT5EncoderModel, "forward", forbidden)
    cached = train(TrainConfig(tmp_path / "cached", tmp_path / "run2", **options))
    a = [json.loads(x)["loss"] for x in (tmp_path / "run1" / "log.jsonl").read_text().splitlines()]
    b = [json.loads(x)["loss"] for x in (tmp_path / "run2" / "log.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 4
    assert np.allclose(a, b, rtol=1e-4, atol=1e-6), (a, b)
    assert plain["steps"] == cached["steps"] == 4
    # with the cache switched off, the same folder trains by encoding (and so calls the forbidden encoders)
    with pytest.raises(AssertionError, match="no VAE"):
        train(TrainConfig(tmp_path / "cached", tmp_path / "run3", cache="no", **options))


def test_a_cache_for_another_base_is_not_used(tmp_path):
    from imvedit.data.cache import cache_matches
    from imvedit.data.prepare import PrepareConfig, prepare

    prepare(PrepareConfig("toy", tmp_path / "p", limit=4, seed=0, toy_size=32, cache_model="tiny-random"))
    assert cache_matches(tmp_path / "p", "tiny-random", load_base("tiny-random").fingerprint)
    assert not cache_matches(tmp_path / "p", "tiny-random", "0" * 16)
    assert not cache_matches(tmp_path / "p", "another-base", load_base("tiny-random").fingerprint)
