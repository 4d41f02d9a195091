"""What a training run is: `TrainConfig` (with the adapter's switches nested as `AdapterOptions`), read from a
YAML file and flags by one loader, `TrainConfig.from_sources`, and checked by `validate()` before any work.

The YAML file uses the flags' names with `_` for `-`, plus an `adapter:` section for the switches:

    model: shapes-wan
    lr: 5.0e-4
    adapter:
      rank: 16
      cross_lora: true
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..errors import UsageError
from ..models.bases import EXPERTS, expert_count
from ..models.imvedit import ARCH_DEFAULTS, ARCHS
from .flow_matching import EDIT_THRESHOLD

TEXT_CHOICES = ("instruction", "description", "mixed")
OPTIMIZERS = ("adamw", "adamw-fused", "adamw8bit")
EXPERT_CHOICES = ("high", "low", "both")
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class AdapterOptions:
    """The switches of the adapter a run trains (ImVideoEditAdapter's constructor says what each does).
    None leaves a switch to the arch's default, so `arch: vifeedit` keeps its own (no gate, two-way source)."""

    rank: int | None = None  # rank of each SDA branch's low-rank q/k/v/o updates (32)
    branches: str | None = None  # "pos_neg": difference of two attentions; "zero_out": one branch
    aligned_difference: bool | None = None  # the low-rank map of LN(source) - LN(target), token by token (on)
    aligned_rank: int | None = None  # rank of that map (32)
    every_k_blocks: int | None = None  # SDA in blocks 0, k, 2k, ... (1)
    gate: str | None = None  # "text", "no_text" or "none" (g = 1)
    gate_dim: int | None = None  # width of the gate network (64)
    gate_source: bool | None = None  # the gate also reads the source token at the same position (on)
    gate_mix: bool | None = None  # g scales the attention branches and 1 - g the aligned term (on)
    ffn_lora: bool | None = None  # low-rank updates on each block's feed-forward too (off)
    ffn_rank: int | None = None  # rank of those updates (32)
    cross_lora: bool | None = None  # low-rank updates on each block's text cross-attention (off)
    cross_rank: int | None = None  # rank of those updates (16)
    text_difference: bool | None = None  # a per-token map of source and target, FiLM-ed by the instruction (off)
    text_rank: int | None = None  # rank of that map (32)
    frame_position: bool | None = None  # the gate and text_difference read where a token sits in its frame (off)
    source_stream: str | None = None  # "cached": one-way, once per video; "two_way": beside the target

    @classmethod
    def from_dict(cls, values: dict | None) -> AdapterOptions:
        """The `adapter:` section of a config; a switch the adapter does not have is an error, not ignored."""
        values = values or {}
        if not isinstance(values, dict):
            raise UsageError("The adapter options are not a mapping.", "Write one `switch: value` per line under it.")
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise UsageError(
                f"Unknown adapter option(s): {', '.join(sorted(unknown))}.",
                f"Known: {', '.join(f.name for f in fields(cls))}.",
            )
        return cls(**values)

    def switches(self) -> dict:
        """The switches set, as `ImVideoEditAdapter.for_base` takes them (and config.yaml records them)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


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
    # Share of each batch whose sigma is drawn at low_noise_shift instead. At flow_shift 12 (the toy's recipe) 8 %
    # of the steps land below sigma 0.5, where a shift-1 sampler spends half its steps; 0: all at flow_shift.
    low_noise_share: float = 0.0
    low_noise_shift: float = 1.0  # the shift that share is drawn at (1: sigma uniform)
    # Which text feeds the base's cross-attention and which the gate: "instruction", "description" (the
    # pair's caption of the edited image) or "mixed" (either, drawn per pair, so both work at inference).
    cross_attention_text: str = "instruction"
    gate_text: str = "instruction"
    # Weight of a loss pulling the gate towards the tokens the pair changes (flow_matching.py); 0: the gate
    # learns from the edit loss alone. It makes the gate map an edit mask rather than a mixing weight.
    gate_supervision: float = 0.0
    # Mean change of the normalised latents over the channels above which a latent position counts as edited in
    # that loss's target. 0.5 was measured on the toy's codec only (tests/benchmarks/probe_gate_target.py);
    # on a real Wan VAE it is not: check a trained adapter's gate maps (edit --save-mask) before trusting them.
    gate_threshold: float = EDIT_THRESHOLD
    # Extra weight of the edit loss on the latent positions the pair changes (weight 1 + this there, 1 elsewhere,
    # normalised): more of the gradient from the edited object, its outline included; 0: plain MSE.
    edit_loss_weight: float = 0.0
    mixed_precision: str = "no"  # "no", "bf16" or "fp16" (accelerate)
    gradient_checkpointing: bool = False  # trade compute for memory in the frozen base's blocks
    overwrite: bool = False  # replace an existing run folder
    cache: str = "auto"  # "auto": use PAIRS_DIR/cache when it was made for this base; "no": always encode
    warmup_steps: int = 0  # linear learning-rate warm-up from 0
    lr_schedule: str = "constant"  # after warm-up: "constant" or "cosine" (to 0 at the last step)
    save_every: int | None = None  # write a resumable checkpoint every N steps (and on Ctrl-C/SIGTERM)
    keep_checkpoints: int = 2  # how many of the latest checkpoints to keep
    resume: str | None = None  # "latest" (the run folder's newest checkpoint) or a checkpoint folder
    # Start from this adapter's weights (a .safetensors file or a run folder) instead of a fresh init: a finished
    # adapter trained further, with another objective or on new pairs. It must have this run's arch and switches
    # (but for frame_position, which a later stage may switch on: its layers start at zero) and be made for this
    # base; a two-expert base trains each expert from its own (--expert high / low).
    init: str | None = None
    # With init: the learning rate of the layers that adapter lacks (frame_position switched on), which start at
    # zero while the rest is trained already; None: lr, as every other layer
    new_layer_lr: float | None = None
    validate_every: int | None = None  # every N steps, edit a few fixed pairs and save a picture of it
    validation_pairs: int = 4  # how many pairs (the first ones of the prepared folder)
    # Also keep an exponential moving average of the adapter weights with this decay (e.g. 0.999; diffusers'
    # EMAModel, which ramps the decay up over the first steps), written as adapter_ema.safetensors.
    ema_decay: float | None = None
    # What is trained (docs/method.md, "Baselines"): "imvedit"; "vifeedit" (the predecessor: a two-way source
    # in the sequence); "concat" (source on the patch embedding's channels + LoRA); "per-frame" (imvedit's
    # adapter, run frame by frame at inference). "sdedit" needs no training.
    arch: str = "imvedit"
    # The adapter's switches: rank, branches, gate, ... (a plain dict is read as the YAML's `adapter:` section)
    adapter: AdapterOptions = field(default_factory=AdapterOptions)
    # A base with two experts (Wan2.2-A14B): train the adapter of the high-noise expert, the low-noise one,
    # or both (None: both). Each sees only timesteps of its own expert. Refused for a one-expert base.
    expert: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.adapter, AdapterOptions):
            self.adapter = AdapterOptions.from_dict(self.adapter)

    @property
    def sigma_mix(self) -> tuple[float, float]:
        """(share, shift) of the samples drawn at another sigma shift than flow_shift (flow_matching.py)."""
        return (self.low_noise_share, self.low_noise_shift)

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
        if self.new_layer_lr is not None and not (self.new_layer_lr > 0 and self.init):
            raise UsageError(
                f"new_layer_lr ({self.new_layer_lr}) must be positive and set with init.",
                "Give the adapter to start from (init:), or drop new_layer_lr.",
            )
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
        if self.edit_loss_weight < 0:
            raise UsageError(f"edit_loss_weight must be ≥ 0, got {self.edit_loss_weight}.")
        if not 0.0 <= self.low_noise_share <= 1.0 or self.low_noise_shift <= 0:
            raise UsageError(
                f"low_noise_share must be in [0, 1] and low_noise_shift > 0, got {self.low_noise_share} "
                f"and {self.low_noise_shift}."
            )
        if self.gate_threshold <= 0:
            raise UsageError(f"gate_threshold must be > 0, got {self.gate_threshold}.")
        if self.arch == "sdedit":
            raise UsageError(
                "arch sdedit needs no training.",
                "Edit with `imvedit edit --arch sdedit` or `imvedit eval --arch sdedit`.",
            )
        if self.arch not in ARCHS:
            raise UsageError(f"Unknown --arch {self.arch!r}.", f"Use one of {', '.join(ARCHS)}.")
        gate = self.adapter.gate if self.adapter.gate is not None else ARCH_DEFAULTS.get(self.arch, {}).get("gate")
        if self.gate_supervision > 0 and (gate == "none" or self.arch == "concat"):
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
        if self.init is not None and not Path(self.init).exists():
            raise UsageError(f"--init {self.init} does not exist.", "Give an adapter .safetensors or a run folder.")
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
    def from_sources(
        cls, yaml_path: str | Path | None, overrides: dict, required: tuple[str, ...] = ("pairs_dir", "output")
    ) -> TrainConfig:
        """A config from a YAML file (safe-loaded; unknown keys are errors) with `overrides` on top. A real run
        and its dry run both load through here, so a key one refuses the other refuses too. `required`: the
        folders that must be named (a dry run needs neither; one not named is then None)."""
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
        for name in ("pairs_dir", "output"):
            if values.get(name) is None and name in required:
                raise UsageError(f"No {name} given.", f"Pass it on the command line or set `{name}:` in the config.")
            values[name] = None if values.get(name) is None else Path(values[name])
        return cls(**values)

    def to_dict(self) -> dict:
        """The config as config.yaml records it (and `from_sources` reads it back): the adapter's switches set."""
        d = asdict(self)
        d["pairs_dir"], d["output"] = str(self.pairs_dir), str(self.output)
        d["adapter"] = self.adapter.switches()
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


def resolve_checkpoint(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint folder `resume` names: "latest" in the run folder, or a path."""
    if resume is None:
        return None
    if resume != "latest":
        path = Path(resume)
        return path if (path / "state.json").is_file() else None
    found = sorted((Path(run_dir) / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*/state.json"))
    return found[-1].parent if found else None
