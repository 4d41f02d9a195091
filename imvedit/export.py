"""`imvedit export`: a trained adapter as artefacts other tools load, each checked on the way out and in.

Formats:
- `adapter` (default): the adapter `.safetensors` (metadata: format version, adapter config, base
  identity and fingerprint, training summary, payload sha256) and a model card `README.md`, in a folder;
  or the file alone when the output ends in `.safetensors`.
- `diffusers`: a complete pipeline folder (the base's components and `adapter/`) that
  `ImVideoEditPipeline.from_pretrained(OUT)` loads, and `diffusers.DiffusionPipeline.from_pretrained(OUT,
  custom_pipeline="pipeline", trust_remote_code=True)` too: its `pipeline.py` only imports the installed
  imvedit. `--link-base` links the base's component folders instead of copying them.
- `comfyui`: the adapter under ComfyUI's Wan names (`models/imvedit/NAME.safetensors`), the custom node
  package that loads it (`custom_nodes/imvedit/`, which imports the installed imvedit's `imvedit.comfyui`)
  and a model card; or the file alone when the output ends in `.safetensors`.

`inspect_adapter` says what an adapter file is, and whether its weights still match their hash.

The adapters of a two-expert base (Wan2.2-A14B) travel as their pair in every format: `adapter.safetensors`
and `adapter_2.safetensors`, `NAME.safetensors` and `NAME_2.safetensors` (ComfyUI, or a file alone), or
`adapter/` and `adapter_2/` (diffusers). Each file written names the other's new hash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .comfyui import NODE_SHIM
from .errors import ImveditError, UsageError
from .fsutil import check_output_dir, check_output_path, staged_dir
from .models.adapter_file import (
    EXPERT_NAMES,
    FORMAT_COMFYUI,
    adapter_files,
    check_base,
    load_adapter,
    payload_sha256,
    read_adapter_metadata,
    read_verified_tensors,
    save_adapter,
    save_adapter_pair,
    second_name,
    to_comfyui_names,
)
from .models.bases import SHAPES_WAN, SHAPES_WAN_DIR, config_fingerprint, load_base
from .models.dtypes import DTYPES
from .models.loading import ADAPTER_FILE, EXPORTED_ADAPTER, EXPORTED_ADAPTER_2, check_experts, resolve_adapter_path
from .pipeline.pipeline_imvedit import ImVideoEditPipeline
from .training.model_card import model_card  # the card a training run writes: one writer, so both say the same

FORMATS = ("adapter", "diffusers", "comfyui")
EMA_FILE = "adapter_ema.safetensors"  # beside adapter.safetensors in a run trained with --ema-decay
EMA_FILE_2 = second_name(EMA_FILE)  # the low-noise expert's, in a two-expert run
# The file `DiffusionPipeline.from_pretrained(..., custom_pipeline="pipeline")` reads: no model code, only
# the installed imvedit's pipeline, so the folder never carries code of its own.
PIPELINE_SHIM = (
    '"""Lets `diffusers.DiffusionPipeline.from_pretrained` find the ImVideoEdit pipeline of the installed imvedit."""\n'
    "\nfrom imvedit.pipeline.pipeline_imvedit import ImVideoEditPipeline  # noqa: F401\n"
)


@dataclass
class ExportConfig:
    source: Path  # a run folder (holding adapter.safetensors) or an adapter file
    output: Path  # a folder to create; with --format adapter or comfyui, a .safetensors path writes the file alone
    format: str = "adapter"  # adapter, diffusers or comfyui
    dtype: str = "fp32"  # the adapter's weights as written: fp32, fp16 or bf16 (diffusers: the base's too)
    model: str | None = None  # diffusers: the base to package (default: the one the adapter was trained for)
    link_base: bool = False  # diffusers: symlink the base's component folders instead of copying them
    ema: bool = False  # export the run's EMA weights (adapter_ema.safetensors, from `train --ema-decay`)
    overwrite: bool = False  # replace an existing output

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}.")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        if self.link_base and self.format != "diffusers":
            raise UsageError("--link-base only applies to --format diffusers.")
        if self.model is not None and self.format != "diffusers":
            raise UsageError("--model only applies to --format diffusers (an adapter file names its base).")
        source = self.adapter_path
        if self.ema and not source.is_file():
            raise UsageError(
                f"--ema needs a run folder holding {EMA_FILE}; {self.source} has none.",
                "Train with --ema-decay (e.g. 0.999), or export without --ema.",
            )
        if self.writes_single_file:
            check_output_path(self.output, [source], self.overwrite)
            if source.is_file() and read_adapter_metadata(source).get("pair") is not None:
                check_output_path(
                    Path(self.output).with_name(second_name(Path(self.output).name)), [source], self.overwrite
                )
        else:
            if Path(self.output).suffix == ".safetensors":
                raise UsageError(
                    f"--format {self.format} writes a folder, not {self.output}.",
                    "Give a folder name, e.g. -o my-edit.",
                )
            check_output_dir(self.output, [source], self.overwrite)

    @property
    def adapter_path(self) -> Path:
        if not self.ema:
            return resolve_adapter_path(self.source)
        only_low = not (Path(self.source) / EMA_FILE).is_file() and (Path(self.source) / EMA_FILE_2).is_file()
        return Path(self.source) / (EMA_FILE_2 if only_low else EMA_FILE)

    @property
    def writes_single_file(self) -> bool:
        return self.format in ("adapter", "comfyui") and Path(self.output).suffix == ".safetensors"


def export(config: ExportConfig) -> dict:
    config.validate()
    # every file (both of a pair) verified for format and payload hash before anything is written
    loaded = {e: load_adapter(p) for e, p in adapter_files(config.adapter_path).items()}
    adapters = {e: a for e, (a, _) in loaded.items()}
    metas = {e: m for e, (_, m) in loaded.items()}
    meta = next(iter(metas.values()))
    dtype = DTYPES[config.dtype]
    out = Path(config.output)
    result = {
        "output": str(out),
        "format": config.format,
        "base": meta["base"]["name"],
        "parameters": sum(p.numel() for a in adapters.values() for p in a.parameters()),
        "dtype": config.dtype,
    }
    comfyui = config.format == "comfyui"
    if config.writes_single_file:
        written = _write(adapters, metas, _names(out), dtype=dtype, comfyui=comfyui)
    elif comfyui:
        with staged_dir(out) as tmp:
            weights = tmp / "models" / "imvedit" / f"{out.name}.safetensors"
            weights.parent.mkdir(parents=True)
            written = _write(adapters, metas, _names(weights), dtype=dtype, comfyui=True)
            node = tmp / "custom_nodes" / "imvedit"
            node.mkdir(parents=True)
            (node / "__init__.py").write_text(NODE_SHIM)
            (tmp / "README.md").write_text(
                model_card(meta, result["parameters"], config.dtype, "comfyui", weights.name)
            )
        written = _moved(written, tmp, out)
    elif config.format == "adapter":
        with staged_dir(out) as tmp:
            written = _write(adapters, metas, _names(tmp / ADAPTER_FILE), dtype=dtype)
            (tmp / "README.md").write_text(model_card(meta, result["parameters"], config.dtype, "adapter"))
        written = _moved(written, tmp, out)
    else:
        result["base_linked"] = config.link_base
        written = {e: str(out / rel) for e, rel in _export_diffusers(config, adapters, metas, result).items()}
    if "expert" in meta:  # a two-expert base's adapters: where each expert's file now is
        result["experts"] = written
    return result


def _names(high: Path) -> dict[str, Path]:
    """Where each expert's file goes: the high (or only) one at `high`, the low one beside it with _2."""
    return {"high": high, "low": high.with_name(second_name(high.name))}


def _write(adapters: dict, metas: dict, paths: dict, **kwargs) -> dict[str, str]:
    """The adapter file(s) again: one-expert adapters as one file, an expert's as a pair that names itself."""
    first = next(iter(adapters))
    training = metas[first].get("training")
    if "expert" not in metas[first]:
        save_adapter(adapters[first], paths["high"], metas[first]["base"], training=training, **kwargs)
        return {"high": str(paths["high"])}
    identities = {e: m["base"] for e, m in metas.items()}
    written = save_adapter_pair(adapters, {e: paths[e] for e in adapters}, identities, training, **kwargs)
    return {e: str(p) for e, p in written.items()}


def _moved(written: dict, staged: Path, out: Path) -> dict[str, str]:
    """The paths of files written into a staged folder, once that folder is in place."""
    return {e: str(out / Path(p).relative_to(staged)) for e, p in written.items()}


def _export_diffusers(config: ExportConfig, adapters: dict, metas: dict, result: dict) -> dict[str, str]:

    dtype = DTYPES[config.dtype]
    meta = next(iter(metas.values()))
    base_name = config.model or meta["base"]["name"]
    result["base"] = base_name
    folders = {"high": "transformer", "low": "transformer_2"}
    for e, a in adapters.items():
        a.base_identity = metas[e]["base"]
    with staged_dir(config.output) as tmp:
        if config.link_base:
            folder = _base_folder(base_name)
            from diffusers import WanTransformer3DModel

            base_index = json.loads((folder / "model_index.json").read_text())
            two = base_index.get("transformer_2", [None])[0] is not None
            check_experts(meta, 2 if two else 1, config.adapter_path, base_name)
            for e in adapters:
                expert_config = WanTransformer3DModel.load_config(folder, subfolder=folders[e])
                check_base(metas[e], config_fingerprint(expert_config))
            # the components of a Wan base, linked; the base pipeline's own options do not apply here
            index = {
                "_class_name": ImVideoEditPipeline.__name__,
                "_diffusers_version": base_index.get("_diffusers_version"),
                **({"boundary_ratio": base_index.get("boundary_ratio")} if two else {}),
            }
            for name in (
                "scheduler",
                "text_encoder",
                "tokenizer",
                "transformer",
                "vae",
                *(("transformer_2",) if two else ()),
            ):
                if not (folder / name).is_dir():
                    raise UsageError(
                        f"Base folder {folder} has no {name}/.", "Point --model at a complete diffusers Wan folder."
                    )
                os.symlink((folder / name).resolve(), tmp / name, target_is_directory=True)
                index[name] = base_index[name]
            for e, a in adapters.items():
                sub = str(EXPORTED_ADAPTER.parent if e == "high" else EXPORTED_ADAPTER_2.parent)
                a.save_pretrained(tmp / sub)
                index[sub] = [type(a).__module__, type(a).__name__]  # as diffusers itself records it
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        else:
            # the transformers and text encoder in the chosen dtype; the VAE stays fp32, as Wan's pipelines run it
            base = load_base(base_name, torch_dtype=None if dtype == torch.float32 else dtype)
            check_experts(meta, len(base.experts), config.adapter_path, base_name)
            for e in adapters:
                check_base(metas[e], base.identity_of(e)["fingerprint"])
            pipe = ImVideoEditPipeline.from_base(base, adapters.get("high"), adapters.get("low"))
            pipe.save_pretrained(str(tmp))
        # the adapters' weights again, in the export dtype and with the run's training summary
        written = _write(
            adapters, metas, {"high": tmp / EXPORTED_ADAPTER, "low": tmp / EXPORTED_ADAPTER_2}, dtype=dtype
        )
        (tmp / "pipeline.py").write_text(PIPELINE_SHIM)
        (tmp / "README.md").write_text(model_card(meta, result["parameters"], config.dtype, "diffusers"))
    return {e: str(Path(p).relative_to(tmp)) for e, p in written.items()}


def _base_folder(name: str) -> Path:
    """The base's diffusers folder on disk, for --link-base."""

    if name == SHAPES_WAN:
        return SHAPES_WAN_DIR
    path = Path(name).expanduser()
    if (path / "model_index.json").is_file():
        return path.resolve()
    if name.count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(name, local_files_only=True))
        except Exception as e:  # noqa: BLE001 - any miss means the same thing to the user
            raise UsageError(
                f"--link-base needs the base on disk, and {name} is not in the local hub cache.",
                f"Download it first (`hf download {name}`) or export without --link-base.",
            ) from e
    raise UsageError(
        f"--link-base needs a base folder on disk; {name!r} has none.", "Export without --link-base to copy the base."
    )


def inspect_adapter(path: str | Path) -> dict:
    """What an adapter file is: base, config, parameters, dtype, training summary and hash status; for a
    two-expert base, each expert's file too (`experts`), and whether the pair still names each other."""
    path = resolve_adapter_path(path)
    meta = read_adapter_metadata(path)
    info = _inspect_file(path, meta)
    if "expert" not in meta:
        return info
    try:
        files = adapter_files(path, meta)
    except ImveditError as e:
        files = {meta["expert"]: path}
        info["hash_ok"], info["problem"] = False, e.message
    info["experts"] = [_inspect_file(p) for _, p in sorted(files.items())]  # high, then low
    if meta.get("pair") is None:
        other = "low" if meta["expert"] == "high" else "high"
        info["note"] = f"adapts {EXPERT_NAMES[meta['expert']]} alone; {EXPERT_NAMES[other]} runs unadapted"
    info["hash_ok"] = info["hash_ok"] and all(x["hash_ok"] for x in info["experts"])
    return info


def _inspect_file(path: Path, meta: dict | None = None) -> dict:
    meta = meta or read_adapter_metadata(path)
    try:
        tensors, _ = read_verified_tensors(path)
        hash_ok, problem = True, None
    except ImveditError as e:
        tensors, hash_ok, problem = None, False, e.message
    info = {
        "path": str(path),
        "format": meta["format"],
        "format_version": meta["format_version"],
        "base": meta["base"]["name"],
        "base_fingerprint": meta["base"]["fingerprint"],
        "adapter_config": {k: v for k, v in meta["adapter_config"].items() if not k.startswith("_")},
        "training": meta.get("training"),
        "payload_sha256": meta.get("payload_sha256"),
        "hash_ok": hash_ok,
    }
    if "expert" in meta:
        info["expert"], info["pair"] = meta["expert"], meta.get("pair")
    if tensors is not None:
        info["parameters"] = sum(t.numel() for t in tensors.values())
        info["dtype"] = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
        stored = to_comfyui_names(tensors) if meta["format"] == FORMAT_COMFYUI else tensors  # as the file holds them
        info["computed_sha256"] = payload_sha256(stored)
    if problem:
        info["problem"] = problem
    return info
