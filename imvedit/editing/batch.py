"""Batch editing: many jobs, one model load, one failing job never stops the others.

A job file is YAML (a list of mappings, or `{jobs: [...]}`) or JSONL (one mapping per line). Each job
has `input`, `prompt` and `output`, and may set any other `EditConfig` option (`steps`, `seed`,
`strength`, ...); relative paths are relative to the job file. Options given on the command line are
the defaults every job starts from.

Under `accelerate launch` (or any launcher that sets `RANK` and `WORLD_SIZE`) each process takes
every WORLD_SIZE-th job starting at its RANK, on its own GPU (`LOCAL_RANK`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from ..errors import ImveditError, UsageError
from .edit import EditConfig, Editor, edit

JOB_FIELDS = {f.name for f in dataclasses.fields(EditConfig)}
PATH_FIELDS = ("input", "output", "save_mask")


def read_jobs(path: str | Path, defaults: dict) -> list[EditConfig]:
    """Parse a job file into configs (CLI options as defaults); any malformed row is a usage error."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Job file {path} does not exist.", "Check the path.")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        if path.suffix.lower() == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = yaml.safe_load(text)
            rows = rows.get("jobs") if isinstance(rows, dict) else rows
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise UsageError(
            f"Job file {path} is not valid {'JSONL' if path.suffix == '.jsonl' else 'YAML'}: {str(e).splitlines()[0]}",
            "Fix the file.",
        ) from e
    if not isinstance(rows, list) or not rows:
        raise UsageError(f"Job file {path} holds no jobs.", "Give a list of {input, prompt, output} mappings.")
    configs = []
    for i, row in enumerate(rows, 1):
        where = f"{path.name}, job {i}"
        if not isinstance(row, dict):
            raise UsageError(f"{where} is not a mapping.", "Each job needs input, prompt and output.")
        missing = [k for k in ("input", "prompt", "output") if not row.get(k)]
        unknown = sorted(set(row) - JOB_FIELDS)
        if missing or unknown:
            problem = f"lacks {', '.join(missing)}" if missing else f"has unknown keys {', '.join(unknown)}"
            raise UsageError(
                f"{where} {problem}.",
                f"Job keys: input, prompt, output and any of {', '.join(sorted(JOB_FIELDS - {'input', 'prompt', 'output'}))}.",
            )
        values = {**defaults, **row}
        for key in PATH_FIELDS:
            if values.get(key) is not None:
                p = Path(str(values[key])).expanduser()
                values[key] = p if p.is_absolute() else path.parent / p
        if not isinstance(values["prompt"], str):
            raise UsageError(f"{where}: prompt must be text.", "Quote it in the job file.")
        configs.append(EditConfig(**values))
    return configs


def jobs_for_inputs(inputs: list[Path], prompt: str, output: Path, defaults: dict) -> list[EditConfig]:
    """Several inputs, one prompt: `output` is a folder (created if missing); each result keeps its file name."""
    if output.exists() and not output.is_dir():
        raise UsageError(
            f"With several inputs, -o must be a folder; {output} is a file.", "Give a folder, e.g. -o edited/."
        )
    names = [Path(i).name for i in inputs]
    if len(set(names)) != len(names):
        raise UsageError(
            "Several inputs share a file name, so their outputs would collide.", "Use --jobs to name each output."
        )
    return [
        EditConfig(**{**defaults, "input": Path(i), "prompt": prompt, "output": output / Path(i).name}) for i in inputs
    ]


def shard(configs: list[EditConfig]) -> list[EditConfig]:
    """This process's share of the jobs under a distributed launcher (all of them otherwise)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and "LOCAL_RANK" in os.environ:
        for c in configs:
            if c.device is None and _cuda():
                c.device = f"cuda:{os.environ['LOCAL_RANK']}"
    return configs[rank::world]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_jobs(configs: list[EditConfig], progress: Callable[..., None] | None = None) -> Iterator[dict]:
    """Run each job; yield one record per job: status "ok" | "skipped" | "failed", output, seconds, ..."""
    editor = Editor()
    for config in configs:
        start = time.time()
        record = {"input": str(config.input), "output": str(config.output)}
        if Path(config.output).exists() and not config.overwrite:
            yield {**record, "status": "skipped", "reason": "output exists (pass --overwrite to redo it)"}
            continue
        try:
            result = edit(config, progress=progress, editor=editor)
        except ImveditError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - one job's crash (out of memory, a codec bug) must not end the batch
            error = f"unexpected {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        else:
            yield {**record, **result, "status": "ok"}
            continue
        yield {**record, "status": "failed", "error": error, "seconds": round(time.time() - start, 3)}
