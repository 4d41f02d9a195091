"""`imvedit train --dry-run` on the public Wan configs (tests/data/wan_configs): exact parameter counts
from the meta device, and a memory plan that reacts to the options the way it should."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = Path(__file__).parent / "data" / "wan_configs"


def dry_run(model, *args):
    r = subprocess.run(
        [sys.executable, "-m", "imvedit", "train", "--dry-run", "--model", str(CONFIGS / model), "--json", *args],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize(
    "model, params, published",
    [
        ("wan2.1-t2v-1.3b", 1_418_996_800, 1.3e9),
        ("wan2.1-t2v-14b", 14_288_491_584, 14e9),
        ("wan2.2-ti2v-5b", 4_999_787_712, 5e9),
    ],
)
def test_parameter_counts_match_the_published_sizes(model, params, published):
    plan = dry_run(model)
    assert plan["transformer_parameters"] == params
    assert abs(params - published) / published < 0.1
    assert 0.005 < plan["adapter_fraction"] < 0.03  # the method's "small" adapter
    assert plan["text_encoder_parameters"] == 5_680_910_336  # UMT5-XXL's encoder
    assert plan["estimate"]["peak_gb"] > plan["estimate"]["parts_gb"]["transformer_weights"]


def test_the_memory_plan_follows_the_options():
    full = dry_run("wan2.1-t2v-1.3b", "--mixed-precision", "no", "--batch-size", "4")["estimate"]
    half = dry_run("wan2.1-t2v-1.3b", "--mixed-precision", "bf16", "--batch-size", "4")["estimate"]
    ckpt = dry_run("wan2.1-t2v-1.3b", "--mixed-precision", "bf16", "--batch-size", "4", "--gradient-checkpointing")
    assert half["peak_gb"] < full["peak_gb"]
    assert ckpt["estimate"]["parts_gb"]["activations"] < half["parts_gb"]["activations"] / 5
    assert (
        dry_run("wan2.2-ti2v-5b", "--max-area", "1280000")["estimate"]["tokens_per_step"] == 1250
    )  # stride 16 x patch 2


def test_dry_run_says_what_would_fit():
    plan = dry_run("wan2.1-t2v-14b", "--mixed-precision", "bf16", "--gpu-memory", "40")
    assert plan["fits"] is False
    assert plan["suggestion"]["peak_gb"] <= 40 and plan["suggestion"]["options"]
    assert dry_run("wan2.1-t2v-1.3b", "--mixed-precision", "bf16", "--gpu-memory", "80")["fits"] is True
