"""The toy base's staged pretraining on the simple world: the text encoder's own stage, and a resumable
transformer stage."""

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import run_killed_then_resumed

import imvedit.toy.pretrain as pretrain
from imvedit.errors import UsageError
from imvedit.models.bases import load_base
from imvedit.toy.bundle import CONFIGS, load_config
from imvedit.toy.pretrain_text import (
    HEADS,
    caption_labels,
    held_out,
    instruction_labels,
    probe,
    sample_texts,
)
from imvedit.toy.world import Background, Edit, Obj, Scene, caption, render, sample_edit, sample_scene
from imvedit.training.flow_matching import sample_sigmas


def _scene(shape="circle", color="blue", bg="green"):
    return Scene(Background("flat", bg, bg), [Obj(shape, color, 0.5, 0.5, 0.0, 0.0, 0.6)], world="simple")


def _edit(kind: str, seed: int = 0) -> Edit:
    rng = np.random.default_rng(seed)
    scene = _scene() if kind != "add" else Scene(Background("flat", "green", "green"), [], world="simple")
    return sample_edit(scene, rng, kind)


def test_an_instruction_is_labelled_with_what_it_fixes_of_the_edited_scene():
    recolor = instruction_labels(_edit("recolor"))
    assert recolor["kind"] == "recolor" and recolor["shape"] == "circle"
    assert recolor["color"] not in ("blue", "green") and recolor["color"] in _edit("recolor").instruction
    replace = instruction_labels(_edit("replace"))
    assert "color" not in replace and replace["shape"] in ("square", "triangle")
    assert instruction_labels(_edit("remove")) == {"kind": "remove", "color": "none", "shape": "none"}
    add = _edit("add")
    added = instruction_labels(add)
    assert add.instruction.endswith(added["place"]) and f"{added['color']} {added['shape']}" in add.instruction
    background = instruction_labels(_edit("background"))
    assert background["background"] == background["background2"] != "green"
    style = _edit("global")
    assert instruction_labels(style)["style"] == style.target.style
    assert set(caption_labels(_scene())) == {"kind", "color", "shape", "background", "background2", "style"}
    assert caption_labels(_scene())["color"] == "blue"
    empty = sample_scene(np.random.default_rng(1), 0, world="simple")
    assert caption_labels(empty)["shape"] == "none"
    for labels in (recolor, replace, added, background, caption_labels(empty)):
        assert all(value in HEADS[head] for head, value in labels.items())


def test_held_out_phrasings_are_a_fixed_fifth_never_in_the_training_stream():
    rng = np.random.default_rng(0)
    train, _ = sample_texts(rng, 400)
    held, labels = sample_texts(rng, 100, held=True, instructions_only=True)
    assert not any(held_out(t) for t in train) and all(held_out(t) for t in held)
    assert all(lab["kind"] != "caption" for lab in labels)
    any_texts, _ = sample_texts(np.random.default_rng(1), 2000, held=None)
    share = np.mean([held_out(t) for t in set(any_texts)])
    assert 0.1 < share < 0.3


def _small_config(tmp_path):
    config = load_config(CONFIGS / "pretrain.yaml")
    config["size"] = 32
    config["vae"].update(base_dim=16, steps=1, batch_images=2, report_clips=0)
    config["text_encoder"]["pretrain"].update(steps=6, batch_size=16, probe_texts=[200, 100])
    config["transformer"].update(steps=4, dataset_clips=4, batch_size=2, checkpoint_every=1, clip_frames=[1, 3],
                                 num_attention_heads=2, attention_head_dim=16, ffn_dim=64)  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    return config, ["--config", str(path), "--dtype", "fp32"]


def test_text_stage_trains_then_freezes_the_encoder_and_reports_a_held_out_probe(tmp_path):
    config, args = _small_config(tmp_path)
    assert config["text_encoder"]["train"] is False  # frozen beside the transformer after its own stage
    pretrain.main([*args, "--stage", "vae", "-o", str(tmp_path / "vae")])
    pretrain.main([*args, "--stage", "text", "--init", str(tmp_path / "vae"), "-o", str(tmp_path / "text")])
    before = load_base(str(tmp_path / "vae"), torch_dtype=torch.float32).text_encoder.state_dict()
    after = load_base(str(tmp_path / "text"), torch_dtype=torch.float32)
    changed = [k for k, v in after.text_encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # it trained
    report = json.loads((tmp_path / "text" / "pretrain_report.json").read_text())["text_probe"]
    assert 0 <= report["kind"] <= 1 and 0 <= report["new_attribute"] <= 1
    assert set(report["per_head"]) == set(HEADS) and report["held_out_instructions"] == 100
    assert probe(after, config["seed"], 200, 100) == report  # the probe is a function of the saved encoder


def test_transformer_stage_resumes_to_the_same_weights_after_a_kill(tmp_path, monkeypatch):
    """...and the base it writes samples with the noise shift it trained with, not its --init base's."""
    config, args = _small_config(tmp_path)
    pretrain.main([*args, "--stage", "vae", "-o", str(tmp_path / "vae")])
    scheduler = tmp_path / "vae" / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "shift": 7.0}))
    run = [*args, "--stage", "transformer", "--init", str(tmp_path / "vae"), "-o"]
    pretrain.main([*run, str(tmp_path / "whole")])

    # killed during step 2 (one call per step), then run again
    run_killed_then_resumed(
        monkeypatch, pretrain, "_transformer_step", 3, lambda: pretrain.main([*run, str(tmp_path / "resumed")])
    )
    assert '"resumed_at": 2' in (tmp_path / "resumed" / "pretrain_log.jsonl").read_text()
    whole = load_base(str(tmp_path / "whole"), torch_dtype=torch.float32).transformer.state_dict()
    resumed = load_base(str(tmp_path / "resumed"), torch_dtype=torch.float32).transformer.state_dict()
    for name, a in whole.items():
        assert torch.allclose(a, resumed[name], atol=1e-6), name
    shifts = {json.loads((tmp_path / d / "scheduler" / "scheduler_config.json").read_text())["shift"]
              for d in ("whole", "resumed")}  # fmt: skip
    assert shifts == {config["transformer"]["flow_shift"]} != {7.0}


def test_binding_reads_the_colour_and_shape_of_a_rendered_object_back():
    """The base's binding report reads objects off frames: on frames the world renders it must be exact."""
    from imvedit.toy.reading import read_object
    from imvedit.toy.world import SIMPLE_SHAPES, render

    rng = np.random.default_rng(0)
    read = []
    for _ in range(24):
        scene = sample_scene(rng, 1, world="simple")
        for frame in render(scene, 3, 64)[::2]:
            got = read_object(frame, scene)
            read.append((got["color"], got["shape"]) == (scene.objects[0].color, scene.objects[0].shape))
            assert got["iou"] > 0.8
    assert all(read)
    assert {s.objects[0].shape for s in [sample_scene(rng, 1, world="simple") for _ in range(30)]} == set(SIMPLE_SHAPES)
    empty = sample_scene(rng, 0, world="simple")
    assert read_object(render(empty, 1, 64)[0], empty)["shape"] is None  # nothing drawn, nothing read


def test_decoder_stage_trains_the_decoder_and_leaves_every_latent_as_it_was(tmp_path):
    config, args = _small_config(tmp_path)
    config["decoder"].update(steps=3, batch_images=2, report_clips=0)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    pretrain.main([*args, "--stage", "vae", "-o", str(tmp_path / "vae")])
    pretrain.main([*args, "--stage", "decoder", "--init", str(tmp_path / "vae"), "-o", str(tmp_path / "dec")])
    before = load_base(str(tmp_path / "vae"), torch_dtype=torch.float32).vae
    after = load_base(str(tmp_path / "dec"), torch_dtype=torch.float32).vae
    b, a = before.state_dict(), after.state_dict()
    changed = {k.split(".")[0] for k in a if not torch.equal(a[k], b[k])}
    assert changed == {"decoder", "post_quant_conv"} or changed == {"decoder"}
    x = torch.rand(1, 3, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(before.encode(x).latent_dist.mode(), after.encode(x).latent_dist.mode())
    assert after.config.latents_mean == before.config.latents_mean  # the same statistics, measured again


def test_binding_skips_every_caption_the_transformer_stage_trained_on(tmp_path, monkeypatch, capsys):
    import imvedit.toy.binding as binding

    config, args = _small_config(tmp_path)
    pretrain.main([*args, "--stage", "vae", "-o", str(tmp_path / "vae")])
    base = load_base(str(tmp_path / "vae"), torch_dtype=torch.float32)
    _, trained = pretrain.build_latent_dataset(base, config, config["transformer"]["dataset_clips"], 1)
    # --trained draws exactly those captions instead, in the stage's order, from the real pipeline
    scenes = pretrain.dataset_scenes(config)
    drawn = binding.binding_report(base, samples=2, frames=1, steps=1, scenes=scenes)
    assert [r["caption"] for r in drawn["rows"]] == [caption(s) for s in scenes if s.objects][:2]
    seen = {}

    def fake(base, samples, steps, exclude, scenes):
        seen.update(exclude=exclude, scenes=scenes)
        return {"samples": samples}

    monkeypatch.setattr(binding, "binding_report", fake)
    capsys.readouterr()  # what pretraining printed
    binding.main([str(tmp_path / "vae"), "--config", args[1], "--json"])
    assert seen["exclude"] == set(trained) and len(trained) == config["transformer"]["dataset_clips"]
    assert seen["scenes"] is None and json.loads(capsys.readouterr().out)["held_out"] is True
    binding.main([str(tmp_path / "vae"), "--config", args[1], "--trained", "--json"])
    assert seen["exclude"] is None and [caption(s) for s in seen["scenes"]] == trained
    report = json.loads(capsys.readouterr().out)
    assert report["held_out"] is False and report["trained_captions"] is True
    with pytest.raises(SystemExit):
        binding.main([str(tmp_path / "vae"), "--trained"])  # which captions it was taught needs the config


def test_transformer_stage_saves_its_weight_average_and_resumes_it(tmp_path, monkeypatch):
    """With `transformer.ema_decay` the stage saves the moving average of its weights (not the last step's),
    and a killed run resumes the average too, to the same weights."""
    config, args = _small_config(tmp_path)
    pretrain.main([*args, "--stage", "vae", "-o", str(tmp_path / "vae")])
    plain = [*args, "--stage", "transformer", "--init", str(tmp_path / "vae"), "-o"]
    pretrain.main([*plain, str(tmp_path / "plain")])
    config["transformer"]["ema_decay"] = 0.9
    (tmp_path / "ema.yaml").write_text(yaml.safe_dump(config))
    run = ["--config", str(tmp_path / "ema.yaml"), *plain[2:]]  # the same run, the config with the average
    pretrain.main([*run, str(tmp_path / "whole")])
    run_killed_then_resumed(
        monkeypatch, pretrain, "_transformer_step", 3, lambda: pretrain.main([*run, str(tmp_path / "resumed")])
    )
    weights = {d: load_base(str(tmp_path / d), torch_dtype=torch.float32).transformer.state_dict()
               for d in ("plain", "whole", "resumed")}  # fmt: skip
    for name, a in weights["whole"].items():
        assert torch.allclose(a, weights["resumed"][name], atol=1e-6), name
    assert any(not torch.allclose(a, weights["plain"][n]) for n, a in weights["whole"].items())


def test_inpainting_steps_noise_the_objects_tokens_at_the_clips_sigma_and_the_rest_less(tmp_path, monkeypatch):
    """`transformer.inpaint_fraction`: the object's tokens are found by rendering each scene without it, and
    an inpainting-like step gives the transformer per-token timesteps, the object's at the clip's sigma."""
    config, args = _small_config(tmp_path)
    pretrain.main([*args, "--stage", "vae", "-o", str(tmp_path / "vae")])
    base = load_base(str(tmp_path / "vae"), torch_dtype=torch.float32)
    latents, _ = pretrain.build_latent_dataset(base, config, 4, 5)
    masks = pretrain.object_tokens(config, latents, 5, base.transformer.config.patch_size)
    scenes = pretrain.dataset_scenes(config, 4)
    assert masks.shape == (4, 5, 4, 4)  # 32 px, 8 px a token
    with pytest.raises(UsageError, match="one latent frame per frame"):
        pretrain.object_tokens(config, latents, 9, base.transformer.config.patch_size)
    for scene, mask in zip(scenes, masks, strict=True):
        assert mask.any() == bool(scene.objects) and not mask.all()  # a large object, never the whole frame
        first = render(scene, 1, 32)[0] != render(Scene(scene.background, [], scene.style, "simple"), 1, 32)[0]
        assert torch.equal(mask[0], torch.from_numpy(first.any(-1).reshape(4, 8, 4, 8).any(axis=(1, 3))))
    seen = []
    forward = base.transformer.forward
    monkeypatch.setattr(base.transformer, "forward", lambda x, t, *a, **k: seen.append(t) or forward(x, t, *a, **k))
    c = {**config["transformer"], "inpaint_fraction": 1.0, "batch_size": 4}
    gen = torch.Generator().manual_seed(0)
    loss = pretrain._transformer_step(base, c, latents, [""] * 4, gen, False, 1, masks)
    t = seen[-1]
    assert torch.isfinite(loss) and t.ndim == 2  # one timestep per token
    idx = torch.randint(4, (4,), generator=torch.Generator().manual_seed(0))  # the step's first draw: its clips
    tokens = masks[idx, : t.shape[1] // 16].flatten(1)
    for row, inside in zip(t, tokens, strict=True):
        if inside.any():
            assert torch.unique(row[inside]).numel() == 1 and (row[~inside] <= row[inside][0]).all()


def test_a_high_shift_share_puts_that_share_of_noise_levels_near_the_top_and_leaves_the_rest_as_they_were():
    """`transformer.high_shift_fraction`: that share of a step's samples draw sigma at `high_shift`; without it
    the draws (and so the bundled recipe's stream) are exactly the plain shift's."""
    plain = {"flow_shift": 1.0}
    a = pretrain._draw_sigmas(plain, 4000, torch.Generator().manual_seed(3))
    b = pretrain._draw_sigmas({**plain, "high_shift_fraction": 0.0, "high_shift": 12.0}, 4000,
                              torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.equal(a, b)
    # off, the draw is the one the adapter's training makes (and the stage made before the option existed)
    three = pretrain._draw_sigmas({"flow_shift": 3.0}, 4000, torch.Generator().manual_seed(3))
    assert torch.equal(three, sample_sigmas(4000, 3.0, torch.Generator().manual_seed(3)))
    mixed = pretrain._draw_sigmas({**plain, "high_shift_fraction": 0.5, "high_shift": 12.0}, 4000,
                                  torch.Generator().manual_seed(3))  # fmt: skip
    top = lambda s: (s > 0.9).float().mean().item()  # noqa: E731
    # sigma uniform puts a tenth above 0.9; shift 12 puts 4/7 there (sigma > 0.9 for u > 0.9 / 2.1)
    assert abs(top(a) - 0.10) < 0.02
    assert abs(top(mixed) - (0.10 + 0.57) / 2) < 0.03
    assert ((mixed >= 0) & (mixed <= 1)).all()
    with pytest.raises(UsageError, match="needs transformer.high_shift"):
        pretrain._draw_sigmas({**plain, "high_shift_fraction": 0.5}, 4, torch.Generator())
