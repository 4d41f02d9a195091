"""`imvedit train --dry-run`: what a run needs, from the model configs alone (no weights are loaded).

The transformer and the adapter are built on the meta device, so parameter counts are exact. Device
memory is an estimate (say ±30%), made of:

- frozen weights: the transformer (and, without a latent cache, the UMT5 text encoder and the VAE) in
  the training precision;
- the adapter: fp32 weights, gradients and AdamW's two moments (16 bytes per parameter);
- activations kept for the backward pass, per token and block: about (24 · width + 2 · ffn width)
  values (the block's own tensors plus the SDA's), or with gradient checkpointing only the block
  inputs plus one block's worth;
- the source stream's cached features: 4 tensors of the model width per token and SDA block.

Tokens per training pair: one latent frame, (height / (VAE stride · 2)) · (width / (VAE stride · 2)).

A two-expert base (Wan2.2-A14B) trained with `--expert both` holds both experts and both adapters (with
their optimiser states) on the device; a step runs one expert, so activations are one expert's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError
from ..models.bases import (
    SHAPES_WAN,
    SHAPES_WAN_DIR,
    TINY_RANDOM,
    build_tiny_random,
    check_supported,
    read_base_configs,
)
from ..models.imvedit import ImVideoEditAdapter

GB = 1024**3
# google/umt5-xxl's encoder, the text encoder of every Wan base (its published config)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
ACTIVATION_WIDTHS = 24  # per token and block, in units of the model width (see the module docstring)


@dataclass
class PlanInput:
    transformer_config: dict
    vae_stride: int = 8
    text_encoder_params: int | None = None  # None: UMT5-XXL
    vae_params: int = 127_000_000  # Wan2.1's VAE; 2.2's is larger but runs once per batch without grads
    experts: int = 1  # 2 for Wan2.2-A14B (both experts share one architecture)


def _count(module_cls, config: dict) -> int:
    with torch.device("meta"):
        model = module_cls.from_config(config) if hasattr(module_cls, "from_config") else module_cls(config)
    return sum(p.numel() for p in model.parameters())


def read_plan_input(model: str) -> PlanInput:
    """The configs of a base (a diffusers folder, a hub id, or a builtin name) without its weights."""
    if model == TINY_RANDOM:
        base = build_tiny_random()
        te = sum(p.numel() for p in base.text_encoder.parameters())
        return PlanInput(dict(base.transformer.config), base.vae.config.scale_factor_spatial, te, 0)
    path = SHAPES_WAN_DIR if model == SHAPES_WAN else Path(model).expanduser()
    try:
        configs = read_base_configs(str(path) if path.is_dir() else model)
    except (OSError, ValueError) as e:  # offline, unknown id, no access, bad JSON: one message for all
        raise UsageError(
            f"Could not read the configs of {model!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            "Give a local diffusers Wan folder, or check the hub id and your connection.",
        ) from e
    check_supported(configs, model)
    stride = (configs.vae or {}).get("scale_factor_spatial", 8)
    experts = 2 if configs.transformer_2 is not None else 1
    te_cfg = path / "text_encoder" / "config.json"
    te = None
    if path.is_dir() and te_cfg.is_file():
        from transformers import UMT5Config, UMT5EncoderModel

        cfg = UMT5Config.from_json_file(str(te_cfg))
        with torch.device("meta"):
            te = sum(p.numel() for p in UMT5EncoderModel(cfg).parameters())
    return PlanInput(configs.transformer, stride, te, experts=experts)


def plan(
    inp: PlanInput,
    adapter_switches: dict,
    area: int,
    batch_size: int,
    mixed_precision: str,
    gradient_checkpointing: bool,
    cached: bool,
    gpu_memory_gb: float | None = None,
    experts: int | None = None,
) -> dict:
    """Parameter counts and a peak-memory estimate; with `gpu_memory_gb`, options that would fit it.
    `experts`: how many of the base's experts the run trains (default: all of them)."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = {k: v for k, v in inp.transformer_config.items() if not k.startswith("_")}
    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(cfg)
        adapter = ImVideoEditAdapter.for_base(transformer, **adapter_switches)
    trained = experts or inp.experts
    per_expert = sum(p.numel() for p in transformer.parameters())
    base_params = per_expert * trained  # each trained expert is on the device, with its own adapter
    adapter_params = sum(p.numel() for p in adapter.parameters()) * trained
    te_params = inp.text_encoder_params
    if te_params is None:
        with torch.device("meta"):
            te_params = sum(p.numel() for p in UMT5EncoderModel(UMT5Config(**UMT5_XXL)).parameters())

    def estimate(batch: int, precision: str, checkpointing: bool, use_cache: bool, area_: int) -> dict:
        b = 4 if precision == "no" else 2
        dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        layers, ffn = cfg["num_layers"], cfg["ffn_dim"]
        sda_blocks = len(adapter.sda_layers)
        side = inp.vae_stride * cfg["patch_size"][1]
        tokens = batch * max(1, area_ // (side * side))
        per_block = tokens * (ACTIVATION_WIDTHS * dim + 2 * ffn) * b
        activations = (tokens * dim * b * layers + per_block) if checkpointing else per_block * layers
        parts = {
            "transformer_weights": base_params * b,
            "text_encoder_and_vae_weights": 0 if use_cache else (te_params + inp.vae_params) * b,
            "adapter_weights_grads_adam": adapter_params * 16,
            "activations": activations,
            "source_features": tokens * 4 * dim * b * sda_blocks,
        }
        parts = {k: round(v / GB, 2) for k, v in parts.items()}
        return {"tokens_per_step": tokens, "parts_gb": parts, "peak_gb": round(sum(parts.values()) * 1.1, 1)}

    current = estimate(batch_size, mixed_precision, gradient_checkpointing, cached, area)
    result = {
        "transformer_parameters": base_params,
        **({"experts": trained, "expert_parameters": per_expert} if inp.experts > 1 else {}),
        "adapter_parameters": adapter_params,
        "adapter_fraction": round(adapter_params / base_params, 4),
        "text_encoder_parameters": te_params,
        "working_area": area,
        "estimate": current,
        "note": "an estimate from the configs (±30%), not a measurement",
    }
    if gpu_memory_gb is not None:
        result["gpu_memory_gb"] = gpu_memory_gb
        result["fits"] = current["peak_gb"] <= gpu_memory_gb
        if not result["fits"]:
            result["suggestion"] = _suggest(
                estimate, batch_size, mixed_precision, gradient_checkpointing, cached, area, gpu_memory_gb
            )
    return result


def _suggest(estimate, batch, precision, checkpointing, cached, area, budget) -> dict | None:
    """The first combination of the usual memory savers, cheapest first, whose estimate fits."""
    steps = [
        ("--mixed-precision bf16", dict(precision="bf16")),
        ("prepare --cache (no text encoder or VAE on the device)", dict(use_cache=True)),
        ("--gradient-checkpointing", dict(checkpointing=True)),
        ("--batch-size 1", dict(batch=1)),
        ("a smaller --max-area at prepare time (half the pixels)", dict(area_=area // 2)),
        ("a smaller --max-area at prepare time (a quarter of the pixels)", dict(area_=area // 4)),
    ]
    options = dict(batch=batch, precision=precision, checkpointing=checkpointing, use_cache=cached, area_=area)
    chosen = []
    for label, change in steps:
        if all(options[k] == v for k, v in change.items()):
            continue
        options.update(change)
        chosen.append(label)
        peak = estimate(**options)["peak_gb"]
        if peak <= budget:
            return {"options": chosen, "peak_gb": peak}
    return {"options": chosen, "peak_gb": estimate(**options)["peak_gb"], "fits": False}
