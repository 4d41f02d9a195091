"""What every pretraining stage shares: its learning-rate schedule, its optimiser step and its log lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then a cosine from 1 down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def log_record(path: Path | None, record: dict) -> None:
    """Print one JSON line and append it to `path` (the stage's pretrain_log.jsonl), so a tail shows progress."""
    line = json.dumps(record)
    print(line, flush=True)
    if path is not None:
        with open(path, "a") as f:
            f.write(line + "\n")


def optimizer_step(loss: torch.Tensor, opt, sched, params: list) -> None:
    """Backward, clip the gradient norm to 1, step the optimiser and the schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
