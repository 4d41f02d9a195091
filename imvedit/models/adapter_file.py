"""The adapter file: the trainable weights alone, as `.safetensors`, with what is needed to trust them.

Metadata (all strings, as safetensors requires):
- `format` = "imvedit-adapter", `format_version` = "1";
- `adapter_config`: the adapter's constructor arguments (JSON);
- `base`: the base's identity (JSON: name, fingerprint of its transformer config, that config);
- `payload_sha256`: a hash of every tensor's name, dtype, shape and bytes, so corruption is caught;
- `training` (optional): a summary of the run that made it (JSON).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UsageError
from ..fsutil import atomic_path
from .imvedit import ImVideoEditAdapter

FORMAT = "imvedit-adapter"
FORMAT_VERSION = "1"


def payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_adapter(
    adapter: ImVideoEditAdapter,
    path: str | Path,
    base_identity: dict,
    training: dict | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    tensors = {k: (v.to(dtype) if dtype else v).detach().contiguous().cpu() for k, v in adapter.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adapter_config": json.dumps(dict(adapter.config)),
        "base": json.dumps(base_identity),
        "payload_sha256": payload_sha256(tensors),
    }
    if training is not None:
        metadata["training"] = json.dumps(training)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_adapter_metadata(path: str | Path) -> dict:
    """Metadata of an adapter file, decoded; raises a one-line error for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Adapter {path} does not exist.", "Give the path of an adapter .safetensors or a run folder.")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(
            f"{path} is not a readable safetensors file ({str(e).splitlines()[0] if str(e) else 'corrupt header'}).",
            "It may be truncated or not an adapter at all: export it again from its run folder.",
        ) from e
    if meta.get("format") != FORMAT:
        raise UsageError(
            f"{path} is a safetensors file but not an imvedit adapter.",
            "Use an adapter written by `imvedit train` or `imvedit export`.",
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise UsageError(
            f"{path} has adapter format {meta.get('format_version')}; this imvedit reads {FORMAT_VERSION}.",
            "Upgrade imvedit or re-export the adapter.",
        )
    out = dict(meta)
    for key in ("adapter_config", "base", "training"):
        if key in out:
            out[key] = json.loads(out[key])
    return out


def read_verified_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """An adapter file's tensors and metadata, after checking that the tensors match their recorded hash."""
    meta = read_adapter_metadata(path)
    try:
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UsageError(
            f"{path} is damaged ({str(e).splitlines()[0]}).", "Export the adapter again from its run folder."
        ) from e
    if payload_sha256(tensors) != meta.get("payload_sha256"):
        raise UsageError(
            f"{path} is corrupted: its weights do not match their recorded hash.",
            "Export the adapter again from its run folder.",
        )
    return tensors, meta


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


def check_base(meta: dict, fingerprint: str, path: str | Path = "adapter") -> None:
    base = meta.get("base", {})
    if base.get("fingerprint") != fingerprint:
        raise UsageError(
            f"{path} was trained for base {base.get('name')!r} (fingerprint {base.get('fingerprint')}), "
            f"not for the chosen base (fingerprint {fingerprint}).",
            f"Run with --model {base.get('name')} or use an adapter trained for this base.",
        )
