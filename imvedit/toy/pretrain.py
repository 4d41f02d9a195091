"""Pretrain `shapes-wan`, the bundled toy base, from scratch on the shapes world (CPU-sized).

    python -m imvedit.toy.pretrain --config imvedit/toy/configs/pretrain.yaml --stage vae|text|transformer|decoder -o OUT_DIR
    python -m imvedit.toy.pretrain --config imvedit/toy/configs/pretrain-hard.yaml -o OUT_DIR   # the hard world's base

Stage 1 trains the VAE (`AutoencoderKLWan`) to reconstruct shapes-world clips and measures the
per-channel latent statistics Wan's pipelines normalise with. Stage 2 renders and encodes a fixed set
of captioned clips once, then trains the `WanTransformer3DModel` as a text-to-video model with flow
matching, on one-frame images and multi-frame clips, so its 3D attention learns the world's motion.
The refine phase (`refine:` in the config) then trains the VAE on longer clips and continues the
transformer on the refined VAE's latents, with fresh clips and a fresh schedule. `vae.edge_weight`
weights the VAE's loss towards colour edges (off in the bundled recipe; docs/toy.md has its effect).
The small UMT5 text encoder trains with the transformer (`text_encoder.train`): kept at its random
initialisation it blurred word identity enough that the base never learned to draw the named shapes. With
`text_encoder.pretrain` it instead trains alone first, on captions and instructions (`--stage text`,
pretrain_text.py), and stays frozen from then on, as a real Wan's encoder does.
`world:` in the config picks the shapes world (`hard`, the default, or `simple`, imvedit/toy/world.py), and
`vae.frame_independent` builds a VAE whose latent of a frame does not depend on the frames before it
(`bundle.zero_past_taps`), trained on single frames only. `--stage vae` keeps a checkpoint in OUT_DIR
(`checkpoint-vae.pt`, every `vae.checkpoint_every` steps) and resumes from it when run again; with
`vae.report_clips` it then measures the codec on held-out clips (`codec_report`, into pretrain_report.json).
`--stage transformer` keeps and resumes from `checkpoint-transformer.pt` the same way. With
`transformer.inpaint_fraction` that share of its steps is inpainting-like (Wan2.2's per-token timesteps): the
object's tokens at the clip's noise level, the rest less noisy, so the caption alone says what the object is.
With `transformer.high_shift_fraction` that share of each step's samples draw their noise level at
`transformer.high_shift` instead of `flow_shift`, which puts them near the top of the noise, where a caption
decides the object's colour (docs/toy.md, "A base taught at high noise").
`--stage decoder` (the `decoder:` section) trains the VAE's decoder alone: the latents, and the transformer trained on them, stay
valid, while decoded pixels get sharper. Stages chain through `--init`: each writes a whole base, the next
starts from it.
OUT_DIR gets the diffusers Wan layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import EMAModel

from ..errors import UsageError
from ..evaluation.metrics import psnr
from ..evaluation.toy_bench import BENCH_SEED_OFFSET
from ..models.bases import load_base, save_base
from ..models.wan import encode_text, normalize_latents
from ..training.flow_matching import sample_sigmas
from .bundle import build_untrained, load_config
from .pretrain_text import train_text_encoder
from .runlog import cosine, log_record, optimizer_step
from .world import DEFAULT_WORLD, EDIT_KINDS, GLOBAL_STYLES, caption, render, sample_example, sample_scene


def _to_tensor(video: np.ndarray) -> torch.Tensor:
    """uint8 (f, h, w, 3) -> float (3, f, h, w) in [-1, 1]."""
    return torch.from_numpy(video).float().div(127.5).sub(1.0).permute(3, 0, 1, 2)


def _world(config: dict) -> str:
    return config.get("world", DEFAULT_WORLD)


def _vae_batch(c: dict, step: int, seed: int, size: int, world: str) -> tuple[torch.Tensor, int]:
    """A step's clips (b, 3, f, h, w): sources and edited targets of fresh examples; and the next seed."""
    # Alternate single frames (cheap, most of the learning) and short clips (the causal temporal convs);
    # a frame-independent VAE sees single frames only, so the taps that read earlier frames stay zero.
    clip_step = step % 2 == 1 and not c.get("frame_independent")
    frames, count = (c["clip_frames"], c["batch_clips"]) if clip_step else (1, c["batch_images"])
    clips = []
    for _ in range(max(1, count // 2)):
        ex = sample_example(seed, frames=frames, size=size, world=world)  # every colour and style
        seed += 1
        clips += [_to_tensor(ex.source), _to_tensor(ex.target)]
    return torch.stack(clips), seed


def _vae_loss(vae, c: dict, x: torch.Tensor, encoder_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 + MSE per pixel (edge-weighted with `edge_weight`), a small KL, and the optional consistency term."""
    with torch.set_grad_enabled(encoder_grad):
        posterior = vae.encode(x).latent_dist
    # The posterior mean: a sampled posterior starts with unit variance and buries the signal for
    # hundreds of steps, and even a little fixed noise capped reconstructions near 20 dB here.
    z = posterior.mode()
    recon = vae.decode(z).sample
    kl = posterior.kl().mean() / z[0].numel()
    err = (recon - x).abs() + (recon - x) ** 2
    if c.get("edge_weight"):
        weight = 1.0 + c["edge_weight"] * _edges(x)
        err = weight * err / weight.mean()
    loss = err.mean() + c["kl_weight"] * kl
    if x.shape[2] > 1 and c.get("consistency_weight"):
        loss = loss + c["consistency_weight"] * _consistency(vae, x, z)
    return loss, recon


def _due(checkpoint: Path | None, step: int, c: dict) -> bool:
    return checkpoint is not None and (step == c["steps"] - 1 or (step + 1) % c.get("checkpoint_every", 500) == 0)


def _save_checkpoint(checkpoint: Path, state: dict) -> None:
    torch.save(state, f"{checkpoint}.tmp")
    Path(f"{checkpoint}.tmp").replace(checkpoint)  # a kill mid-write leaves the last good one


def train_vae(base, config: dict, log: Path | None = None, checkpoint: Path | None = None) -> dict:
    c, size, world = config["vae"], config["size"], _world(config)
    vae, stage = base.vae, "decoder" if c.get("decoder_only") else "vae"
    vae.train().requires_grad_(stage == "vae")
    # decoder_only: the encoder (so every latent, and a transformer trained on them) stays as it is
    trained = [vae.post_quant_conv, vae.decoder] if stage == "decoder" else [vae]
    params = [p for m in trained for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=c["lr"], weight_decay=0.0)  # no decay: zeroed taps stay zero
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, c["steps"], 100))
    seed = 1_000_000 * (config["seed"] + 1) + c.get("seed_offset", 0)
    first, elapsed = 0, 0.0
    if checkpoint is not None and checkpoint.exists():  # a killed run picks up where its last checkpoint left it
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        first, seed, elapsed = state["step"] + 1, state["seed"], state["seconds"]
        log_record(log, {"stage": stage, "resumed_at": first})
    start = time.time() - elapsed
    for step in range(first, c["steps"]):
        x, seed = _vae_batch(c, step, seed, size, world)
        loss, recon = _vae_loss(vae, c, x, encoder_grad=stage == "vae")
        optimizer_step(loss, opt, sched, params)
        if step % 100 == 0 or step == c["steps"] - 1:
            psnr = -10 * math.log10(F.mse_loss((recon + 1) / 2, (x + 1) / 2).item() + 1e-12)
            log_record(
                log,
                {
                    "stage": stage,
                    "step": step,
                    "loss": round(loss.item(), 5),
                    "psnr": round(psnr, 2),
                    "s": round(time.time() - start),
                },
            )
        if _due(checkpoint, step, c):
            state = {"vae": vae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
            _save_checkpoint(checkpoint, {**state, "step": step, "seed": seed, "seconds": time.time() - start})
    vae.eval().requires_grad_(False)

    # Wan normalises latents per channel with the VAE's own statistics: measure them.
    with torch.no_grad():
        zs = [
            vae.encode(
                _to_tensor(render(sample_scene(np.random.default_rng(7_000_000 + i), world=world), 5, size))[None]
            ).latent_dist.mode()
            for i in range(64)
        ]
        z = torch.cat(zs).transpose(0, 1).flatten(1)
        mean, std = z.mean(1), z.std(1)
    vae.register_to_config(
        latents_mean=[round(v, 5) for v in mean.tolist()], latents_std=[round(v, 5) for v in std.tolist()]
    )
    report = {"vae_seconds": round(time.time() - start, 1)}
    if c.get("report_clips"):
        report["codec"] = codec_report(vae, world, size, c["report_clips"])
        log_record(log, {"stage": stage, **report["codec"]})
    return report


@torch.no_grad()
def codec_report(vae, world: str, size: int = 64, clips_per_kind: int = 8, frames: int = 17) -> dict:
    """The VAE on held-out bench clips of `world` (the bench's own seeds and ceilings):

    - `psnr`: reconstruction of sources and edited targets, dB;
    - `edit_region_psnr_ceiling`: per edit kind, the edited target through the VAE inside the edit mask, the
      best an edit through this VAE can score there (what `eval --bench toy` reports as the ceiling);
    - `clip_vs_alone_rms`: each frame's latent in its clip against the same frame encoded alone, RMS in
      units of the latents' per-channel std (what an adapter trained on images needs to be near 0).
    """

    recon, region, rms = [], {}, []
    for kind in EDIT_KINDS:
        region[kind] = []
        for i in range(clips_per_kind):
            ex = sample_example(BENCH_SEED_OFFSET + i, frames=frames, size=size, kinds=(kind,), world=world)
            x = torch.stack([_to_tensor(ex.source), _to_tensor(ex.target)])
            z = vae.encode(x).latent_dist.mode()
            y = ((vae.decode(z).sample.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).numpy()
            recon += [psnr(y[0], ex.source), psnr(y[1], ex.target)]
            region[kind].append(psnr(y[1], ex.target, ex.mask))
            alone = vae.encode(x.transpose(1, 2).reshape(2 * frames, 3, 1, size, size)).latent_dist.mode()
            alone = alone.reshape(2, frames, *alone.shape[1:2], *alone.shape[3:]).transpose(1, 2)
            diff = normalize_latents(vae, z) - normalize_latents(vae, alone)
            rms.append(diff.pow(2).mean().sqrt().item())
    return {
        "psnr": round(float(np.mean(recon)), 2),
        "edit_region_psnr_ceiling": {k: round(float(np.mean(v)), 2) for k, v in region.items()},
        "clip_vs_alone_rms": round(float(np.mean(rms)), 5),
        "clip_vs_alone_rms_max": round(float(np.max(rms)), 5),
        "clips_per_kind": clips_per_kind,
        "frames": frames,
    }


def _edges(x: torch.Tensor) -> torch.Tensor:
    """1 on pixels within one pixel of a colour edge, else 0: (b, 1, f, h, w) for clips (b, 3, f, h, w).

    Objects cover a few percent of a frame, so a plain per-pixel loss is mostly background: with it the VAE
    kept stripes sharp and turned every shape into a blob of roughly its colour (13.9 dB inside recolour
    masks, 24.4 dB overall). For objects this small the pixels at edges are most of them; weighting those
    is one of the two changes of the sharper VAE measured in docs/toy.md (the other: a higher lr)."""
    d = x.new_zeros(x.shape[0], 1, *x.shape[2:])
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True)
    d[..., :, 1:] += dx
    d[..., :, :-1] += dx
    d[..., 1:, :] += dy
    d[..., :-1, :] += dy
    edge = (d > 0.1).float()  # x is in [-1, 1]; antialiased borders of flat shapes differ by much more
    # and the pixels beside them: a 3x3 dilation per frame
    return F.max_pool3d(edge, (1, 3, 3), stride=1, padding=(0, 1, 1))


def _consistency(vae, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """How far each frame's latent in the clip is from the same frame's latent encoded alone, relative to
    the latents' variance. An adapter trained on images only ever sees single-frame latents; the causal
    VAE otherwise gives later frames latents of its own (0.95 std away here), which it cannot edit."""
    b, c, f, h, w = x.shape
    with torch.no_grad():
        alone = vae.encode(x.transpose(1, 2).reshape(b * f, c, 1, h, w)).latent_dist.mode()
        alone = alone.reshape(b, f, -1, h // vae.config.scale_factor_spatial, w // vae.config.scale_factor_spatial)
        alone = alone.transpose(1, 2)
    return F.mse_loss(z, alone) / alone.var().clamp_min(1e-6)


def _style_scene(rng: np.random.Generator, world: str = DEFAULT_WORLD):
    # the simple world's "add" starts from an empty background: the base draws those too ("a green background")
    scene = sample_scene(rng, int(rng.random() >= 0.1), world) if world == "simple" else sample_scene(rng, world=world)
    if rng.random() < 0.2:
        scene.style = GLOBAL_STYLES[rng.integers(len(GLOBAL_STYLES))]
    return scene


def dataset_scenes(config: dict, n: int | None = None) -> list:
    """The scenes the transformer stage trains on (`transformer.dataset_clips` of them), from the config alone:
    a report can tell captions the base trained on from held-out ones without rendering anything."""
    count = config["transformer"]["dataset_clips"] if n is None else n
    rng = np.random.default_rng(config["seed"] + 12345)
    return [_style_scene(rng, _world(config)) for _ in range(count)]


@torch.no_grad()
def build_latent_dataset(base, config: dict, n: int, frames: int) -> tuple[torch.Tensor, list[str]]:
    """Render and encode `n` captioned clips once; training then samples them (and their first frames)."""
    every = dataset_scenes(config, n)
    latents, captions = [], []
    for start in range(0, n, 16):
        scenes = every[start : start + 16]
        x = torch.stack([_to_tensor(render(s, frames, config["size"])) for s in scenes])
        latents.append(normalize_latents(base.vae, base.vae.encode(x).latent_dist.mode()).half())
        captions += [caption(s) for s in scenes]
    return torch.cat(latents), captions


def object_tokens(config: dict, latents: torch.Tensor, frames: int, patch: tuple[int, int, int]) -> torch.Tensor:
    """Which transformer tokens each dataset clip's object covers, in any of its pixels: (clips, frames, h, w)
    bool, from rendering each of the `frames`-frame scenes with and without its objects."""
    n, _, latent_frames, lh, lw = latents.shape
    pt, ph, pw = patch
    size = config["size"]
    if latent_frames != frames or pt != 1 or lh % ph or lw % pw or size % (lw // pw):
        raise UsageError(
            "transformer.inpaint_fraction needs one latent frame per frame and a 1xNxN patch that tiles them.",
            "Use it with a VAE without temporal compression (pretrain.yaml's).",
        )
    grid, token = (lh // ph, lw // pw), size // (lw // pw)
    masks = []
    for scene in dataset_scenes(config, n):
        drawn = render(scene, frames, size) != render(dataclasses.replace(scene, objects=[]), frames, size)
        masks.append(drawn.any(-1).reshape(frames, grid[0], token, grid[1], token).any(axis=(2, 4)))
    return torch.from_numpy(np.stack(masks))


def _inpaint_sigmas(sigma: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-token noise levels (batch, frames, h, w) for an inpainting-like step: the object's tokens at the
    clip's sigma, the rest at a fraction of it drawn per clip. The object's place then shows while its colour
    and shape do not, so only the caption can say them: the base has to bind them to the object."""
    rest = sigma * torch.rand(len(sigma), generator=gen)
    return torch.where(mask, sigma.view(-1, 1, 1, 1), rest.view(-1, 1, 1, 1))


def train_transformer(base, config: dict, log: Path | None = None, checkpoint: Path | None = None) -> dict:
    c = config["transformer"]
    short, long = c["clip_frames"]
    start = time.time()
    latents, captions = build_latent_dataset(base, config, c["dataset_clips"], long)
    log_record(log, {"stage": "transformer", "dataset": len(captions), "encode_s": round(time.time() - start)})
    objects = None  # where each clip's object is, token by token, for inpainting-like steps
    if c.get("inpaint_fraction"):
        objects = object_tokens(config, latents, long, base.transformer.config.patch_size)
    train_text = bool(config["text_encoder"].get("train", False))
    model, text_encoder = base.transformer, base.text_encoder
    model.train().requires_grad_(True)
    text_encoder.train(train_text).requires_grad_(train_text)
    trained = {"transformer": model, **({"text_encoder": text_encoder} if train_text else {})}
    params = [p for m in trained.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=c["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, c["steps"], 200))
    gen = torch.Generator().manual_seed(config["seed"] + 1)
    # An average of the weights over the last ~1/(1 - decay) steps: what the stage saves, when asked for
    ema = EMAModel(params, decay=c["ema_decay"], use_ema_warmup=True) if c.get("ema_decay") else None
    losses, first, elapsed = [], 0, 0.0
    if checkpoint is not None and checkpoint.exists():  # resume: same dataset (seeded), same sample stream
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for name, module in trained.items():
            module.load_state_dict(state[name])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["generator"])
        losses, first, elapsed = state["losses"], state["step"] + 1, state["seconds"]
        log_record(log, {"stage": "transformer", "resumed_at": first})
    start = time.time() - elapsed
    for step in range(first, c["steps"]):
        loss = _transformer_step(base, c, latents, captions, gen, train_text, short, objects)
        optimizer_step(loss, opt, sched, params)
        if ema is not None:
            ema.step(params)
        losses = [*losses[-199:], loss.item()]
        if step % 100 == 0 or step == c["steps"] - 1:
            mean = sum(losses[-100:]) / len(losses[-100:])
            log_record(
                log, {"stage": "transformer", "step": step, "loss": round(mean, 5), "s": round(time.time() - start)}
            )
        if _due(checkpoint, step, c):
            state = {name: module.state_dict() for name, module in trained.items()}
            state.update(opt=opt.state_dict(), sched=sched.state_dict(), generator=gen.get_state())
            state.update({"ema": ema.state_dict()} if ema is not None else {})
            _save_checkpoint(checkpoint, {**state, "losses": losses, "step": step, "seconds": time.time() - start})
    if ema is not None:
        ema.copy_to(params)
    model.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    # the base samples with the noise levels it trained on (a base from --init keeps its own scheduler otherwise)
    base.scheduler = FlowMatchEulerDiscreteScheduler.from_config(base.scheduler.config, shift=c["flow_shift"])
    return {
        "transformer_seconds": round(time.time() - start, 1),
        "transformer_final_loss": sum(losses) / max(1, len(losses)),
    }


def _transformer_step(
    base, c: dict, latents, captions, gen, train_text: bool, short: int, objects: torch.Tensor | None = None
) -> torch.Tensor:
    """One flow-matching text-to-video step on a batch of the encoded clips (or their first frames); with
    `objects` (`object_tokens`), `inpaint_fraction` of the steps are inpainting-like."""
    idx = torch.randint(len(captions), (c["batch_size"],), generator=gen)
    x0 = latents[idx].float()
    if torch.rand(1, generator=gen).item() < c["image_fraction"]:
        x0 = x0[:, :, :short]  # the first latent frame depends on the first frame only (causal VAE)
    drop = torch.rand(len(idx), generator=gen) < c["text_dropout"]
    prompts = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist(), strict=True)]
    with torch.set_grad_enabled(train_text):
        text, _ = encode_text(base.tokenizer, base.text_encoder, prompts)
    sigma = _draw_sigmas(c, len(idx), gen)
    noise = torch.randn(x0.shape, generator=gen)
    s, timestep = sigma.view(-1, 1, 1, 1, 1), sigma * 1000
    if objects is not None and torch.rand(1, generator=gen).item() < c["inpaint_fraction"]:
        per_token = _inpaint_sigmas(sigma, objects[idx][:, : x0.shape[2]], gen)
        _, ph, pw = base.transformer.config.patch_size
        s = per_token.repeat_interleave(ph, 2).repeat_interleave(pw, 3)[:, None]
        timestep = per_token.flatten(1) * 1000  # Wan2.2's per-token timesteps
    pred = base.transformer(((1 - s) * x0 + s * noise), timestep, text, return_dict=False)[0]
    return F.mse_loss(pred, noise - x0)


def _draw_sigmas(c: dict, n: int, gen: torch.Generator) -> torch.Tensor:
    """Noise levels as Wan's shift draws them: at `flow_shift`, or for a `high_shift_fraction` of the samples
    at `high_shift`, which puts them in the top of the noise where a caption decides the object's colour."""
    if c.get("high_shift_fraction") and "high_shift" not in c:
        raise UsageError(
            "transformer.high_shift_fraction needs transformer.high_shift.", "Add high_shift: 12.0 (pretrain.yaml's)."
        )
    mix = (c.get("high_shift_fraction") or 0.0, c.get("high_shift", 1.0))
    return sample_sigmas(n, float(c["flow_shift"]), gen, mix=mix)


def refine(base, config: dict, log: Path | None = None) -> dict:
    """Phase 2: the `refine` section's overrides of the VAE and transformer settings, trained in turn."""
    r = config["refine"]
    phase = {**config, "seed": r.get("seed", config["seed"] + 1)}
    vae = train_vae(base, {**phase, "vae": {**config["vae"], **r.get("vae", {})}}, log)
    transformer = train_transformer(
        base, {**phase, "transformer": {**config["transformer"], **r.get("transformer", {})}}, log
    )
    return {f"refine_{k}": v for k, v in {**vae, **transformer}.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="pretraining config (default: the bundled one)")
    parser.add_argument("-o", "--output", required=True, help="folder to write the diffusers-format base to")
    stages = ("vae", "text", "transformer", "decoder", "refine", "all")
    parser.add_argument("--stage", choices=stages, default="all")
    parser.add_argument("--init", default=None, help="a base folder to start from (e.g. the VAE stage's output)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--dtype", choices=("fp16", "fp32"), default="fp16", help="weights as saved (the bundle ships fp16)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config) if args.config else load_config()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "pretrain_log.jsonl"
    if args.init:
        base = load_base(args.init, torch_dtype=torch.float32)
        base.name = "shapes-wan"
    else:
        base = build_untrained(config)
    report = {}
    if args.stage in ("vae", "all"):
        report.update(train_vae(base, config, log, checkpoint=out / "checkpoint-vae.pt"))
    if args.stage in ("text", "all") and config["text_encoder"].get("pretrain"):
        report.update(train_text_encoder(base, config, log))
    if args.stage in ("transformer", "all"):
        report.update(train_transformer(base, config, log, checkpoint=out / "checkpoint-transformer.pt"))
    if args.stage in ("decoder", "all") and config.get("decoder"):
        decoder = {**config, "vae": {**config["vae"], **config["decoder"], "decoder_only": True}}
        report.update(
            {f"decoder_{k}": v for k, v in train_vae(base, decoder, log, out / "checkpoint-decoder.pt").items()}
        )
    if args.stage in ("refine", "all") and config.get("refine"):
        report.update(refine(base, config, log))
    if args.dtype == "fp16":  # half the bytes; loading upcasts to the dtype asked for
        for m in (base.transformer, base.vae, base.text_encoder):
            m.to(torch.float16)
    save_base(base, out)
    (out / "pretrain_report.json").write_text(json.dumps({**report, "config": config}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
