"""The weights file behind diffusers' `from_pretrained` / `save_pretrained` of an adapter, in a local folder
or in the hub cache, and the checks of an imvedit adapter file (adapter_format.py) on it: the adapter's own
loader and writer call these after diffusers has read or written the file."""

from __future__ import annotations

from pathlib import Path

from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from huggingface_hub import hf_hub_download
from safetensors import safe_open
from torch import nn

from .adapter_format import FORMAT, file_tensors, read_verified_tensors, write_adapter


def weights_file(name_or_path, kwargs: dict) -> Path | None:
    """The weights file `ModelMixin.from_pretrained` just read: in a local folder, or in the hub cache."""
    filename = SAFETENSORS_WEIGHTS_NAME
    if kwargs.get("variant"):
        filename = filename.replace(".safetensors", f".{kwargs['variant']}.safetensors")
    subfolder = kwargs.get("subfolder") or ""
    local = Path(name_or_path) / subfolder / filename
    if local.is_file():
        return local
    if Path(name_or_path).exists():
        return None  # a folder without a safetensors file: diffusers already said what it loaded instead
    try:  # already downloaded by the call above, so the cache answers
        return Path(
            hf_hub_download(
                str(name_or_path),
                filename,
                subfolder=subfolder or None,
                revision=kwargs.get("revision"),
                cache_dir=kwargs.get("cache_dir"),
                local_files_only=True,
            )
        )
    except Exception:  # noqa: BLE001 - no cached file to check is not an error of the weights
        return None


def recorded_base(name_or_path, kwargs: dict) -> dict | None:
    """The base an imvedit adapter file was trained for ({name, fingerprint, transformer_config}), once its
    weights match their recorded hash (a mismatch raises); None for a plain `save_pretrained` of an adapter
    without a base, which has nothing to check."""
    weights = weights_file(name_or_path, kwargs)
    if weights is None:
        return None
    with safe_open(str(weights), framework="pt") as f:
        if (f.metadata() or {}).get("format") != FORMAT:
            return None
    _, meta = read_verified_tensors(weights)
    return meta["base"]


def stamp_adapter_file(adapter: nn.Module, save_directory, variant: str | None, base_identity: dict) -> None:
    """Give the weights file `save_pretrained` just wrote the metadata of an imvedit adapter file (format, base,
    payload hash), so loading it anywhere can be checked."""
    weights = weights_file(save_directory, {"variant": variant})
    if weights is not None:
        write_adapter(file_tensors(adapter.state_dict()), dict(adapter.config), weights, base_identity)
