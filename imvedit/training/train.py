"""`imvedit train`: fit an ImVideoEdit adapter on prepared image pairs; the base stays frozen.

A loop to read top to bottom: load the base, build the adapter, then for each batch encode the pair
with the frozen VAE and text encoder (or read both from the folder's cache, made by `imvedit prepare
--cache` for this base, and then load neither), take one flow-matching step on the adapter alone, and
at the end write the adapter file, the resolved config and a summary into the run folder.

A base with two experts (Wan2.2-A14B) gets one adapter per expert (`--expert both`, the default), or one
(`--expert high|low`). Each step draws its expert as the schedule would (`pick_expert`) and trains that
expert's adapter on sigmas from its own part of the schedule; the adapters share the loop and the
optimiser, whose state (AdamW's moments) is per parameter, so each adapter keeps its own and a step
updates only the expert it ran (the other's gradients are None, which AdamW skips). Each adapter has its
own EMA and its own file in every checkpoint; the run folder gets a pair of files that name each other.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers.training_utils import EMAModel

from .. import __version__
from ..data.cache import CachedPairs, cache_matches, read_cache_meta
from ..data.dataset import BucketBatchSampler, PairsDataset
from ..errors import TrainingError, UsageError
from ..fsutil import atomic_path, staged_dir
from ..models.adapter_file import save_adapter, save_adapter_pair, second_name
from ..models.bases import COMPONENTS, EXPERTS, expert_count, load_base
from ..models.imvedit import ARCH_DEFAULTS, ARCHS, ImVideoEditAdapter, ImVideoEditTransformer
from ..pipeline.pipeline_imvedit import encode_text, normalize_latents
from .flow_matching import FULL_RANGE, expert_sigma_range, flow_matching_loss, pick_expert

TEXT_CHOICES = ("instruction", "description", "mixed")
OPTIMIZERS = ("adamw", "adamw-fused", "adamw8bit")
EXPERT_CHOICES = ("high", "low", "both")
ADAPTER_FILE = "adapter.safetensors"
EMA_FILE = "adapter_ema.safetensors"
# Each expert's file in the run folder and in checkpoints: the one transformer's (or the high-noise expert's)
# adapter is adapter.safetensors, the low-noise expert's adapter_2.safetensors.
FILES = {"high": ADAPTER_FILE, "low": second_name(ADAPTER_FILE)}
EMA_FILES = {"high": EMA_FILE, "low": second_name(EMA_FILE)}


@dataclass
class TrainConfig:
    pairs_dir: Path  # a folder written by `imvedit prepare`
    output: Path  # the run folder: adapter.safetensors, config.yaml, log.jsonl, summary.json
    model: str = "tiny-random"  # the frozen base: a diffusers-format Wan folder, a hub id or a builtin name
    epochs: int = 5  # passes over the pairs (the paper trains 5)
    max_steps: int | None = None  # stop after this many optimiser steps, whatever the epochs
    batch_size: int = 1  # pairs per step (pairs of one size are batched together)
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    # "adamw" (torch, multi-tensor), "adamw-fused" (torch's fused kernel, the same update rule), or
    # "adamw8bit" (bitsandbytes' 8-bit states: a quarter of the optimiser memory; needs bitsandbytes)
    optimizer: str = "adamw"
    seed: int = 0  # fixes the adapter's init, the data order, noise, sigmas and dropout
    text_dropout: float = 0.1  # probability of training a pair with the empty prompt (text guidance)
    source_dropout: float = 0.05  # probability of training a pair without its source (source guidance)
    flow_shift: float = 3.0  # sigma sampling shift, as Wan's scheduler
    # Which text feeds the base's cross-attention and which the gate: "instruction", "description" (the
    # pair's caption of the edited image) or "mixed" (either, drawn per pair, so both work at inference).
    cross_attention_text: str = "instruction"
    gate_text: str = "instruction"
    # Weight of a loss pulling the gate towards the tokens the pair changes (flow_matching.py); 0: the gate
    # learns from the edit loss alone. It makes the gate map an edit mask rather than a mixing weight.
    gate_supervision: float = 0.0
    mixed_precision: str = "no"  # "no", "bf16" or "fp16" (accelerate)
    gradient_checkpointing: bool = False  # trade compute for memory in the frozen base's blocks
    overwrite: bool = False  # replace an existing run folder
    cache: str = "auto"  # "auto": use PAIRS_DIR/cache when it was made for this base; "no": always encode
    warmup_steps: int = 0  # linear learning-rate warm-up from 0
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (to 0 at the last step)
    save_every: int | None = None  # write a resumable checkpoint every N steps (and on Ctrl-C/SIGTERM)
    keep_checkpoints: int = 2  # how many of the latest checkpoints to keep
    resume: str | None = None  # "latest" (the run folder's newest checkpoint) or a checkpoint folder
    validate_every: int | None = None  # every N steps, edit a few fixed pairs and save a picture of it
    validation_pairs: int = 4  # how many pairs (the first ones of the prepared folder)
    # Also keep an exponential moving average of the adapter weights with this decay (e.g. 0.999; diffusers'
    # EMAModel, which ramps the decay up over the first steps), written as adapter_ema.safetensors.
    ema_decay: float | None = None
    # What is trained (docs/method.md, "Baselines"): "imvedit"; "vifeedit" (the predecessor: a two-way source
    # in the sequence); "concat" (source on the patch embedding's channels + LoRA); "per-frame" (imvedit's
    # adapter, run frame by frame at inference). "sdedit" needs no training.
    arch: str = "imvedit"
    adapter: dict = field(default_factory=dict)  # ImVideoEditAdapter switches: rank, branches, gate, ...
    # A base with two experts (Wan2.2-A14B): train the adapter of the high-noise expert, the low-noise one,
    # or both (None: both). Each sees only timesteps of its own expert. Refused for a one-expert base.
    expert: str | None = None

    def validate(self) -> None:
        if Path(self.pairs_dir).is_file():
            raise UsageError(
                f"{self.pairs_dir} is a file; train reads a folder.",
                "Run `imvedit prepare SOURCE -o DIR` and train on DIR.",
            )
        if not Path(self.pairs_dir).is_dir():
            raise UsageError(
                f"Pairs folder {self.pairs_dir} does not exist.", "Run `imvedit prepare SOURCE -o DIR` first."
            )
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be at least 1, got {self.max_steps}.")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if not self.lr > 0:
            raise UsageError(f"--lr must be positive, got {self.lr}.")
        for name in ("text_dropout", "source_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UsageError(f"{name} must be in [0, 1), got {getattr(self, name)}.")
        for name in ("cross_attention_text", "gate_text"):
            if getattr(self, name) not in TEXT_CHOICES:
                raise UsageError(f"{name} must be one of {', '.join(TEXT_CHOICES)}, got {getattr(self, name)!r}.")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UsageError(f"lr_schedule must be constant or cosine, got {self.lr_schedule!r}.")
        if self.warmup_steps < 0 or (self.save_every is not None and self.save_every < 1) or self.keep_checkpoints < 1:
            raise UsageError("warmup_steps must be ≥ 0, and save_every and keep_checkpoints ≥ 1.")
        if (self.validate_every is not None and self.validate_every < 1) or self.validation_pairs < 1:
            raise UsageError("validate_every and validation_pairs must be at least 1.")
        if self.gate_supervision < 0:
            raise UsageError(f"gate_supervision must be ≥ 0, got {self.gate_supervision}.")
        if self.arch == "sdedit":
            raise UsageError(
                "arch sdedit needs no training.",
                "Edit with `imvedit edit --arch sdedit` or `imvedit eval --arch sdedit`.",
            )
        if self.arch not in ARCHS:
            raise UsageError(f"Unknown --arch {self.arch!r}.", f"Use one of {', '.join(ARCHS)}.")
        no_gate = self.adapter.get("gate", ARCH_DEFAULTS.get(self.arch, {}).get("gate")) == "none"
        if self.gate_supervision > 0 and (no_gate or self.arch == "concat"):
            raise UsageError(
                "gate_supervision needs a gate.",
                "Drop adapter.gate: none (or arch concat), or set gate_supervision: 0.",
            )
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UsageError(f"--ema-decay must be in (0, 1), e.g. 0.999; got {self.ema_decay}.")
        check_expert_option(self.expert, self.model)
        if self.cache not in ("auto", "no"):
            raise UsageError(f"cache must be auto or no, got {self.cache!r}.")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise UsageError(f"--mixed-precision must be no, bf16 or fp16, got {self.mixed_precision!r}.")
        unknown = set(self.adapter) - set(ImVideoEditAdapter.config_switches())
        if unknown:
            raise UsageError(
                f"Unknown adapter option(s): {', '.join(sorted(unknown))}.",
                f"Known: {', '.join(ImVideoEditAdapter.config_switches())}.",
            )
        out = Path(self.output)
        if self.resume is not None:
            if resolve_checkpoint(out, self.resume) is None:
                raise UsageError(
                    f"No checkpoint to resume from in {out if self.resume == 'latest' else self.resume}.",
                    "Train with --save-every N to write checkpoints, or drop --resume.",
                )
        elif out.exists() and any(out.iterdir()) and not self.overwrite:
            raise UsageError(
                f"Run folder {out} is not empty.", "Pass --overwrite to replace it, or choose another folder."
            )

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None, overrides: dict) -> TrainConfig:
        """A config from a YAML file (safe-loaded; unknown keys are errors) with `overrides` on top."""
        values: dict = {}
        if yaml_path is not None:
            try:
                loaded = yaml.safe_load(Path(yaml_path).read_text())
            except (OSError, yaml.YAMLError) as e:
                raise UsageError(
                    f"Could not read config {yaml_path}: {str(e).splitlines()[0]}", "Give a readable YAML file."
                ) from e
            if not isinstance(loaded, dict):
                raise UsageError(
                    f"Config {yaml_path} is not a mapping of options.", "Write one `option: value` per line."
                )
            values.update(loaded)
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"Unknown training option(s): {', '.join(unknown)}.", f"Known options: {', '.join(sorted(known))}."
            )
        for required in ("pairs_dir", "output"):
            if values.get(required) is None:
                raise UsageError(
                    f"No {required} given.", f"Pass it on the command line or set `{required}:` in the config."
                )
        values["pairs_dir"], values["output"] = Path(values["pairs_dir"]), Path(values["output"])
        return cls(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pairs_dir"], d["output"] = str(self.pairs_dir), str(self.output)
        return d


def check_expert_option(expert: str | None, model: str, experts: int | None = None) -> None:
    """--expert names one of EXPERT_CHOICES, and only for a base with two experts (read from its configs)."""
    if expert is None:
        return
    if expert not in EXPERT_CHOICES:
        raise UsageError(f"--expert must be one of {', '.join(EXPERT_CHOICES)}, got {expert!r}.")
    if (experts or expert_count(model)) == 1:
        raise UsageError(
            f"--expert chooses between the two experts of a Wan2.2-A14B base; {model} has one transformer.",
            "Drop --expert.",
        )


def trained_experts(expert: str | None, base_experts: tuple[str, ...]) -> tuple[str, ...]:
    """The experts a run trains: the one transformer ("high"), or per --expert (default: both)."""
    if len(base_experts) == 1:
        return base_experts
    return EXPERTS if expert in (None, "both") else (expert,)


def train(config: TrainConfig, progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train and write the run folder. `progress(step, total_steps, loss)` is called after each step."""
    from accelerate import Accelerator

    config.validate()
    dataset = PairsDataset(config.pairs_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    device = accelerator.device

    # 1. The frozen base and a fresh adapter per trained expert (the init is fixed by the seed). With a
    #    cache made for this base the VAE and the text encoder are not even loaded.
    cached = config.cache == "auto" and cache_usable(config.pairs_dir, config.model)
    components = ("transformer", "transformer_2", "scheduler") if cached else COMPONENTS
    # The base is frozen, so it needs no fp32 master copy: under mixed precision it is loaded in that dtype.
    base_dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config.mixed_precision]
    base = load_base(config.model, torch_dtype=base_dtype, components=components)
    experts = trained_experts(config.expert, base.experts)
    # An expert not trained stays off the device, unless validation pictures sample through it.
    on_device = base.experts if config.validate_every else experts
    for m in (*(base.expert(e) for e in on_device), base.vae, base.text_encoder):
        if m is not None:
            m.to(device)
    if cached and not cache_matches(config.pairs_dir, config.model, base.fingerprint):
        raise UsageError(
            f"The cache in {config.pairs_dir} was made for another base than {config.model}.",
            "Re-run `imvedit prepare --cache --model` for this base, or train with --cache no.",
        )
    torch.manual_seed(config.seed)
    adapters = {e: ImVideoEditAdapter.for_base(base.expert(e), arch=config.arch, **config.adapter) for e in experts}
    models = {e: ImVideoEditTransformer(base.expert(e), a) for e, a in adapters.items()}
    if config.gradient_checkpointing:
        for e in experts:
            base.expert(e).enable_gradient_checkpointing()
    optimizer = make_optimizer(config, [{"params": list(a.parameters())} for a in adapters.values()])
    # Under `accelerate launch` each process takes its share of every epoch's batches (DDP syncs gradients).
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    sampler = BucketBatchSampler(dataset, config.batch_size, config.seed, num_replicas=world, rank=rank)
    if cached:
        items = CachedPairs(config.pairs_dir, dataset.rows)
        loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=items.collate)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=0)
    steps_per_epoch = len(sampler)
    total = config.max_steps or steps_per_epoch * config.epochs
    *prepared, optimizer = accelerator.prepare(*models.values(), optimizer)
    ddp_models = dict(zip(experts, prepared, strict=True))
    # after prepare: the averaged copies live on the adapters' device
    emas = (
        {e: EMAModel(a.parameters(), decay=config.ema_decay) for e, a in adapters.items()} if config.ema_decay else {}
    )
    sigma_ranges = {
        e: expert_sigma_range(e, base.boundary_ratio) if base.boundary_ratio else FULL_RANGE for e in experts
    }

    if cached:
        empty_text, empty_gate = items.empty_text.to(device), items.empty_pooled.to(device)
    else:
        with torch.no_grad():
            empty_text, empty_gate = encode_text(base.tokenizer, base.text_encoder, [""])

    # 2. Where the run starts: fresh, or from a checkpoint (weights, optimiser, schedule, RNG, data position)
    run_dir = Path(config.output)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total))
    generator = torch.Generator().manual_seed(config.seed + 1_000_003 * rank)  # rank 0: the single-process run
    # Which expert a step trains is drawn alike on every process: DDP needs all of them to run the same model.
    expert_generator = torch.Generator().manual_seed(config.seed + 7)
    generators = {"generator": generator, "expert_generator": expert_generator}
    step, epoch0, batch0, losses = 0, 0, 0, []
    checkpoint = resolve_checkpoint(run_dir, config.resume) if config.resume else None
    if checkpoint is not None:
        step, epoch0, batch0, losses = _load_checkpoint(checkpoint, adapters, optimizer, schedule, generators, emas)
    elif main:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # validate() allowed it (--overwrite)
        run_dir.mkdir(parents=True)
    accelerator.wait_for_everyone()
    saved_any = checkpoint is not None

    def save_checkpoint(epoch: int, batch: int) -> None:
        nonlocal saved_any
        if main:
            _save_checkpoint(
                run_dir, step, epoch, batch, losses, adapters, optimizer, schedule, generators, emas, config
            )
        saved_any = True

    # 3. The loop. Ctrl-C / SIGTERM only raise a flag; the step in flight finishes, a checkpoint is written
    #    at that batch boundary (so a resumed run is exactly the uninterrupted one) and then the run stops.
    #    A second Ctrl-C stops at once.
    start, epoch, batch_index = time.time(), epoch0, batch0
    stop = _StopFlag()
    try:
        stop.install()
        with open(run_dir / "log.jsonl", "a") if main else open(os.devnull, "w") as log:
            if main:
                _truncate_log(log, step)
            last = time.time()
            for epoch in range(epoch0, math.ceil(total / steps_per_epoch)):
                sampler.set_epoch(epoch, skip=batch0 if epoch == epoch0 else 0)
                for batch_index, batch in enumerate(loader, start=batch0 if epoch == epoch0 else 0):
                    if step >= total:
                        break
                    if cached:
                        source, target = batch["source"].to(device), batch["target"].to(device)
                        text = _pick_cached(batch, config.cross_attention_text, generator, "").to(device)
                        gate_pooled = _pick_cached(batch, config.gate_text, generator, "_pooled").to(device)
                    else:
                        with torch.no_grad():
                            pixels = torch.cat([batch["source"], batch["target"]]).to(device)
                            source, target = _encode_images(base.vae, pixels).chunk(2)
                            xattn = _pick_text(batch, config.cross_attention_text, generator)
                            gtext = _pick_text(batch, config.gate_text, generator)
                            text, gate_pooled = encode_text(base.tokenizer, base.text_encoder, xattn)
                            if gtext != xattn:  # one text-encoder pass when both read the same text
                                _, gate_pooled = encode_text(base.tokenizer, base.text_encoder, gtext)
                    source, target = _fit_patches(source, base.transformer), _fit_patches(target, base.transformer)
                    expert = pick_expert(experts, base.boundary_ratio, config.flow_shift, expert_generator)
                    with accelerator.autocast():
                        loss = flow_matching_loss(
                            models[expert],
                            source,
                            target,
                            text,
                            gate_pooled,
                            empty_text,
                            empty_gate,
                            generator,
                            config.text_dropout,
                            config.source_dropout,
                            config.flow_shift,
                            forward=ddp_models[expert],
                            gate_weight=config.gate_supervision,
                            sigma_range=sigma_ranges[expert],
                        )
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"The loss became {loss.item()} at step {step + 1}.",
                            "Lower --lr or use --mixed-precision no.",
                        )
                    accelerator.backward(loss)
                    optimizer.step()
                    schedule.step()
                    if expert in emas:
                        emas[expert].step(adapters[expert].parameters())
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    losses.append(loss.item())
                    now = time.time()
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "loss": losses[-1],
                        "lr": schedule.get_last_lr()[0],
                        "seconds": round(now - start, 3),
                        "pairs_per_s_per_process": round(len(source) / max(now - last, 1e-9), 2),
                        "processes": world,
                        **({"expert": expert} if len(base.experts) > 1 else {}),
                    }
                    last = now
                    log.write(json.dumps(record) + "\n")
                    if (config.save_every and step % config.save_every == 0 and step < total) or stop.requested:
                        log.flush()
                        save_checkpoint(epoch, batch_index + 1)
                    if config.validate_every and (step % config.validate_every == 0 or step == total) and main:
                        _validate(config, base, adapters, dataset, run_dir / "validation" / f"step-{step:08d}.png")
                    if stop.requested:
                        raise KeyboardInterrupt
                    if progress:
                        progress(step, total, losses[-1])
    except BaseException:
        if not saved_any and main:
            shutil.rmtree(run_dir, ignore_errors=True)  # nothing to resume from: leave no partial run
        raise
    finally:
        stop.uninstall()

    # 4. The run folder: each file appears whole
    seconds = time.time() - start
    summary = {
        "imvedit_version": __version__,
        "steps": step,
        "pairs": len(dataset),
        "pairs_seen": step * config.batch_size * world,
        "seconds": round(seconds, 3),
        "final_loss": losses[-1],
        "mean_loss_last_10": sum(losses[-10:]) / len(losses[-10:]),
        "trainable_parameters": sum(p.numel() for a in adapters.values() for p in a.parameters()),
        "base_parameters": sum(p.numel() for e in experts for p in base.expert(e).parameters()),
        "resumed_from": str(checkpoint) if checkpoint else None,
        "processes": world,
    }
    if len(base.experts) > 1:
        summary |= {"experts": list(experts), "boundary_ratio": base.boundary_ratio}
    for m in models.values():
        m.detach()
    accelerator.wait_for_everyone()
    if not main:
        return summary
    if len(base.experts) > 1:
        summary["steps_per_expert"] = _steps_per_expert(run_dir / "log.jsonl", experts)
    training = {**summary, "config": config.to_dict()}
    _save_adapters(adapters, base, run_dir, FILES, training)
    if emas:
        averaged = {e: copy.deepcopy(a) for e, a in adapters.items()}
        for e, ema in emas.items():
            ema.copy_to(averaged[e].parameters())
        _save_adapters(averaged, base, run_dir, EMA_FILES, {**training, "ema_decay": config.ema_decay})
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    with atomic_path(run_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    with atomic_path(run_dir / "README.md") as tmp:
        tmp.write_text(_model_card(config, summary, base))
    return summary


def _save_adapters(adapters: dict, base, run_dir: Path, files: dict, training: dict) -> None:
    """The one adapter of a one-expert base as before; a two-expert base's as files that name each other."""
    if len(base.experts) == 1:
        save_adapter(adapters["high"], run_dir / files["high"], base.identity, training=training)
        return
    paths = {e: run_dir / files[e] for e in adapters}
    save_adapter_pair(adapters, paths, {e: base.identity_of(e) for e in adapters}, training)


def _steps_per_expert(log_path: Path, experts: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(experts, 0)
    for line in log_path.read_text().splitlines():
        if line.strip():
            counts[json.loads(line)["expert"]] += 1
    return counts


def _model_card(config: TrainConfig, summary: dict, base) -> str:
    experts = ""
    if len(base.experts) > 1:
        files = " and ".join(
            f"`{FILES[e]}` ({e}-noise expert, {summary['steps_per_expert'][e]} steps)" for e in summary["experts"]
        )
        alone = "" if len(summary["experts"]) == 2 else " The other expert runs unadapted."
        experts = f"A base with two experts (boundary ratio {base.boundary_ratio}): {files}.{alone}\n\n"
    return (
        f"# ImVideoEdit adapter\n\n"
        f"An edit adapter for the frozen base `{base.name}` (transformer fingerprint `{base.fingerprint}`), "
        f"trained with imvedit {__version__} on image pairs only.\n\n"
        f"| | |\n|---|---|\n"
        f"| pairs | {summary['pairs']} (`{config.pairs_dir}`) |\n"
        f"| steps | {summary['steps']} × batch {config.batch_size} × {summary['processes']} process(es) |\n"
        f"| time | {summary['seconds']:.0f} s |\n"
        f"| final loss | {summary['final_loss']:.4f} (mean of the last 10: {summary['mean_loss_last_10']:.4f}) |\n"
        f"| trainable parameters | {summary['trainable_parameters']:,} |\n\n"
        f"{experts}"
        f'```bash\nimvedit edit in.mp4 "your instruction" -o out.mp4 --adapter adapter.safetensors\n```\n\n'
        f"The full training config is in `config.yaml`, the loss per step in `log.jsonl`.\n"
    )


@torch.no_grad()
def _validate(config: TrainConfig, base, adapters: dict, dataset, path: Path) -> None:
    """Edit the first pairs of the folder with the adapters as they are now: one row per pair (source, edit,
    target, gate) in a PNG, so the user sees the edit being learned."""
    from ..evaluation.images import contact_sheet
    from ..pipeline.pipeline_imvedit import ImVideoEditPipeline

    if base.vae is None or base.text_encoder is None:  # trained from a cache: load them for this, once
        extra = load_base(config.model, torch_dtype=torch.float32, components=("vae", "text_encoder", "tokenizer"))
        base.vae, base.text_encoder, base.tokenizer = extra.vae, extra.text_encoder, extra.tokenizer
    device = next(next(iter(adapters.values())).parameters()).device
    base.vae.to(device)
    base.text_encoder.to(device)
    pipe = ImVideoEditPipeline.from_base(base, adapters.get("high"), adapters.get("low"))
    pipe.set_progress_bar_config(disable=True)
    was_training = {e: a.training for e, a in adapters.items()}
    for a in adapters.values():
        a.eval()
    rows = []
    size = (dataset.rows[0]["width"], dataset.rows[0]["height"])
    same_size = [i for i, r in enumerate(dataset.rows) if (r["width"], r["height"]) == size]  # one picture grid
    for i in same_size[: config.validation_pairs]:
        item = dataset[i]
        to_img = lambda t: ((t[:, 0].permute(1, 2, 0).float().cpu().numpy() + 1) / 2).clip(0, 1)  # noqa: E731
        source = to_img(item["source"])
        out = pipe((source * 255).round().astype("uint8")[None], item["caption"], gate_prompt=item["instruction"],
                   num_inference_steps=10, guidance_scale=3.0, generator=torch.Generator().manual_seed(i))  # fmt: skip
        gate = out.gate[0] if out.gate is not None else source[..., 0] * 0
        rows.append(np.stack([source, out.frames[0], to_img(item["target"]), np.repeat(gate[..., None], 3, -1)]))
    for e, a in adapters.items():
        a.train(was_training[e])
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        contact_sheet(rows, tmp, max_columns=4)


# ---------------------------------------------------------------------------------------------------
# Schedules and checkpoints
# ---------------------------------------------------------------------------------------------------


def _lr_lambda(config: TrainConfig, total: int):
    warm, cosine = config.warmup_steps, config.lr_schedule == "cosine"

    def factor(step: int) -> float:  # step counts optimiser steps already taken
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return factor


CHECKPOINT_PREFIX = "checkpoint-"


def resolve_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint folder `resume` names: "latest" in the run folder, or a path."""
    if resume is None:
        return None
    if resume != "latest":
        path = Path(resume)
        return path if (path / "state.json").is_file() else None
    found = sorted((Path(run_dir) / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*/state.json"))
    return found[-1].parent if found else None


EMA_KEYS = {"high": "ema", "low": "ema_2"}  # in a checkpoint's training_state.pt


def _save_checkpoint(run_dir, step, epoch, batch, losses, adapters, optimizer, schedule, generators, emas, config):
    """Each adapter's weights, optimiser and schedule state, the RNGs and the data position, atomically."""
    from safetensors.torch import save_file

    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    with staged_dir(root / f"{CHECKPOINT_PREFIX}{step:08d}") as tmp:
        for expert, adapter in adapters.items():
            weights = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
            save_file(weights, str(tmp / FILES[expert]))
        torch.save(
            {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             **{name: g.get_state() for name, g in generators.items()}, "torch": torch.get_rng_state(),
             **{EMA_KEYS[e]: ema.state_dict() for e, ema in emas.items()}},
            tmp / "training_state.pt",
        )  # fmt: skip
        state = {"step": step, "epoch": epoch, "batch": batch, "losses": losses}
        (tmp / "state.json").write_text(json.dumps(state))
    for old in sorted(root.glob(f"{CHECKPOINT_PREFIX}*"))[: -config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, adapters, optimizer, schedule, generators, emas) -> tuple[int, int, int, list[float]]:
    from safetensors.torch import load_file

    for expert, adapter in adapters.items():
        if not (path / FILES[expert]).is_file():
            raise UsageError(
                f"Checkpoint {path} holds no adapter for the {expert}-noise expert.",
                "Resume with the --expert the run was started with.",
            )
        adapter.load_state_dict(load_file(str(path / FILES[expert])))
    # weights_only: a checkpoint holds tensors and numbers; anything else is refused, not executed
    training = torch.load(path / "training_state.pt", weights_only=True)
    optimizer.load_state_dict(training["optimizer"])
    schedule.load_state_dict(training["schedule"])
    for name, g in generators.items():
        if name in training:  # checkpoints of one-expert runs made before expert_generator existed lack it
            g.set_state(training[name])
    torch.set_rng_state(training["torch"])
    for expert, ema in emas.items():
        if EMA_KEYS[expert] not in training:
            raise UsageError(
                f"Checkpoint {path} holds no EMA weights.", "Resume without --ema-decay, or start a new run."
            )
        ema.load_state_dict(training[EMA_KEYS[expert]])
    state = json.loads((path / "state.json").read_text())
    return state["step"], state["epoch"], state["batch"], list(state["losses"])


class _StopFlag:
    """SIGINT/SIGTERM handlers that ask the loop to stop at the next batch boundary (main thread only)."""

    def __init__(self):
        self.requested = False
        self.previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested:  # asked twice: stop now
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()


def _truncate_log(log, step: int) -> None:
    """Drop log lines past the step a resumed run restarts from (written after its checkpoint)."""
    log.flush()
    path = Path(log.name)
    lines = [x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["step"] <= step]
    log.seek(0)
    log.truncate()
    log.write("".join(x + "\n" for x in lines))
    log.flush()


def _pick_text(batch: dict, choice: str, generator: torch.Generator) -> list[str]:
    if choice != "mixed":
        return list(batch["instruction" if choice == "instruction" else "caption"])
    coin = torch.rand(len(batch["instruction"]), generator=generator) < 0.5
    return [i if c else d for i, d, c in zip(batch["instruction"], batch["caption"], coin.tolist(), strict=True)]


def _pick_cached(batch: dict, choice: str, generator: torch.Generator, suffix: str) -> torch.Tensor:
    """The cached counterpart of `_pick_text`: the same draws from `generator`, so a run from the cache
    follows the same trajectory as one that encodes on the fly."""
    instruction, caption = batch["instruction" + suffix], batch["caption" + suffix]
    if choice != "mixed":
        return instruction if choice == "instruction" else caption
    coin = torch.rand(len(instruction), generator=generator) < 0.5
    return torch.where(coin.view(-1, *[1] * (instruction.ndim - 1)), instruction, caption)


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise UsageError(
                "--optimizer adamw8bit needs bitsandbytes.", "pip install bitsandbytes (CUDA GPUs), or use adamw."
            ) from e
        return bnb.optim.AdamW8bit(params, lr=config.lr, weight_decay=config.weight_decay)
    fused = {"fused": True} if config.optimizer == "adamw-fused" else {}
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)


def _fit_patches(latents: torch.Tensor, transformer) -> torch.Tensor:
    """Centre-crop latents to whole transformer patches. Pairs are prepared in sizes that are multiples of
    16 pixels (Wan2.1: VAE stride 8 x patch 2); a base with a coarser grid (Wan2.2-TI2V: stride 16 x patch
    2 = 32 pixels) would otherwise see a partial patch and predict a smaller latent than its target."""
    _, ph, pw = transformer.config.patch_size
    h, w = latents.shape[-2:]
    top, left = (h % ph) // 2, (w % pw) // 2
    return latents[..., top : top + h - h % ph, left : left + w - w % pw]


def _encode_images(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(batch, 3, 1, h, w) in [-1, 1] -> normalised latents (batch, z, 1, h/8, w/8)."""
    z = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    return normalize_latents(vae, z)


def cache_usable(pairs_dir: str | Path, model: str) -> bool:
    """A cache exists and names this base (its fingerprint is checked once the transformer is loaded)."""
    from ..data.cache import base_id

    meta = read_cache_meta(pairs_dir)
    return meta is not None and meta["key"]["base"] == base_id(model)


def dry_run(yaml_path: str | Path | None, overrides: dict, gpu_memory: float | None, max_area: int | None) -> dict:
    """The memory plan of the run these options describe (imvedit/training/plan.py); nothing is trained."""
    from ..data.dataset import load_pairs_manifest
    from .plan import plan, read_plan_input

    values = dict(overrides)
    if yaml_path is not None:
        values = {**(yaml.safe_load(Path(yaml_path).read_text()) or {}), **overrides}
    defaults = TrainConfig(pairs_dir=Path("."), output=Path("."))
    get = lambda k: values.get(k, getattr(defaults, k))  # noqa: E731
    area = max_area or 480 * 832
    cached = False
    if values.get("pairs_dir") and Path(values["pairs_dir"]).is_dir():  # the largest bucket decides the peak
        rows = load_pairs_manifest(values["pairs_dir"])
        area = max_area or max(r["width"] * r["height"] for r in rows)
        cached = get("cache") == "auto" and cache_usable(values["pairs_dir"], get("model"))
    unknown = set(get("adapter")) - set(ImVideoEditAdapter.config_switches())
    if unknown:
        raise UsageError(f"Unknown adapter option(s): {', '.join(sorted(unknown))}.")
    inp = read_plan_input(get("model"))
    check_expert_option(get("expert"), get("model"), inp.experts)
    experts = trained_experts(get("expert"), EXPERTS[: inp.experts])
    return {
        "model": get("model"),
        **plan(
            inp, {**get("adapter"), "arch": get("arch")}, area, get("batch_size"), get("mixed_precision"),
            bool(get("gradient_checkpointing")), cached, gpu_memory, experts=len(experts),
        ),
    }  # fmt: skip
