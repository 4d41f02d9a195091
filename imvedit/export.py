"""`imvedit export`: a run's adapter as a standalone, verified `.safetensors` file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .edit import resolve_adapter_path
from .errors import UsageError
from .fsutil import check_output_path
from .models.adapter_file import load_adapter, save_adapter

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ExportConfig:
    source: Path  # a run folder (holding adapter.safetensors) or an adapter file
    output: Path  # the .safetensors file to write
    dtype: str = "fp32"  # fp32, fp16 or bf16
    overwrite: bool = False  # replace an existing output

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}.")
        if Path(self.output).suffix != ".safetensors":
            raise UsageError(f"Output {self.output} should end in .safetensors.", "Name it e.g. my-edit.safetensors.")
        check_output_path(self.output, [resolve_adapter_path(self.source)], self.overwrite)


def export(config: ExportConfig) -> dict:
    config.validate()
    path = resolve_adapter_path(config.source)
    adapter, meta = load_adapter(path)  # verifies format and payload hash
    save_adapter(adapter, config.output, meta["base"], training=meta.get("training"), dtype=DTYPES[config.dtype])
    return {
        "output": str(config.output),
        "base": meta["base"]["name"],
        "parameters": sum(p.numel() for p in adapter.parameters()),
        "dtype": config.dtype,
    }
