"""The adapter file format: the trainable weights alone, as `.safetensors`, with what is needed to trust them.

This module knows tensors and metadata only, not the adapter model, so that the model (`imvedit.py`, whose
`from_pretrained` / `save_pretrained` read and write this format) can import it without a circle;
`adapter_file.py` builds and saves the model on top of it.

Metadata (all strings, as safetensors requires):
- `format` = "imvedit-adapter", `format_version` = "1";
- `adapter_config`: the adapter's constructor arguments (JSON);
- `base`: the base's identity (JSON: name, fingerprint of its transformer config, that config);
- `payload_sha256`: a hash of every tensor's name, dtype, shape and bytes, so corruption is caught;
- `training` (optional): a summary of the run that made it (JSON);
- for a base with two experts (Wan2.2-A14B) only: `expert` = "high" (the adapter of `transformer`) or "low"
  (of `transformer_2`), and `pair` (JSON: `file`, the other expert's adapter file relative to this file's
  folder, and that file's `payload_sha256`). The two files of a pair name each other, so loading either
  finds and verifies the other; `base` is then the identity of this file's own expert. A file with
  `expert` and no `pair` adapts its expert alone: the other expert runs unadapted.

The ComfyUI flavour (`imvedit export --format comfyui`) holds the same tensors under the names of ComfyUI's
own Wan model (`blocks.N.self_attn.q`, `blocks.N.ffn.0`, ...), prefixed `imvedit.` so ComfyUI's LoRA loader
never mistakes it for a LoRA, with `format` = "imvedit-adapter-comfyui" and the `modelspec.*` keys that
model browsers display. Its hash covers the tensors as stored; reading it gives back the native names.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import UsageError
from ..fsutil import atomic_path

FORMAT = "imvedit-adapter"
FORMAT_COMFYUI = "imvedit-adapter-comfyui"
FORMAT_VERSION = "1"

# Native adapter names <-> ComfyUI-style names, one pair of rules per kind of weight (tests check that the
# two tables invert each other for every adapter switch). In ComfyUI's Wan the self-attention is `self_attn`
# with projections q, k, v, o, the text cross-attention is `cross_attn` with the same four, and the
# feed-forward is `ffn.0` (in) and `ffn.2` (out).
_TO_COMFYUI = (
    (r"^sda\.(\d+)\.branches\.(\w+)\.([qkvo])\.(down|up)\.weight$", r"blocks.\1.self_attn.\2.\3.lora_\4.weight"),
    (r"^sda\.(\d+)\.aligned\.(down|up)\.weight$", r"blocks.\1.aligned.lora_\2.weight"),
    (r"^sda\.(\d+)\.gate_(\w+)\.(weight|bias)$", r"blocks.\1.gate.\2.\3"),
    (r"^sda\.(\d+)\.text_delta\.(\w+)\.(weight|bias)$", r"blocks.\1.text_delta.\2.\3"),
    (r"^ffn\.(\d+)\.in\.(down|up)\.weight$", r"blocks.\1.ffn.0.lora_\2.weight"),
    (r"^ffn\.(\d+)\.out\.(down|up)\.weight$", r"blocks.\1.ffn.2.lora_\2.weight"),
    (r"^cross\.(\d+)\.([qkvo])\.(down|up)\.weight$", r"blocks.\1.cross_attn.\2.lora_\3.weight"),
    (r"^gate_text\.(weight|bias)$", r"gate_text.\1"),
    # arch concat: the source's patch embedding and LoRA on the 3D attention's own projections
    (r"^patch_in\.weight$", r"patch_embedding_source.weight"),
    (r"^attn_lora\.(\d+)\.([qkvo])\.(down|up)\.weight$", r"blocks.\1.self_attn.\2.lora_\3.weight"),
)
_FROM_COMFYUI = (
    (r"^blocks\.(\d+)\.self_attn\.(\w+)\.([qkvo])\.lora_(down|up)\.weight$", r"sda.\1.branches.\2.\3.\4.weight"),
    (r"^blocks\.(\d+)\.aligned\.lora_(down|up)\.weight$", r"sda.\1.aligned.\2.weight"),
    (r"^blocks\.(\d+)\.gate\.(\w+)\.(weight|bias)$", r"sda.\1.gate_\2.\3"),
    (r"^blocks\.(\d+)\.text_delta\.(\w+)\.(weight|bias)$", r"sda.\1.text_delta.\2.\3"),
    (r"^blocks\.(\d+)\.ffn\.0\.lora_(down|up)\.weight$", r"ffn.\1.in.\2.weight"),
    (r"^blocks\.(\d+)\.ffn\.2\.lora_(down|up)\.weight$", r"ffn.\1.out.\2.weight"),
    (r"^blocks\.(\d+)\.cross_attn\.([qkvo])\.lora_(down|up)\.weight$", r"cross.\1.\2.\3.weight"),
    (r"^gate_text\.(weight|bias)$", r"gate_text.\1"),
    (r"^patch_embedding_source\.weight$", r"patch_in.weight"),
    (r"^blocks\.(\d+)\.self_attn\.([qkvo])\.lora_(down|up)\.weight$", r"attn_lora.\1.\2.\3.weight"),
)
COMFYUI_PREFIX = "imvedit."


def _rename(name: str, rules) -> str:
    for pattern, replacement in rules:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    raise UsageError(f"Adapter weight {name!r} has no known name.", "Export it again with this version of imvedit.")


def to_comfyui_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {COMFYUI_PREFIX + _rename(k, _TO_COMFYUI): v for k, v in tensors.items()}


def from_comfyui_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_rename(k.removeprefix(COMFYUI_PREFIX), _FROM_COMFYUI): v for k, v in tensors.items()}


def payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_tensors(state_dict: dict, dtype: torch.dtype | None = None, comfyui: bool = False) -> dict:
    """An adapter's state dict as a file holds it: in `dtype`, under ComfyUI's names when asked."""
    tensors = {k: (v.to(dtype) if dtype else v).detach().contiguous().cpu() for k, v in state_dict.items()}
    return to_comfyui_names(tensors) if comfyui else tensors


def write_adapter(
    tensors: dict[str, torch.Tensor],
    adapter_config: dict,
    path: str | Path,
    base_identity: dict,
    training: dict | None = None,
    comfyui: bool = False,
    expert: str | None = None,
    pair: dict | None = None,
) -> Path:
    """Write `tensors` (as `file_tensors` gives them) with their metadata; `comfyui` writes the ComfyUI flavour
    (see above). `expert` and `pair` ({file, payload_sha256}) mark one expert's file of a two-expert base."""
    metadata = {
        "format": FORMAT_COMFYUI if comfyui else FORMAT,
        "format_version": FORMAT_VERSION,
        "adapter_config": json.dumps(adapter_config),
        "base": json.dumps(base_identity),
        "payload_sha256": payload_sha256(tensors),
    }
    if training is not None:
        metadata["training"] = json.dumps(training)
    if expert is not None:
        metadata["expert"] = expert
    if pair is not None:
        metadata["pair"] = json.dumps(pair)
    if comfyui:  # what ComfyUI's and other UIs' model browsers show (the "modelspec" convention)
        metadata |= {
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": f"{base_identity.get('name')}/imvedit-adapter",
            "modelspec.implementation": "imvedit",
            "modelspec.title": Path(path).stem,
            "modelspec.description": "ImVideoEdit adapter: load it with the imvedit ComfyUI nodes, not as a LoRA.",
        }
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
    if meta.get("format") not in (FORMAT, FORMAT_COMFYUI):
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
    for key in ("adapter_config", "base", "training", "pair"):
        if key in out:
            out[key] = json.loads(out[key])
    return out


def read_verified_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """An adapter file's tensors (under the adapter's own names) and metadata, after checking that the
    tensors as stored match their recorded hash."""
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
    if meta["format"] == FORMAT_COMFYUI:
        tensors = from_comfyui_names(tensors)
    return tensors, meta


# ---------------------------------------------------------------------------------------------------
# Two experts: a pair of files that name each other
# ---------------------------------------------------------------------------------------------------

EXPERT_NAMES = {"high": "the high-noise expert (transformer)", "low": "the low-noise expert (transformer_2)"}
# A pair names its partner beside it, or in a sibling folder (a diffusers export's adapter/ and adapter_2/):
# never an absolute path or one that climbs further, so a file cannot make imvedit read elsewhere.
_PAIR_FILE = re.compile(r"(\.\./(?!\.\.?/)[\w.-]+/)?[\w.-]+\.safetensors")


def second_name(name: str) -> str:
    """The file name of the low-noise expert's adapter beside the high one's: adapter.safetensors -> adapter_2."""
    p = Path(name)
    return f"{p.stem}_2{p.suffix}"


def adapter_files(path: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """The adapter files that an adapter file stands for: {"high": path} for a one-expert base's adapter, or
    each expert's file of a pair, the partner found by name and checked to name this file back."""
    path = Path(path)
    meta = meta if meta is not None else read_adapter_metadata(path)
    expert = meta.get("expert", "high")
    if expert not in EXPERT_NAMES:
        raise UsageError(f"{path} names an unknown expert {expert!r}.", "Export it again with this version of imvedit.")
    pair = meta.get("pair")
    if pair is None:
        return {expert: path}
    other = "low" if expert == "high" else "high"
    name = str(pair.get("file", ""))
    if not _PAIR_FILE.fullmatch(name):
        raise UsageError(f"{path} names its pair as {name!r}, which is not a file beside it.", "Export the run again.")
    partner = Path(os.path.normpath(path.parent / name))
    if not partner.is_file():
        raise UsageError(
            f"{path} is the adapter of {EXPERT_NAMES[expert]}; its pair for {EXPERT_NAMES[other]}, {partner}, is missing.",
            "Keep both files of the pair together (imvedit export copies both).",
        )
    partner_meta = read_adapter_metadata(partner)
    if (
        partner_meta.get("expert") != other
        or partner_meta.get("payload_sha256") != pair.get("payload_sha256")
        or (partner_meta.get("pair") or {}).get("payload_sha256") != meta.get("payload_sha256")
    ):
        raise UsageError(
            f"{partner} is not the pair of {path}: the two files do not name each other's weights.",
            "Use the two adapter files one run wrote together (or one export of them).",
        )
    return {expert: path, other: partner}


def check_base(meta: dict, fingerprint: str, path: str | Path = "adapter") -> None:
    base = meta.get("base", {})
    if base.get("fingerprint") != fingerprint:
        raise UsageError(
            f"{path} was trained for base {base.get('name')!r} (fingerprint {base.get('fingerprint')}), "
            f"not for the chosen base (fingerprint {fingerprint}).",
            f"Run with --model {base.get('name')} or use an adapter trained for this base.",
        )
