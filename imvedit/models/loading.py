"""Loading a base and its adapter(s) for inference, checked against each other.

Used by `imvedit edit`, the ComfyUI nodes, `export` and the toy bench; the edit itself lives in `edit.py`.
A base with two experts (Wan2.2-A14B) takes one adapter per expert: a pair of files that name each other
(`adapter.safetensors` for the high-noise `transformer`, `adapter_2.safetensors` for the low-noise
`transformer_2`; see `adapter_file.py`). Naming either file loads both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError
from .adapter_file import EXPERT_NAMES, adapter_files, load_adapter, read_adapter_metadata, second_name
from .bases import SHAPES_WAN, Base, expert_count, load_base
from .imvedit import ImVideoEditAdapter

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_FILE_2 = second_name(ADAPTER_FILE)  # the low-noise expert's, beside it
EXPORTED_ADAPTER = Path("adapter") / "diffusion_pytorch_model.safetensors"  # in an `export --format diffusers` folder
EXPORTED_ADAPTER_2 = Path("adapter_2") / "diffusion_pytorch_model.safetensors"
EDIT_ARCHS = ("sdedit", "per-frame")  # what `--arch` may ask of an edit; otherwise the adapter's own arch runs


@dataclass
class LoadedModel:
    """What `load_model` returns. It still unpacks as `base, adapter = load_model(...)` (the first expert's)."""

    base: Base
    adapter: ImVideoEditAdapter | None  # the adapter of `base.transformer` (Wan2.2-A14B: the high-noise expert)
    adapter_2: ImVideoEditAdapter | None = None  # the adapter of `base.transformer_2` (the low-noise expert)

    def __iter__(self) -> Iterator:
        return iter((self.base, self.adapter))


def resolve_adapter_path(adapter: str | Path) -> Path:
    """An adapter file, a run folder or an exported folder (adapter or diffusers format) -> the file.

    A folder holding only the low-noise expert's adapter (`train --expert low`) resolves to that file."""
    p = Path(adapter)
    if not p.is_dir():
        return p
    for name in (ADAPTER_FILE, EXPORTED_ADAPTER, ADAPTER_FILE_2, EXPORTED_ADAPTER_2):
        if (p / name).is_file():
            return p / name
    return p / ADAPTER_FILE


def check_experts(meta: dict, experts: int, path: Path, model: str) -> None:
    """An adapter made for a one-expert base fits no two-expert base, and the other way round: the two
    kinds of base can share one architecture (Wan2.1-T2V-14B and each expert of Wan2.2-T2V-A14B)."""
    if experts == 2 and "expert" not in meta:
        raise UsageError(
            f"{path} was trained for a base with one transformer; {model} has two experts (Wan2.2-A14B).",
            f"Train adapters for it: imvedit train --model {model} (--expert both, the default).",
        )
    if experts == 1 and "expert" in meta:
        raise UsageError(
            f"{path} is the adapter of {EXPERT_NAMES[meta['expert']]} of a two-expert base; {model} has one transformer.",
            f"Run it with its own base (--model {meta['base']['name']}), or train an adapter for this one.",
        )


def load_model(
    model: str | None, adapter: str | None, device: torch.device, dtype: torch.dtype, arch: str | None = None
) -> LoadedModel:
    """The base (named, or the one the adapter names) and its adapter(s), checked against each other.

    `arch`: "sdedit" drops the adapter (noise the source, denoise with the prompt: the untrained baseline);
    "per-frame" runs an imvedit adapter on every frame alone (the same weights, no attention across frames).
    """
    if arch is not None and arch not in EDIT_ARCHS:
        raise UsageError(
            f"--arch {arch} is not chosen at edit time.",
            f"Use {' or '.join(EDIT_ARCHS)}; any other arch is the adapter's own (`imvedit train --arch`).",
        )
    if arch == "sdedit":
        adapter = None
        model = model or SHAPES_WAN
    files: dict[str, Path] = {}
    if (
        adapter is None
        and model is not None
        and any((Path(model) / e).is_file() for e in (EXPORTED_ADAPTER, EXPORTED_ADAPTER_2))
    ):
        adapter = str(resolve_adapter_path(model))  # a diffusers export carries its adapter(s)
    if adapter is not None:
        adapter_path = resolve_adapter_path(adapter)
        meta = read_adapter_metadata(adapter_path)
        files = adapter_files(adapter_path, meta)  # both files of a pair, each checked to name the other
        model = model or meta["base"]["name"]
        check_experts(meta, expert_count(model), adapter_path, model)  # from the configs: before any weights
    base = load_base(model, torch_dtype=dtype)
    loaded = {e: load_adapter(p, base.identity_of(e)["fingerprint"])[0] for e, p in files.items()}
    for m in (base.transformer, base.transformer_2, base.vae, base.text_encoder):
        if m is not None:
            m.to(device)
    for a in loaded.values():
        if arch == "per-frame":
            if a.config.arch not in ("imvedit", "per-frame") or a.config.source_stream != "cached":
                raise UsageError(
                    f"--arch per-frame runs an imvedit adapter; this one is a {a.config.arch} adapter.",
                    "Drop --arch, or give an adapter trained with --arch imvedit.",
                )
            a.register_to_config(arch="per-frame")
        a.to(device)
        if dtype != torch.float32:
            a.to(dtype)
    return LoadedModel(base, loaded.get("high"), loaded.get("low"))
