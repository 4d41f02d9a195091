"""`imvedit export`: every format and dtype loads back and edits like the run's own adapter; damaged
files and adapters for another base are refused; the diffusers export loads through diffusers itself."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import randomize_adapter

from imvedit.errors import UsageError
from imvedit.export import ExportConfig, export, inspect_adapter
from imvedit.models.adapter_file import load_adapter, save_adapter
from imvedit.models.bases import build_tiny_random, save_base
from imvedit.models.imvedit import ImVideoEditAdapter
from imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline

# Largest difference (frames in [0, 1]) between the edit with the run's fp32 adapter and with an export
# in half precision: the adapter's weights are rounded to 11 (fp16) or 8 (bf16) significant bits.
# Measured on this tiny base: 2.0e-5 (fp16) and 1.3e-4 (bf16); the bounds leave a 10x margin.
TOLERANCE = {"fp32": 0.0, "fp16": 2e-4, "bf16": 2e-3}


def imvedit(*args):
    return subprocess.run(
        [sys.executable, "-m", "imvedit", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def run_adapter(tmp_path):
    """A trained-looking adapter (every weight non-zero) for tiny-random, as `imvedit train` writes it."""
    base = build_tiny_random()
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(base.transformer, rank=4), std=0.1)
    path = save_adapter(adapter, tmp_path / "adapter.safetensors", base.identity, training={"steps": 7})
    return path


def edit_with(pipe):
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    pipe.set_progress_bar_config(disable=True)
    return pipe(frames, "make it red", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames


def reference_edit(adapter_path):
    base = build_tiny_random()
    adapter, _ = load_adapter(adapter_path, base.fingerprint)
    return edit_with(ImVideoEditPipeline.from_base(base, adapter))


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_adapter_export_round_trips_in_every_dtype(tmp_path, run_adapter, dtype):
    out = tmp_path / f"export-{dtype}"
    export(ExportConfig(run_adapter, out, "adapter", dtype))
    assert sorted(os.listdir(out)) == ["README.md", "adapter.safetensors"]
    card = (out / "README.md").read_text()
    assert "tiny-random" in card and dtype in card and "training steps | 7" in card
    diff = np.abs(reference_edit(out / "adapter.safetensors") - reference_edit(run_adapter)).max()
    assert diff <= TOLERANCE[dtype], f"{dtype}: max difference {diff}"
    if dtype != "fp32":
        assert diff > 0  # the weights really were rounded
        info = inspect_adapter(out)
        assert info["dtype"] == [{"fp16": "float16", "bf16": "bfloat16"}[dtype]] and info["hash_ok"]


def with_run_adapter(pipe, adapter_path):
    """The same loaded base with the run's own adapter: any difference is the exported adapter's."""
    adapter, _ = load_adapter(adapter_path)
    return ImVideoEditPipeline.from_base(pipe, adapter)


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_diffusers_export_loads_and_edits_like_the_run(tmp_path, run_adapter, dtype):
    out = tmp_path / "pipe"
    export(ExportConfig(run_adapter, out, "diffusers", dtype))
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "ImVideoEditPipeline" and index["adapter"][1] == "ImVideoEditAdapter"
    pipe = ImVideoEditPipeline.from_pretrained(out)
    assert pipe.adapter.base_identity["name"] == "tiny-random"
    diff = np.abs(edit_with(pipe) - edit_with(with_run_adapter(pipe, run_adapter))).max()
    assert diff <= TOLERANCE[dtype], f"{dtype}: max difference {diff}"
    # Against the run's own in-memory base, the re-loaded base differs by float rounding only (diffusers
    # rebuilds the transformer's rotary tables on load), and fp16 rounds its weights too.
    diff = np.abs(edit_with(pipe) - reference_edit(run_adapter)).max()
    # measured: 7e-7 (fp32), 7e-5 (fp16), 6.8e-4 (bf16)
    assert diff <= {"fp32": 1e-5, "fp16": 1e-3, "bf16": 1e-2}[dtype], (
        f"{dtype}: max difference {diff} from the run's base"
    )


def test_diffusers_export_loads_through_diffusers_itself(tmp_path, run_adapter):
    from diffusers import DiffusionPipeline

    out = tmp_path / "pipe"
    export(ExportConfig(run_adapter, out, "diffusers"))
    pipe = DiffusionPipeline.from_pretrained(str(out), custom_pipeline="pipeline", trust_remote_code=True)
    assert type(pipe).__name__ == "ImVideoEditPipeline"
    assert np.array_equal(edit_with(pipe), edit_with(with_run_adapter(pipe, run_adapter)))


def test_link_base_references_the_base_instead_of_copying_it(tmp_path, run_adapter):
    base_dir = tmp_path / "base"
    save_base(build_tiny_random(), base_dir)
    out = tmp_path / "linked"
    export(ExportConfig(run_adapter, out, "diffusers", model=str(base_dir), link_base=True))
    assert (out / "transformer").is_symlink() and (out / "transformer").resolve() == (base_dir / "transformer")
    assert not (out / "adapter").is_symlink()
    pipe = ImVideoEditPipeline.from_pretrained(out)
    assert np.array_equal(edit_with(pipe), edit_with(with_run_adapter(pipe, run_adapter)))


def test_edit_uses_a_diffusers_export_as_model_and_adapter(tmp_path, run_adapter):
    from imvedit.models.loading import load_model

    out = tmp_path / "pipe"
    export(ExportConfig(run_adapter, out, "diffusers"))
    base, adapter = load_model(str(out), None, torch.device("cpu"), torch.float32)
    assert adapter is not None and base.fingerprint == adapter.base_identity["fingerprint"]


def damaged_copies(path, tmp_path):
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    raw = bytearray(data)
    raw[-3] ^= 0x01  # one bit of the last tensor
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(raw))
    return truncated, flipped


def test_cli_refuses_damaged_adapters_with_one_line_and_writes_nothing(tmp_path, run_adapter):
    truncated, flipped = damaged_copies(run_adapter, tmp_path)
    for bad, words in ((truncated, "not a readable safetensors"), (flipped, "corrupted")):
        for fmt in ("adapter", "diffusers"):
            out = tmp_path / f"out-{bad.stem}-{fmt}"
            r = imvedit("export", bad, "-o", out, "--format", fmt)
            assert r.returncode == 2, r.stderr
            assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1
            assert "Traceback" not in r.stderr
            assert not out.exists() and not any(p.name.startswith(f".{out.name}") for p in tmp_path.iterdir())
    r = imvedit("export", "--inspect", flipped)
    assert r.returncode == 1 and "MISMATCH" in r.stdout


def test_a_damaged_diffusers_export_is_refused_on_load(tmp_path, run_adapter):
    out = tmp_path / "pipe"
    export(ExportConfig(run_adapter, out, "diffusers"))
    weights = out / "adapter" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01
    weights.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match="corrupted"):
        ImVideoEditPipeline.from_pretrained(out)


def test_an_adapter_for_another_base_is_refused_everywhere(tmp_path, run_adapter, clip):
    other = build_tiny_random()
    other.transformer = type(other.transformer).from_config({**other.transformer.config, "num_layers": 3})
    other_dir = tmp_path / "other-base"
    save_base(other, other_dir)
    r = imvedit("export", run_adapter, "-o", tmp_path / "x", "--format", "diffusers", "--model", other_dir)
    assert r.returncode == 2 and "was trained for base 'tiny-random'" in r.stderr and not (tmp_path / "x").exists()
    r = imvedit("edit", "--model", other_dir, "--adapter", run_adapter, clip, "x", "-o", tmp_path / "o.mp4")
    assert r.returncode == 2 and "was trained for base" in r.stderr and not (tmp_path / "o.mp4").exists()
    adapter, _ = load_adapter(run_adapter)
    with pytest.raises(UsageError, match="was trained for base 'tiny-random'"):
        ImVideoEditPipeline.from_base(other, adapter)


def test_cli_export_and_inspect(tmp_path, run_adapter):
    r = imvedit("export", run_adapter.parent, "-o", tmp_path / "card", "--dtype", "bf16", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) | {"output": None} == {
        "output": None,
        "format": "adapter",
        "base": "tiny-random",
        "parameters": sum(p.numel() for p in load_adapter(run_adapter)[0].parameters()),
        "dtype": "bf16",
    }
    r = imvedit("export", "--inspect", tmp_path / "card", "--json")
    info = json.loads(r.stdout)
    assert r.returncode == 0 and info["hash_ok"] and info["dtype"] == ["bfloat16"] and info["training"] == {"steps": 7}
    r = imvedit("export", run_adapter, "-o", tmp_path / "card")
    assert r.returncode == 2 and "already exists" in r.stderr  # never overwritten without --overwrite
    r = imvedit("export", run_adapter, "-o", tmp_path / "p.safetensors", "--format", "diffusers")
    assert r.returncode == 2 and "writes a folder" in r.stderr
    r = imvedit("export", run_adapter, "-o", tmp_path, "--overwrite")
    assert r.returncode == 2 and "holds the input" in r.stderr and run_adapter.exists()
