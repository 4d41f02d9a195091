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

The options are `TrainConfig` (config.py); the run folder's README is model_card.py's, which `imvedit export`
writes too.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader

from .. import __version__
from ..data.cache import CachedPairs, base_id, cache_matches, read_cache_meta
from ..data.dataset import BucketBatchSampler, PairsDataset, load_pairs_manifest
from ..errors import TrainingError, UsageError
from ..evaluation.images import contact_sheet
from ..fsutil import atomic_path, staged_dir
from ..models.adapter_file import load_adapter, read_adapter_metadata, save_adapter, save_adapter_pair, second_name
from ..models.bases import COMPONENTS, EXPERTS, Base, load_base, public_config
from ..models.imvedit import ImVideoEditAdapter, ImVideoEditTransformer
from ..models.loading import resolve_adapter_path
from ..models.wan import encode_text, normalize_latents
from ..pipeline.pipeline_imvedit import ImVideoEditPipeline
from .config import CHECKPOINT_PREFIX, TrainConfig, check_expert_option, resolve_checkpoint, trained_experts
from .flow_matching import FULL_RANGE, expert_sigma_range, flow_matching_loss, pick_expert
from .model_card import model_card
from .plan import plan, read_plan_input

if TYPE_CHECKING:
    from accelerate import Accelerator

ADAPTER_FILE = "adapter.safetensors"
EMA_FILE = "adapter_ema.safetensors"
# Each expert's file in the run folder and in checkpoints: the one transformer's (or the high-noise expert's)
# adapter is adapter.safetensors, the low-noise expert's adapter_2.safetensors.
FILES = {"high": ADAPTER_FILE, "low": second_name(ADAPTER_FILE)}
EMA_FILES = {"high": EMA_FILE, "low": second_name(EMA_FILE)}


@dataclass
class _Run:
    """What a run holds while it trains: the loop's locals, named once so that its steps can share them.
    `_setup` builds it, `_start` places it (fresh or from a checkpoint), `_train_step` moves it on."""

    config: TrainConfig
    accelerator: Accelerator
    dataset: PairsDataset  # the prepared folder (images and texts; with a cache, its rows order the cache)
    base: Base  # frozen; without VAE and text encoder when training from the cache
    experts: tuple[str, ...]  # the experts trained: ("high",) for a one-transformer base
    adapters: dict[str, ImVideoEditAdapter]  # per trained expert: the trainable weights
    models: dict[str, ImVideoEditTransformer]  # per trained expert: its transformer with the adapter attached
    forwards: dict[str, Callable]  # the same models as accelerate prepared them (DDP-wrapped under a launcher)
    optimizer: torch.optim.Optimizer  # one for all adapters; AdamW's state is per parameter, so per adapter
    schedule: torch.optim.lr_scheduler.LambdaLR  # warm-up, then constant or cosine
    emas: dict[str, EMAModel]  # per trained expert, with --ema-decay; else empty
    sigma_ranges: dict[str, tuple[float, float]]  # per trained expert: its part of the noise schedule
    cached: bool  # batches are latents and embeddings from the folder's cache, not images and texts
    empty_text: torch.Tensor  # the empty prompt's embedding: what a dropped text becomes
    empty_gate: torch.Tensor  # and its pooled embedding, for the gate
    sampler: BucketBatchSampler  # this process's share of each epoch, in batches of one pair size
    loader: DataLoader
    total: int  # the optimiser steps the run takes
    generator: torch.Generator  # texts, dropout, sigmas and noise: seeded per process
    expert_generator: torch.Generator  # which expert a step trains: alike on every process, as DDP needs
    step: int = 0  # optimiser steps taken
    losses: list[float] = field(default_factory=list)  # one per step taken
    resumed_from: Path | None = None  # the checkpoint the run continued from

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output)

    @property
    def main(self) -> bool:  # only the main process writes the run folder
        return self.accelerator.is_main_process

    @property
    def generators(self) -> dict[str, torch.Generator]:  # under the names a checkpoint stores them
        return {"generator": self.generator, "expert_generator": self.expert_generator}


@dataclass
class _StepInputs:
    """One batch as the loss takes it."""

    source: torch.Tensor  # the source image's normalised latents (batch, z, 1, h, w)
    target: torch.Tensor  # the edited image's, the same shape
    text: torch.Tensor  # the cross-attention's prompt embeddings (batch, tokens, text_dim)
    gate_text: torch.Tensor  # the gate's prompt, pooled (batch, text_dim)


def train(config: TrainConfig, progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train and write the run folder. `progress(step, total_steps, loss)` is called after each step."""
    config.validate()
    # 1. The frozen base and a fresh adapter per trained expert (the init is fixed by the seed), the optimiser
    #    and the data. With a cache made for this base the VAE and the text encoder are not even loaded.
    run = _setup(config)
    # 2. Where the run starts: fresh, or from a checkpoint (weights, optimiser, schedule, RNG, data position)
    epoch0, batch0 = _start(run)
    saved_any = run.resumed_from is not None  # a checkpoint to resume from exists: keep the folder on failure

    # 3. The loop. Ctrl-C / SIGTERM only raise a flag; the step in flight finishes, a checkpoint is written
    #    at that batch boundary (so a resumed run is exactly the uninterrupted one) and then the run stops.
    #    A second Ctrl-C stops at once.
    start = time.time()
    stop = _StopFlag()
    try:
        stop.install()
        with open(run.run_dir / "log.jsonl", "a") if run.main else open(os.devnull, "w") as log:
            if run.main:
                _truncate_log(log, run.step)
            last = time.time()
            for epoch, index, batch in _batches(run, epoch0, batch0):
                inputs = _batch_inputs(run, batch)
                expert = pick_expert(
                    run.experts, run.base.boundary_ratio, config.flow_shift, run.expert_generator, config.sigma_mix
                )
                _train_step(run, inputs, expert)
                now = time.time()
                pairs_per_s = len(inputs.source) / max(now - last, 1e-9)
                log.write(json.dumps(_log_record(run, epoch, expert, now - start, pairs_per_s)) + "\n")
                last = now
                save_now = bool(config.save_every) and run.step % config.save_every == 0 and run.step < run.total
                picture_now = bool(config.validate_every) and (
                    run.step % config.validate_every == 0 or run.step == run.total
                )
                if save_now or stop.requested:
                    log.flush()
                    if run.main:
                        _save_checkpoint(run, epoch, index + 1)
                    saved_any = True
                if picture_now and run.main:
                    _validate(run, run.run_dir / "validation" / f"step-{run.step:08d}.png")
                if stop.requested:
                    raise KeyboardInterrupt
                if progress:
                    progress(run.step, run.total, run.losses[-1])
    except BaseException:
        if not saved_any and run.main:
            shutil.rmtree(run.run_dir, ignore_errors=True)  # nothing to resume from: leave no partial run
        raise
    finally:
        stop.uninstall()

    # 4. The run folder, written by the main process: each file appears whole
    summary = _summary(run, time.time() - start)
    for m in run.models.values():
        m.detach()
    run.accelerator.wait_for_everyone()
    if run.main:
        _write_run_folder(run, summary)
    return summary


# ---------------------------------------------------------------------------------------------------
# 1-2. Setting up: the base, the adapters, the data; where the run starts
# ---------------------------------------------------------------------------------------------------


def _load_init(path: str, adapters: dict[str, ImVideoEditAdapter], base: Base) -> set[str]:
    """`train.init`: the fresh adapter takes a finished one's weights (after the fresh init's draws, so the data
    order and noise are a seed's as ever). Refused when its base, arch or switches differ from this run's, but
    for frame_position switched on; returns the names of the layers that switch adds."""
    if len(adapters) != 1:
        raise UsageError(
            "--init gives one adapter, and this base trains two experts.",
            "Train each expert on its own (--expert high, then --expert low), each with its own --init.",
        )
    expert, adapter = next(iter(adapters.items()))
    file = resolve_adapter_path(path)
    init, _ = load_adapter(file, base.identity_of(expert)["fingerprint"])
    ours, theirs = public_config(adapter.config), public_config(init.config)
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    gains_position = differ == ["frame_position"] and ours["frame_position"] and not theirs.get("frame_position")
    if differ and not gains_position:
        raise UsageError(
            f"--init {file} was trained with other adapter switches ({', '.join(differ)}).",
            "Set this run's `adapter:` and arch to that file's (`imvedit export --inspect` shows them).",
        )
    missing, unexpected = adapter.load_state_dict(init.state_dict(), strict=False)
    assert not unexpected and all("position" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        for name, param in adapter.named_parameters():
            if name in missing:  # the new position layers: zero adds nothing, so the run starts as the init
                param.zero_()
    return set(missing)


def _param_groups(config: TrainConfig, adapters: dict[str, ImVideoEditAdapter], new: set[str]) -> list[dict]:
    """One optimiser group per adapter, and the layers `--init`'s adapter lacked apart at `new_layer_lr`."""
    apart = new if config.new_layer_lr else set()
    groups = []
    for adapter in adapters.values():
        named = list(adapter.named_parameters())
        groups.append({"params": [p for n, p in named if n not in apart]})
        if apart:
            groups.append({"params": [p for n, p in named if n in apart], "lr": config.new_layer_lr})
    return groups


def _setup(config: TrainConfig) -> _Run:
    """Everything the loop needs, built in an order that keeps a seed's run the same: the adapters' init is
    the first draw after `torch.manual_seed`."""
    from accelerate import Accelerator

    dataset = PairsDataset(config.pairs_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.cuda.is_available())
    device = accelerator.device
    base, experts, cached = _load_frozen_base(config, device)
    torch.manual_seed(config.seed)
    switches = config.adapter.switches()
    adapters = {e: ImVideoEditAdapter.for_base(base.expert(e), arch=config.arch, **switches) for e in experts}
    new = _load_init(config.init, adapters, base) if config.init is not None else set()
    if config.new_layer_lr and not new:
        raise UsageError(
            f"new_layer_lr is for the layers --init's adapter lacks, and {config.init} has all of this run's.",
            "Drop new_layer_lr, or switch frame_position on in this run.",
        )
    models = {e: ImVideoEditTransformer(base.expert(e), a) for e, a in adapters.items()}
    if config.gradient_checkpointing:
        for e in experts:
            base.expert(e).enable_gradient_checkpointing()
    optimizer = make_optimizer(config, _param_groups(config, adapters, new))
    # Under `accelerate launch` each process takes its share of every epoch's batches (DDP syncs gradients).
    rank, world = accelerator.process_index, accelerator.num_processes
    sampler = BucketBatchSampler(dataset, config.batch_size, config.seed, num_replicas=world, rank=rank)
    if cached:
        items = CachedPairs(config.pairs_dir, dataset.rows)
        loader = DataLoader(items, batch_sampler=sampler, collate_fn=items.collate)
    else:
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=0)
    total = config.max_steps or len(sampler) * config.epochs
    *prepared, optimizer = accelerator.prepare(*models.values(), optimizer)
    # after prepare: the averaged copies live on the adapters' device
    emas = (
        {e: EMAModel(a.parameters(), decay=config.ema_decay) for e, a in adapters.items()} if config.ema_decay else {}
    )
    if cached:
        empty_text, empty_gate = items.empty_text.to(device), items.empty_pooled.to(device)
    else:
        with torch.no_grad():
            empty_text, empty_gate = encode_text(base.tokenizer, base.text_encoder, [""])
    ratio = base.boundary_ratio
    return _Run(
        config=config, accelerator=accelerator, dataset=dataset, base=base, experts=experts, adapters=adapters,
        models=models, forwards=dict(zip(experts, prepared, strict=True)), optimizer=optimizer,
        schedule=torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total)), emas=emas,
        sigma_ranges={e: expert_sigma_range(e, ratio) if ratio else FULL_RANGE for e in experts},
        cached=cached, empty_text=empty_text, empty_gate=empty_gate, sampler=sampler, loader=loader, total=total,
        generator=torch.Generator().manual_seed(config.seed + 1_000_003 * rank),  # rank 0: the single-process run
        expert_generator=torch.Generator().manual_seed(config.seed + 7),
    )  # fmt: skip


def _load_frozen_base(config: TrainConfig, device: torch.device) -> tuple[Base, tuple[str, ...], bool]:
    """The base, on the device as far as the run uses it: (base, the experts trained, whether the folder's
    cache replaces the VAE and the text encoder, which are then not loaded)."""
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
    return base, experts, cached


def _start(run: _Run) -> tuple[int, int]:
    """A fresh run folder, or the state of the checkpoint --resume names. Returns the data position the run
    continues from: (epoch, batch within it)."""
    checkpoint = resolve_checkpoint(run.run_dir, run.config.resume) if run.config.resume else None
    epoch, batch = 0, 0
    if checkpoint is not None:
        epoch, batch = _load_checkpoint(checkpoint, run)
        run.resumed_from = checkpoint
    elif run.main:
        if run.run_dir.exists():
            shutil.rmtree(run.run_dir)  # validate() allowed it (--overwrite)
        run.run_dir.mkdir(parents=True)
    run.accelerator.wait_for_everyone()
    return epoch, batch


# ---------------------------------------------------------------------------------------------------
# 3. The loop's steps
# ---------------------------------------------------------------------------------------------------


def _batches(run: _Run, epoch0: int, batch0: int) -> Iterator[tuple[int, int, dict]]:
    """(epoch, index, batch) from the data position given until the run's last step; the epoch a resumed run
    starts in leaves out the batches it had done."""
    for epoch in range(epoch0, math.ceil(run.total / len(run.sampler))):
        skip = batch0 if epoch == epoch0 else 0
        run.sampler.set_epoch(epoch, skip=skip)
        for index, batch in enumerate(run.loader, start=skip):
            if run.step >= run.total:
                return
            yield epoch, index, batch


def _batch_inputs(run: _Run, batch: dict) -> _StepInputs:
    """Latents and prompt embeddings of a batch: read from the cache, or made by the frozen VAE and text
    encoder. Both ways draw the texts alike from the run's generator, so both runs follow one trajectory."""
    config, base, device = run.config, run.base, run.accelerator.device
    if run.cached:
        source, target = batch["source"].to(device), batch["target"].to(device)
        text = _pick_cached(batch, config.cross_attention_text, run.generator, "").to(device)
        gate_text = _pick_cached(batch, config.gate_text, run.generator, "_pooled").to(device)
    else:
        with torch.no_grad():
            pixels = torch.cat([batch["source"], batch["target"]]).to(device)
            source, target = _encode_images(base.vae, pixels).chunk(2)
            xattn = _pick_text(batch, config.cross_attention_text, run.generator)
            gtext = _pick_text(batch, config.gate_text, run.generator)
            text, gate_text = encode_text(base.tokenizer, base.text_encoder, xattn)
            if gtext != xattn:  # one text-encoder pass when both read the same text
                _, gate_text = encode_text(base.tokenizer, base.text_encoder, gtext)
    return _StepInputs(_fit_patches(source, base.transformer), _fit_patches(target, base.transformer), text, gate_text)


def _train_step(run: _Run, inputs: _StepInputs, expert: str) -> None:
    """One flow-matching step on `expert`'s adapter; the other expert's gradients stay None, which AdamW skips."""
    config = run.config
    with run.accelerator.autocast():
        loss = flow_matching_loss(
            run.models[expert],
            source_latents=inputs.source,
            target_latents=inputs.target,
            text=inputs.text,
            gate_text=inputs.gate_text,
            empty_text=run.empty_text,
            empty_gate_text=run.empty_gate,
            generator=run.generator,
            text_dropout=config.text_dropout,
            source_dropout=config.source_dropout,
            shift=config.flow_shift,
            forward=run.forwards[expert],
            gate_weight=config.gate_supervision,
            gate_threshold=config.gate_threshold,
            sigma_range=run.sigma_ranges[expert],
            edit_weight=config.edit_loss_weight,
            sigma_mix=config.sigma_mix,
        )
    if not torch.isfinite(loss):
        raise TrainingError(
            f"The loss became {loss.item()} at step {run.step + 1}.", "Lower --lr or use --mixed-precision no."
        )
    run.accelerator.backward(loss)
    run.optimizer.step()
    run.schedule.step()
    if expert in run.emas:
        run.emas[expert].step(run.adapters[expert].parameters())
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.losses.append(loss.item())


def _log_record(run: _Run, epoch: int, expert: str, seconds: float, pairs_per_s: float) -> dict:
    """log.jsonl's line for the step just taken."""
    return {
        "step": run.step,
        "epoch": epoch,
        "loss": run.losses[-1],
        "lr": run.schedule.get_last_lr()[0],
        "seconds": round(seconds, 3),
        "pairs_per_s_per_process": round(pairs_per_s, 2),
        "processes": run.accelerator.num_processes,
        **({"expert": expert} if len(run.base.experts) > 1 else {}),
    }


# ---------------------------------------------------------------------------------------------------
# 4. The run folder
# ---------------------------------------------------------------------------------------------------


def _summary(run: _Run, seconds: float) -> dict:
    """What the run did: summary.json, and the training metadata of the adapter files."""
    world = run.accelerator.num_processes
    summary = {
        "imvedit_version": __version__,
        "steps": run.step,
        "pairs": len(run.dataset),
        "pairs_seen": run.step * run.config.batch_size * world,
        "seconds": round(seconds, 3),
        "final_loss": run.losses[-1],
        "mean_loss_last_10": sum(run.losses[-10:]) / len(run.losses[-10:]),
        "trainable_parameters": sum(p.numel() for a in run.adapters.values() for p in a.parameters()),
        "base_parameters": sum(p.numel() for e in run.experts for p in run.base.expert(e).parameters()),
        "resumed_from": str(run.resumed_from) if run.resumed_from else None,
        "processes": world,
    }
    if len(run.base.experts) > 1:
        summary |= {"experts": list(run.experts), "boundary_ratio": run.base.boundary_ratio}
        if run.main:  # counted in log.jsonl, which only the main process writes
            summary["steps_per_expert"] = _steps_per_expert(run.run_dir / "log.jsonl", run.experts)
    return summary


def _write_run_folder(run: _Run, summary: dict) -> None:
    """The adapter file(s) (the summary and the config in their metadata), the EMA's, config.yaml, summary.json
    and the model card, each file whole or not at all."""
    config, run_dir = run.config, run.run_dir
    training = {**summary, "config": config.to_dict()}
    _save_adapters(run.adapters, run.base, run_dir, FILES, training)
    if run.emas:
        averaged = {e: copy.deepcopy(a) for e, a in run.adapters.items()}
        for e, ema in run.emas.items():
            ema.copy_to(averaged[e].parameters())
        _save_adapters(averaged, run.base, run_dir, EMA_FILES, {**training, "ema_decay": config.ema_decay})
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    with atomic_path(run_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    # The card reads the first adapter file's metadata, as `imvedit export` does; the run's adapters are fp32
    # (mixed precision only autocasts the forward).
    first = FILES[run.experts[0]]
    card = model_card(read_adapter_metadata(run_dir / first), summary["trainable_parameters"], "fp32", filename=first)
    with atomic_path(run_dir / "README.md") as tmp:
        tmp.write_text(card)


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


@torch.no_grad()
def _validate(run: _Run, path: Path) -> None:
    """Edit the first pairs of the folder with the adapters as they are now: one row per pair (source, edit,
    target, gate) in a PNG, so the user sees the edit being learned."""

    config, base, adapters, dataset = run.config, run.base, run.adapters, run.dataset
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


EMA_KEYS = {"high": "ema", "low": "ema_2"}  # in a checkpoint's training_state.pt


def _save_checkpoint(run: _Run, epoch: int, batch: int) -> None:
    """Each adapter's weights, optimiser and schedule state, the RNGs and the data position (the next batch of
    `epoch`), atomically; the oldest checkpoints beyond --keep-checkpoints go."""
    from safetensors.torch import save_file

    root = run.run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    with staged_dir(root / f"{CHECKPOINT_PREFIX}{run.step:08d}") as tmp:
        for expert, adapter in run.adapters.items():
            weights = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
            save_file(weights, str(tmp / FILES[expert]))
        torch.save(
            {"optimizer": run.optimizer.state_dict(), "schedule": run.schedule.state_dict(),
             **{name: g.get_state() for name, g in run.generators.items()}, "torch": torch.get_rng_state(),
             **{EMA_KEYS[e]: ema.state_dict() for e, ema in run.emas.items()}},
            tmp / "training_state.pt",
        )  # fmt: skip
        state = {"step": run.step, "epoch": epoch, "batch": batch, "losses": run.losses}
        (tmp / "state.json").write_text(json.dumps(state))
    for old in sorted(root.glob(f"{CHECKPOINT_PREFIX}*"))[: -run.config.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, run: _Run) -> tuple[int, int]:
    """Put the run in the state `_save_checkpoint` wrote; returns the data position (epoch, batch)."""
    from safetensors.torch import load_file

    for expert, adapter in run.adapters.items():
        if not (path / FILES[expert]).is_file():
            raise UsageError(
                f"Checkpoint {path} holds no adapter for the {expert}-noise expert.",
                "Resume with the --expert the run was started with.",
            )
        adapter.load_state_dict(load_file(str(path / FILES[expert])))
    # weights_only: a checkpoint holds tensors and numbers; anything else is refused, not executed
    training = torch.load(path / "training_state.pt", weights_only=True)
    run.optimizer.load_state_dict(training["optimizer"])
    run.schedule.load_state_dict(training["schedule"])
    for name, g in run.generators.items():
        if name in training:  # checkpoints of one-expert runs made before expert_generator existed lack it
            g.set_state(training[name])
    torch.set_rng_state(training["torch"])
    for expert, ema in run.emas.items():
        if EMA_KEYS[expert] not in training:
            raise UsageError(
                f"Checkpoint {path} holds no EMA weights.", "Resume without --ema-decay, or start a new run."
            )
        ema.load_state_dict(training[EMA_KEYS[expert]])
    state = json.loads((path / "state.json").read_text())
    run.step, run.losses = state["step"], list(state["losses"])
    return state["epoch"], state["batch"]


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

    meta = read_cache_meta(pairs_dir)
    return meta is not None and meta["key"]["base"] == base_id(model)


def dry_run(yaml_path: str | Path | None, overrides: dict, gpu_memory: float | None, max_area: int | None) -> dict:
    """The memory plan of the run these options describe (imvedit/training/plan.py); nothing is trained. The
    options load as a real run's do, so an unknown key is refused alike; neither folder needs to be named."""

    config = TrainConfig.from_sources(yaml_path, overrides, required=())
    area = max_area or 480 * 832
    cached = False
    if config.pairs_dir is not None and config.pairs_dir.is_dir():  # the largest bucket decides the peak
        rows = load_pairs_manifest(config.pairs_dir)
        area = max_area or max(r["width"] * r["height"] for r in rows)
        cached = config.cache == "auto" and cache_usable(config.pairs_dir, config.model)
    inp = read_plan_input(config.model)
    check_expert_option(config.expert, config.model, inp.experts)
    experts = trained_experts(config.expert, EXPERTS[: inp.experts])
    return {
        "model": config.model,
        **plan(
            inp, {**config.adapter.switches(), "arch": config.arch}, area, config.batch_size, config.mixed_precision,
            bool(config.gradient_checkpointing), cached, gpu_memory, experts=len(experts),
        ),
    }  # fmt: skip
