"""What the memory plan and its measurement read of a base: its configs (no weights), and the modules built
from them on the meta device, in the dtypes `imvedit edit` loads them in on a GPU.

A base is a diffusers folder, a config-only folder (`tests/data/wan_configs/*`), a hub id (configs from
the local cache when offline) or a builtin name; `imvedit.training.plan.read_plan_input` resolves it
and reads the transformer, this module the VAE, text encoder and tokenizer length beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import UsageError
from ..models.adapter_file import read_adapter_metadata
from ..models.bases import (
    SHAPES_WAN,
    SHAPES_WAN_DIR,
    TINY_RANDOM,
    Base,
    build_tiny_random,
    is_guided,
    public_config,
    resolve_guidance,
    toy_defaults,
)
from ..models.imvedit import ImVideoEditAdapter
from ..models.loading import resolve_adapter_path
from ..training.plan import UMT5_XXL, read_plan_input
from .live import resident_bytes

COMPUTE = torch.bfloat16  # the transformer, adapter and text encoder on a GPU (`--dtype` default)
FP8 = torch.float8_e4m3fn  # `--base-dtype fp8`: the frozen transformer's storage


@dataclass(frozen=True)
class BaseSpec:
    """A base's configs, the adapter's switches, and the defaults `imvedit edit` uses for it."""

    name: str
    transformer: str  # JSON of the transformer config (frozen dataclasses hash; dicts do not)
    vae: str  # JSON of the VAE config
    text_encoder: str  # JSON of the UMT5 config
    adapter: str = "{}"  # JSON of the adapter's switches (empty: the defaults)
    prompt_tokens: int = 512  # prompts are padded to this many tokens
    default_area: int = 480 * 832
    window_frames: int = 81
    window_overlap: int = 16
    default_guidance: float = 5.0
    default_guidance_2: float | None = None  # below the guidance boundary (None: default_guidance)

    def config(self, part: str) -> dict:
        return json.loads(getattr(self, part))

    def guided(self, scale: float | None, scale_2: float | None) -> bool:
        """Whether an edit with these scales (None: this base's defaults) runs a negative branch at some step."""
        resolved = resolve_guidance((scale, scale_2, None), (self.default_guidance, self.default_guidance_2, None))
        return is_guided(*resolved[:2])


def _dump(config) -> str:
    return json.dumps(public_config(config), sort_keys=True)


# what edit defaults to
DEFAULT_FIELDS = ("default_area", "window_frames", "window_overlap", "default_guidance", "default_guidance_2")


def read_base_spec(model: str, adapter: str | None = None) -> BaseSpec:
    """The configs of `model` (and the switches of `adapter`, a file or run folder), without weights."""

    transformer = read_plan_input(model).transformer_config  # resolves the name, one message when it cannot
    defaults = {f: Base.__dataclass_fields__[f].default for f in DEFAULT_FIELDS}
    if model == TINY_RANDOM:
        base = build_tiny_random()
        vae, te = base.vae.config, base.text_encoder.config.to_dict()
        tokens = base.tokenizer.model_max_length
        defaults.update(default_area=base.default_area, window_frames=9, window_overlap=4)  # as load_base sets
    else:
        folder = SHAPES_WAN_DIR if model == SHAPES_WAN else Path(model).expanduser()
        vae, te, tokens = _folder_configs(folder, model) if folder.is_dir() else _hub_configs(model)
        te = te or UMT5_XXL
        defaults.update({k: v for k, v in (toy_defaults(folder) or {}).items() if k in defaults})  # as load_base
    return BaseSpec(
        name=model,
        transformer=_dump(transformer),
        vae=_dump(vae),
        text_encoder=_dump(te),
        adapter=_dump(adapter_switches(adapter)),
        prompt_tokens=min(512, tokens or 512),
        **defaults,
    )


def _folder_configs(folder: Path, model: str) -> tuple[dict, dict | None, int | None]:
    def read(file: str) -> dict | None:
        path = folder / file
        return json.loads(path.read_text()) if path.is_file() else None

    vae = read("vae/config.json")
    if vae is None:
        raise UsageError(f"{model} has no vae/config.json.", "Give a diffusers-format Wan folder.")
    tokenizer = read("tokenizer/tokenizer_config.json") or {}
    return vae, read("text_encoder/config.json"), tokenizer.get("model_max_length")


def _hub_configs(model: str) -> tuple[dict, dict | None, int | None]:
    from huggingface_hub import hf_hub_download

    def read(file: str) -> dict | None:
        try:
            return json.loads(Path(hf_hub_download(model, file)).read_text())
        except Exception:  # noqa: BLE001 - an optional file the hub (or the offline cache) does not have
            return None

    vae = read("vae/config.json")
    if vae is None:
        raise UsageError(f"Could not read the VAE config of {model!r}.", "Give a local diffusers Wan folder.")
    tokenizer = read("tokenizer/tokenizer_config.json") or {}
    return vae, read("text_encoder/config.json"), tokenizer.get("model_max_length")


def adapter_switches(adapter: str | None) -> dict:
    """The switches an adapter file records (`adapter_config` in its metadata); {} for the defaults."""
    if adapter is None:
        return {}

    config = read_adapter_metadata(resolve_adapter_path(adapter)).get("adapter_config") or {}
    keep = (*ImVideoEditAdapter.config_switches(), "arch")
    return {k: v for k, v in config.items() if k in keep}


# ---------------------------------------------------------------------------------------------------
# The modules, on the meta device
# ---------------------------------------------------------------------------------------------------


@dataclass
class MetaModules:
    transformer: torch.nn.Module
    adapter: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module


def build_meta(spec: BaseSpec, base_dtype: str = "bf16") -> MetaModules:
    """The base's modules at full size on the meta device, as `imvedit edit` loads them for a GPU: the
    transformer in bf16 except what diffusers keeps in fp32 (`_keep_in_fp32_modules`), with `fp8` stored as
    diffusers' layerwise casting stores it; the adapter and UMT5 in bf16; the VAE in fp32."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(spec.config("transformer"))
        switches = spec.config("adapter")
        adapter = ImVideoEditAdapter.for_base(transformer, **switches)
        vae = AutoencoderKLWan.from_config(spec.config("vae"))
        text_encoder = UMT5EncoderModel(UMT5Config(**spec.config("text_encoder")))
    for m in (adapter, text_encoder):  # all of it in the compute dtype, as `load_model` casts it
        for p in m.parameters():
            p.data = p.data.to(COMPUTE)
    keep = transformer._keep_in_fp32_modules or []
    for name, p in transformer.named_parameters():
        if not any(k in name.split(".") for k in keep):  # diffusers' rule for torch_dtype at load time
            p.data = p.data.to(COMPUTE)
    if base_dtype == "fp8":
        transformer.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=COMPUTE)
    for m in (transformer, adapter, vae, text_encoder):
        m.eval().requires_grad_(False)
    return MetaModules(transformer, adapter, vae, text_encoder)


@lru_cache(maxsize=16)
def weight_bytes(spec: BaseSpec, base_dtype: str) -> dict[str, int]:
    """Bytes of each module's weights, and of what group offloading keeps of each on the device."""

    m = build_meta(spec, base_dtype)
    sda = m.adapter.sda_layers
    branches = len(next(iter(m.adapter.sda.values())).branches) if sda else 0
    return {
        "transformer": resident_bytes(m.transformer),
        "transformer_group": group_resident_bytes(m.transformer),
        "adapter": resident_bytes(m.adapter),
        "vae": resident_bytes(m.vae),
        "text_encoder": resident_bytes(m.text_encoder),
        "text_encoder_group": group_resident_bytes(m.text_encoder),
        "sda_blocks": len(sda),
        "branches": branches,
    }


def group_resident_bytes(module: torch.nn.Module) -> int:
    """What diffusers' block-level group offloading (one block per group, with streams) keeps on the device
    while `module` runs: the top-level children that are not a ModuleList (one group, on the device for
    the whole forward) and two blocks (the one running and the next, prefetched). A module without a
    top-level ModuleList (UMT5EncoderModel: its blocks sit in `encoder.block`) is one group: all of it."""

    lists = [c for c in module.children() if isinstance(c, torch.nn.ModuleList | torch.nn.Sequential)]
    others = [c for c in module.children() if c not in lists]
    blocks = sorted((resident_bytes(b) for lst in lists for b in lst), reverse=True)
    own = sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    own += sum(b.numel() * b.element_size() for b in module.buffers(recurse=False))
    return resident_bytes(*others) + own + sum(blocks[:2])
