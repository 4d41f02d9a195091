"""Loading a base and its adapter for inference, checked against each other.

Used by `imvedit edit`, the ComfyUI nodes, `export` and the toy bench; the edit itself lives in `edit.py`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError
from .adapter_file import load_adapter, read_adapter_metadata
from .bases import SHAPES_WAN, Base, load_base

ADAPTER_FILE = "adapter.safetensors"
EXPORTED_ADAPTER = Path("adapter") / "diffusion_pytorch_model.safetensors"  # in an `export --format diffusers` folder
EDIT_ARCHS = ("sdedit", "per-frame")  # what `--arch` may ask of an edit; otherwise the adapter's own arch runs


def resolve_adapter_path(adapter: str | Path) -> Path:
    """An adapter file, a run folder or an exported folder (adapter or diffusers format) -> the file."""
    p = Path(adapter)
    if p.is_dir() and not (p / ADAPTER_FILE).is_file() and (p / EXPORTED_ADAPTER).is_file():
        return p / EXPORTED_ADAPTER
    return p / ADAPTER_FILE if p.is_dir() else p


def load_model(
    model: str | None, adapter: str | None, device: torch.device, dtype: torch.dtype, arch: str | None = None
) -> tuple[Base, object]:
    """The base (named, or the one the adapter names) and the adapter, checked against each other.

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
    meta = None
    if adapter is None and model is not None and (Path(model) / EXPORTED_ADAPTER).is_file():
        adapter = str(Path(model) / EXPORTED_ADAPTER)  # a diffusers export carries its adapter
    if adapter is not None:
        adapter_path = resolve_adapter_path(adapter)
        meta = read_adapter_metadata(adapter_path)
        model = model or meta["base"]["name"]
    base = load_base(model, torch_dtype=dtype)
    loaded = None
    if adapter is not None:
        loaded, _ = load_adapter(adapter_path, base.fingerprint)
    for m in (base.transformer, base.vae, base.text_encoder):
        m.to(device)
    if loaded is not None:
        if arch == "per-frame":
            if loaded.config.arch not in ("imvedit", "per-frame") or loaded.config.source_stream != "cached":
                raise UsageError(
                    f"--arch per-frame runs an imvedit adapter; this one is a {loaded.config.arch} adapter.",
                    "Drop --arch, or give an adapter trained with --arch imvedit.",
                )
            loaded.register_to_config(arch="per-frame")
        loaded.to(device)
        if dtype != torch.float32:
            loaded.to(dtype)
    return base, loaded
