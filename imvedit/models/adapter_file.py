"""An adapter model to and from its file: `save_adapter`, `save_adapter_pair`, `load_adapter`.

The format itself (metadata, payload hash, ComfyUI names, pairs of expert files) is `adapter_format.py`,
which knows tensors and metadata only; this module adds the model on top. The format's names are
re-exported here, where scripts and the README of every export import them from.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UsageError
from .adapter_format import (
    COMFYUI_PREFIX,
    EXPERT_NAMES,
    FORMAT,
    FORMAT_COMFYUI,
    FORMAT_VERSION,
    adapter_files,
    check_base,
    file_tensors,
    from_comfyui_names,
    payload_sha256,
    read_adapter_metadata,
    read_verified_tensors,
    second_name,
    to_comfyui_names,
    write_adapter,
)
from .imvedit import ImVideoEditAdapter

__all__ = [
    "COMFYUI_PREFIX",
    "EXPERT_NAMES",
    "FORMAT",
    "FORMAT_COMFYUI",
    "FORMAT_VERSION",
    "adapter_files",
    "check_base",
    "from_comfyui_names",
    "load_adapter",
    "payload_sha256",
    "read_adapter_metadata",
    "read_verified_tensors",
    "save_adapter",
    "save_adapter_pair",
    "second_name",
    "stored_tensors",
    "to_comfyui_names",
]


def stored_tensors(adapter: ImVideoEditAdapter, dtype: torch.dtype | None = None, comfyui: bool = False) -> dict:
    """The adapter's tensors as a file holds them: in `dtype`, under ComfyUI's names when asked."""
    return file_tensors(adapter.state_dict(), dtype, comfyui)


def save_adapter(
    adapter: ImVideoEditAdapter,
    path: str | Path,
    base_identity: dict,
    training: dict | None = None,
    dtype: torch.dtype | None = None,
    comfyui: bool = False,
    expert: str | None = None,
    pair: dict | None = None,
) -> Path:
    """Write the adapter's weights with their metadata; `comfyui` writes the ComfyUI flavour (adapter_format.py).
    `expert` and `pair` ({file, payload_sha256}) mark one expert's file of a two-expert base."""
    return write_adapter(
        stored_tensors(adapter, dtype, comfyui),
        dict(adapter.config),
        path,
        base_identity,
        training=training,
        comfyui=comfyui,
        expert=expert,
        pair=pair,
    )


def load_adapter(path: str | Path, fingerprint: str | None = None) -> tuple[ImVideoEditAdapter, dict]:
    """Load and verify an adapter. With `fingerprint`, refuse one made for another base."""
    meta = read_adapter_metadata(path)
    if fingerprint is not None:
        check_base(meta, fingerprint, path)
    tensors, meta = read_verified_tensors(path)
    # Weights stored in fp16/bf16 are loaded into an fp32 adapter; the caller casts it to its compute dtype.
    adapter = ImVideoEditAdapter.from_config(meta["adapter_config"])
    missing, unexpected = adapter.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"{path} does not match its own adapter config ({len(missing)} missing, {len(unexpected)} unexpected weights).",
            "Export the adapter again with this version of imvedit.",
        )
    adapter.requires_grad_(False)
    adapter.base_identity = meta["base"]  # the pipeline refuses to pair it with another base
    return adapter, meta


def save_adapter_pair(
    adapters: dict, paths: dict, identities: dict, training: dict | None = None, **kwargs
) -> dict[str, Path]:
    """Write one adapter file per expert ({"high": ..., "low": ...}; either may be None); when both are given,
    each file names the other and the other's payload hash. `kwargs` (dtype, comfyui) go to `save_adapter`."""
    present = {e: a for e, a in adapters.items() if a is not None}
    hashes = {
        e: payload_sha256(stored_tensors(a, kwargs.get("dtype"), kwargs.get("comfyui", False)))
        for e, a in present.items()
    }
    written = {}
    for expert, adapter in present.items():
        other = "low" if expert == "high" else "high"
        pair = None
        if other in present:
            rel = Path(os.path.relpath(paths[other], Path(paths[expert]).parent)).as_posix()
            pair = {"file": rel, "payload_sha256": hashes[other]}
        written[expert] = save_adapter(
            adapter, paths[expert], identities[expert], training=training, expert=expert, pair=pair, **kwargs
        )
    return written
