"""`imvedit export --format comfyui`: ComfyUI-named weights that map back exactly, and the custom node that
loads them. ComfyUI cannot run here, so the node package written by the export is imported as ComfyUI
imports a custom node, and its functions are called directly on an IMAGE batch."""

import importlib.util
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import randomize_adapter
from safetensors import safe_open
from test_export import TOLERANCE, damaged_copies, reference_edit

from imvedit.errors import UsageError
from imvedit.export import ExportConfig, export, inspect_adapter
from imvedit.models.adapter_file import from_comfyui_names, save_adapter, to_comfyui_names
from imvedit.models.bases import build_tiny_random
from imvedit.models.imvedit import ImVideoEditAdapter


@pytest.fixture
def run_adapter(tmp_path):
    base = build_tiny_random()
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(base.transformer, rank=4), std=0.1)
    return save_adapter(adapter, tmp_path / "adapter.safetensors", base.identity, training={"steps": 7})


SWITCHES = [
    dict(zip(("branches", "gate", "aligned_difference", "ffn_lora", "every_k_blocks"), values, strict=True))
    for values in itertools.product(
        ("pos_neg", "zero_out"), ("text", "no_text", "none"), (True, False), (True, False), (1, 2)
    )
] + [
    {"cross_lora": True},
    {"cross_lora": True, "ffn_lora": True, "every_k_blocks": 2},
    {"text_difference": True, "cross_lora": True},
    {"text_difference": True, "frame_position": True},
]


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "-".join(map(str, s.values())))
def test_comfyui_names_map_back_exactly_for_every_switch(switches):
    state = ImVideoEditAdapter.for_base(build_tiny_random().transformer, rank=4, **switches).state_dict()
    named = to_comfyui_names(state)
    assert all(k.startswith("imvedit.") and not k.startswith("imvedit.sda") for k in named)
    assert from_comfyui_names(named).keys() == state.keys()


def load_node_package(export_dir):
    """Import `custom_nodes/imvedit/__init__.py` the way ComfyUI imports a custom node folder."""
    init = export_dir / "custom_nodes" / "imvedit" / "__init__.py"
    spec = importlib.util.spec_from_file_location("comfy_custom_node_imvedit", init)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def frames_as_comfy_image():
    """The test edit's frames as ComfyUI passes an IMAGE: float (n, h, w, 3) in [0, 1]."""
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    return torch.from_numpy(frames).float() / 255


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_comfyui_export_loads_in_the_node_and_edits_like_the_run(tmp_path, run_adapter, dtype):
    out = tmp_path / "winter-comfy"
    export(ExportConfig(run_adapter, out, "comfyui", dtype))
    weights = out / "models" / "imvedit" / "winter-comfy.safetensors"
    assert weights.is_file() and (out / "README.md").is_file()
    with safe_open(str(weights), framework="pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert "imvedit.blocks.0.self_attn.pos.q.lora_down.weight" in keys
    assert (
        meta["format"] == "imvedit-adapter-comfyui" and meta["modelspec.architecture"] == "tiny-random/imvedit-adapter"
    )
    info = inspect_adapter(weights)
    assert info["hash_ok"] and info["format"] == "imvedit-adapter-comfyui" and info["training"] == {"steps": 7}
    assert info["computed_sha256"] == meta["payload_sha256"]

    nodes = load_node_package(out)
    loader, apply = (nodes.NODE_CLASS_MAPPINGS[n]() for n in ("ImVideoEditLoader", "ImVideoEditApply"))
    assert set(nodes.NODE_DISPLAY_NAME_MAPPINGS) == set(nodes.NODE_CLASS_MAPPINGS)
    (pipeline,) = loader.load(str(weights), base="", precision="fp32")  # the base named in the file
    edited, mask = apply.edit(pipeline, frames_as_comfy_image(), "make it red", steps=2, guidance=5.0, seed=0)
    assert edited.shape == (5, 32, 32, 3) and mask.shape == (5, 32, 32) and edited.dtype == torch.float32
    diff = np.abs(edited.numpy() - reference_edit(run_adapter)).max()
    assert diff <= TOLERANCE[dtype], f"{dtype}: max difference {diff}"


def test_the_node_scales_frames_of_any_size_and_back(tmp_path, run_adapter):
    out = tmp_path / "c"
    export(ExportConfig(run_adapter, out, "comfyui"))
    nodes = load_node_package(out)
    (pipeline,) = nodes.NODE_CLASS_MAPPINGS["ImVideoEditLoader"]().load(str(out / "models/imvedit/c.safetensors"))
    frames = torch.rand(3, 30, 45, 3)  # not multiples of the model's 16
    edited, mask = nodes.NODE_CLASS_MAPPINGS["ImVideoEditApply"]().edit(pipeline, frames, "make it red", steps=1)
    assert edited.shape == frames.shape and mask.shape == (3, 30, 45)
    assert float(edited.min()) >= 0 and float(edited.max()) <= 1


def test_the_node_refuses_a_damaged_file_and_an_export_of_it_writes_nothing(tmp_path, run_adapter):
    out = tmp_path / "c"
    export(ExportConfig(run_adapter, out, "comfyui"))
    weights = out / "models" / "imvedit" / "c.safetensors"
    truncated, flipped = damaged_copies(weights, tmp_path)
    loader = load_node_package(out).NODE_CLASS_MAPPINGS["ImVideoEditLoader"]()
    for bad, words in ((truncated, "not a readable safetensors"), (flipped, "corrupted")):
        with pytest.raises(UsageError, match=words):
            loader.load(str(bad))
        r = subprocess.run(
            [sys.executable, "-m", "imvedit", "export", bad, "-o", tmp_path / f"x-{bad.stem}", "--format", "comfyui"],
            capture_output=True,
            text=True,
        )
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / f"x-{bad.stem}").exists()


def test_cli_comfyui_file_alone_and_back_to_a_plain_adapter(tmp_path, run_adapter):
    comfy = tmp_path / "edit.safetensors"
    r = subprocess.run(
        [sys.executable, "-m", "imvedit", "export", run_adapter, "-o", comfy, "--format", "comfyui", "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["format"] == "comfyui"
    # a ComfyUI file is an adapter like any other: it exports back to the native names, bit for bit
    export(ExportConfig(comfy, tmp_path / "plain.safetensors"))
    with safe_open(str(run_adapter), framework="pt") as a, safe_open(str(tmp_path / "plain.safetensors"), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
