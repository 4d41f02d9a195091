"""The baselines as architectures of the same core (docs/method.md, "Baselines"), on tiny real models."""

import json

import pytest
import torch
from conftest import randomize_adapter
from test_model import inputs
from typer.testing import CliRunner

from imvedit.cli.main import app
from imvedit.data.pairs import PairsDataset
from imvedit.errors import UsageError
from imvedit.models.adapter_file import load_adapter, save_adapter
from imvedit.models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer
from imvedit.training.flow_matching import flow_matching_loss
from imvedit.training.train import TrainConfig

runner = CliRunner()
T = torch.tensor([700.0])


def _model(base, arch, **switches):
    return ImVideoEditTransformer(base, ImVideoEditAdapter.for_base(base, arch=arch, **switches))


@pytest.mark.parametrize(
    "arch,switches",
    [("vifeedit", {}), ("concat", {}), ("imvedit", {"source_stream": "two_way"}),
     ("imvedit", {"source_stream": "two_way", "every_k_blocks": 2})],
)  # fmt: skip
def test_every_trained_arch_starts_as_the_base_and_its_weights_are_in_the_path(tiny_base, arch, switches):
    base = tiny_base.transformer
    x, src, text, gate_text = inputs(frames=3)
    reference = base(x, T, text, return_dict=False)[0]
    model = _model(base, arch, **switches)
    features = model.encode_source(src, torch.zeros(1, 7, 16))
    # two_way: the source half has its own 3D attention at its own timestep, so the target half is the base's
    assert (model(x, T, text, features, gate_text) - reference).abs().max().item() <= 1e-5
    randomize_adapter(model.adapter)
    edited = model(x, T, text, features, gate_text)
    assert (edited - reference).abs().max().item() > 1e-3
    other = model.encode_source(src.flip(-1), torch.zeros(1, 7, 16))  # ...and the source matters
    assert (model(x, T, text, other, gate_text) - edited).abs().max().item() > 1e-4
    model.detach()
    assert torch.equal(base(x, T, text, return_dict=False)[0], reference)


def test_per_frame_is_the_adapter_on_each_frame_alone(tiny_base):
    base = tiny_base.transformer
    x, src, text, gate_text = inputs(frames=3)
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(base))
    model = ImVideoEditTransformer(base, adapter)
    expected = []
    for f in range(3):  # one-frame videos, as the adapter was trained
        feats = model.encode_source(src[:, :, f : f + 1], torch.zeros(1, 7, 16))
        expected.append(model(x[:, :, f : f + 1], T, text, feats, gate_text))
    model.detach()
    adapter.register_to_config(arch="per-frame")
    per_frame = ImVideoEditTransformer(base, adapter)
    feats = per_frame.encode_source(src, torch.zeros(1, 7, 16))
    out = per_frame(x, T, text, feats, gate_text, collect_gates=True)
    assert torch.allclose(out, torch.cat(expected, dim=2), atol=1e-5)
    assert per_frame.last_gate_map().shape == (1, 3, 4, 4)
    # ...and it differs from running the whole clip with its 3D attention
    per_frame.detach()
    whole = ImVideoEditTransformer(base, adapter.register_to_config(arch="imvedit") or adapter)
    assert (whole(x, T, text, whole.encode_source(src, torch.zeros(1, 7, 16)), gate_text) - out).abs().max() > 1e-4


def test_vifeedit_costs_two_halves_of_tokens_and_trains(tiny_base):
    base = tiny_base.transformer
    model = _model(base, "vifeedit")
    assert model.adapter.config.gate == "none" and not model.adapter.config.aligned_difference
    seen = []
    handle = base.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    x, src, text, gate_text = inputs(frames=3)
    model(x, T, text, model.encode_source(src, torch.zeros(1, 7, 16)), gate_text)
    handle.remove()
    assert seen == [2 * 3 * 4 * 4]  # target and source tokens, every step
    g = torch.Generator().manual_seed(0)
    loss = flow_matching_loss(
        model, source_latents=src, target_latents=x, text=text, gate_text=gate_text,
        empty_text=torch.zeros(1, 7, 16), empty_gate_text=torch.zeros(1, 16), generator=g,
    )  # fmt: skip
    loss.backward()
    assert all(p.grad is not None for p in model.adapter.parameters())
    assert not any(p.grad is not None for p in base.parameters())


@pytest.mark.parametrize("arch", ["vifeedit", "concat"])
def test_an_adapter_of_any_arch_round_trips_through_its_file(tiny_base, tmp_path, arch):
    adapter = randomize_adapter(ImVideoEditAdapter.for_base(tiny_base.transformer, arch=arch))
    path = save_adapter(adapter, tmp_path / "a.safetensors", tiny_base.identity)
    loaded, _ = load_adapter(path, tiny_base.fingerprint)
    assert dict(loaded.config) == dict(adapter.config) and loaded.config.arch == arch
    for (k, a), (k2, b) in zip(adapter.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


def test_bad_arch_choices_are_one_line_errors(tmp_path):
    with pytest.raises(UsageError, match="arch"):
        ImVideoEditAdapter(num_layers=2, dim=8, text_dim=8, ffn_dim=8, arch="lora")
    with pytest.raises(UsageError, match="two_way"):
        ImVideoEditAdapter(num_layers=2, dim=8, text_dim=8, ffn_dim=8, arch="concat", source_stream="two_way")
    (tmp_path / "p").mkdir()
    with pytest.raises(UsageError, match="no training"):
        TrainConfig(pairs_dir=tmp_path / "p", output=tmp_path / "o", arch="sdedit").validate()
    with pytest.raises(UsageError, match="needs a gate"):
        TrainConfig(pairs_dir=tmp_path / "p", output=tmp_path / "o", arch="concat", gate_supervision=1.0).validate()


def test_video_pairs_train_concat_and_every_arch_edits_through_the_cli(tmp_path):
    pairs = tmp_path / "clips"
    r = runner.invoke(app, ["prepare", "toy", "-o", str(pairs), "--limit", "3", "--toy-frames", "5"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (pairs / "manifest.jsonl").read_text().splitlines()]
    assert all(row["frames"] == 5 and row["height"] == 64 for row in rows)
    item = PairsDataset(pairs)[0]
    assert item["source"].shape == (3, 5, 64, 64) and item["target"].shape == (3, 5, 64, 64)
    assert (item["source"] != item["target"]).any(dim=0).any(dim=(1, 2)).all()  # the edit is in every frame
    r = runner.invoke(app, ["prepare", "toy", "-o", str(tmp_path / "bad"), "--limit", "2", "--toy-frames", "4"])
    assert r.exit_code == 2 and "4k + 1" in r.output and not (tmp_path / "bad").exists()

    run = tmp_path / "run-concat"
    r = runner.invoke(app, ["train", str(pairs), "-o", str(run), "--arch", "concat", "--max-steps", "2", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["pairs_seen"] == 2
    for extra in ([], ["--arch", "sdedit", "--model", "tiny-random"]):
        args = ["eval", "--bench", "toy", "--clips", "1", "--frames", "5", "--size", "32", "--steps", "1", "--json"]
        r = runner.invoke(app, args + (extra or ["--adapter", str(run)]))
        assert r.exit_code == 0, r.output
        result = json.loads(r.output.strip().splitlines()[-1])
        assert result["arch"] == ("sdedit" if extra else "concat") and result["overall"]["edit_psnr"] > 0
        assert result["edit_seconds_per_frame"] > 0
    r = runner.invoke(app, ["eval", "--bench", "toy", "--adapter", str(run), "--arch", "per-frame", "--clips", "1"])
    assert r.exit_code == 2 and "per-frame" in r.output
    r = runner.invoke(app, ["train", str(pairs), "-o", str(tmp_path / "x"), "--arch", "sdedit"])
    assert r.exit_code == 2 and "no training" in r.output and not (tmp_path / "x").exists()
