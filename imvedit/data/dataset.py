"""The prepared folder read back: `PairsDataset` (one pair per item) and `BucketBatchSampler` (batches of one size).

Apart from `pairs.py`, which writes the folder, so that the latent cache (`cache.py`) can read a folder
without importing the writer that calls it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UsageError


def load_pairs_manifest(pairs_dir: str | Path) -> list[dict]:
    root = Path(pairs_dir)
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise UsageError(
            f"{root} is not a prepared pairs folder (no manifest.jsonl).", "Run `imvedit prepare SOURCE -o DIR` first."
        )
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise UsageError(f"{manifest} has no pairs.", "Run `imvedit prepare` again on a dataset with usable pairs.")
    return rows


class PairsDataset(torch.utils.data.Dataset):
    """A prepared folder as (source, target) images in [-1, 1], shaped (3, 1, h, w): one-frame videos; a
    video pair (manifest `frames` > 1, a strip of frames) is shaped (3, frames, h, w)."""

    def __init__(self, pairs_dir: str | Path):
        self.root = Path(pairs_dir)
        self.rows = load_pairs_manifest(self.root)

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, rel: str, frames: int = 1) -> torch.Tensor:
        with Image.open(self.root / rel) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        t = torch.from_numpy(a).permute(2, 0, 1)  # (3, frames * h, w)
        return t.unflatten(1, (frames, -1))

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        frames = r.get("frames", 1)
        return {
            "source": self._load(r["source"], frames),
            "target": self._load(r["target"], frames),
            "instruction": r["instruction"],
            "caption": r.get("caption") or r["instruction"],
        }

    def buckets(self) -> dict[tuple[int, int], list[int]]:
        out: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(self.rows):
            out.setdefault((r["width"], r["height"], r.get("frames", 1)), []).append(i)
        return out


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of pairs of one size, in an order fixed by (seed, epoch)."""

    def __init__(self, dataset: PairsDataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        self.num_replicas, self.rank = num_replicas, rank
        self.buckets = dataset.buckets()
        self.batch_size = batch_size
        self.seed = seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Order the batches of `epoch`; `skip` leaves out the first ones (a resumed run's data position)."""
        self.epoch, self.skip = epoch, skip

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        batches = []
        for key in sorted(self.buckets):
            idx = list(self.buckets[key])
            rng.shuffle(idx)
            batches += [idx[i : i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        rng.shuffle(batches)
        if self.num_replicas > 1:  # every process gets as many batches as the others (DDP steps together)
            batches = batches[: len(batches) // self.num_replicas * self.num_replicas][self.rank :: self.num_replicas]
        return batches

    def __iter__(self):
        return iter(self._batches()[self.skip :])

    def __len__(self) -> int:  # a full epoch of this process: the number of batches, whatever was skipped
        n = sum(math.ceil(len(v) / self.batch_size) for v in self.buckets.values())
        return n // self.num_replicas if self.num_replicas > 1 else n
