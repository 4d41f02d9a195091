"""`imvedit prepare`: check, resize and write a dataset's image pairs (read by sources.py) into the prepared
folder that `imvedit train` reads (through dataset.py).

The prepared folder (format version 1):

    PAIRS_DIR/
      manifest.jsonl    one pair per line: id, source, target (relative image paths), instruction,
                        caption (the target's description, or null), width, height
      images/           <id>_source.png, <id>_target.png, both resized to the same size (multiples of 16)
      prepare.json      what was read, with which options, how many pairs were kept and dropped, and why
      cache/            with --cache: VAE latents and text embeddings for one base (imvedit/data/cache.py)
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .. import __version__
from ..errors import UsageError
from ..models.bases import load_base
from ..toy.world import DEFAULT_WORLD, WORLDS
from .cache import build_cache
from .sources import PRESETS, TOY_SOURCE, Source, is_hub_id, open_rgb, read_source

FORMAT_VERSION = 1
MAX_ASPECT = 4.0  # pairs wider or taller than 4:1 are dropped (extreme_aspect)
SIZE_TOLERANCE = 0.02  # source and target aspect ratios may differ by 2% (they are resized to one size)
SIZE_MULTIPLE = 16  # Wan's VAE stride (8) x patch size (2)
RESUME_FILE = ".resume.json"  # inside the partial folder: how far an interrupted prepare got
SEEN_FILE = ".seen"  # beside it: the digests of the pairs kept so far, one per line
CHECKPOINT_EVERY = 64  # rows between resume checkpoints


@dataclass
class PrepareConfig:
    # a folder with a manifest (csv/jsonl), a saved Hugging Face dataset, parquet/arrow file(s), a hub
    # dataset id ("owner/name"), or "toy"
    source: str
    output: Path  # the prepared folder to write
    limit: int | None = None  # keep at most this many pairs (after a seeded shuffle when seed is set)
    seed: int | None = None  # shuffle the pairs with this seed before applying limit
    max_area: int = 480 * 832  # pairs larger than this many pixels are downscaled, aspect kept
    min_side: int = 16  # images with a side shorter than this are dropped
    overwrite: bool = False  # replace an existing output folder
    columns: dict[str, str] = field(default_factory=dict)  # explicit mapping, e.g. {"source": "before"}
    preset: str | None = None  # a known dataset's column layout (PRESETS); detected when not given
    toy_size: int = 64  # canvas size of rendered toy pairs
    # frames per rendered toy pair: 1 = image pairs; 4k + 1 (e.g. 17) = video pairs, each clip stored as one
    # lossless PNG strip of its frames stacked top to bottom (for the video-trained `concat` baseline)
    toy_frames: int = 1
    toy_world: str = DEFAULT_WORLD  # which shapes world toy pairs come from (imvedit/toy/world.py WORLDS)
    cache_model: str | None = None  # also cache VAE latents and text embeddings made by this base
    split: str = "train"  # hub datasets: the split to read
    revision: str | None = None  # hub datasets: a branch, tag or commit (pin it for reproducible data)
    streaming: bool = False  # hub datasets: read rows as they download instead of fetching the whole set

    def validate(self) -> None:
        if self.source == TOY_SOURCE:
            if self.limit is None:
                raise UsageError("The toy source is endless.", "Say how many pairs to render with --limit N.")
            if self.toy_frames < 1 or (self.toy_frames - 1) % 4:
                raise UsageError(f"--toy-frames must be 1 or 4k + 1 (e.g. 17), got {self.toy_frames}.")

            if self.toy_world not in WORLDS:
                raise UsageError(f"Unknown world {self.toy_world!r}.", f"Use --world {' or '.join(WORLDS)}.")
        elif self.toy_frames != 1:
            raise UsageError("--toy-frames applies to the toy source only.", "Drop --toy-frames.")
        elif self.toy_world != DEFAULT_WORLD:
            raise UsageError("--world applies to the toy source only.", "Drop --world.")
        elif not Path(self.source).exists() and not is_hub_id(self.source):
            raise UsageError(
                f"Dataset {self.source} does not exist.",
                "Give a folder with a manifest, a saved dataset, parquet files, or a hub id such as osunlp/MagicBrush.",
            )
        if (self.streaming or self.revision) and not is_hub_id(self.source):
            raise UsageError("--streaming and --revision apply to hub datasets only.", "Drop them for local data.")
        if self.preset is not None and self.preset not in PRESETS:
            raise UsageError(f"Unknown preset {self.preset!r}.", f"Use one of {', '.join(PRESETS)}, or give --*-col.")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1, got {self.limit}.")
        if self.max_area < SIZE_MULTIPLE * SIZE_MULTIPLE:
            raise UsageError(f"--max-area must be at least {SIZE_MULTIPLE**2}, got {self.max_area}.")
        out = Path(self.output)
        if out.exists() and any(out.iterdir()) and not self.overwrite:
            raise UsageError(
                f"Output folder {out} is not empty.", "Pass --overwrite to replace it, or choose another folder."
            )
        if not out.parent.exists():
            raise UsageError(f"Folder {out.parent} does not exist.", "Create it first.")


def bucket_size(width: int, height: int, max_area: int, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """The largest size with the same aspect, at most `max_area` pixels and no larger than the image,
    with both sides multiples of `multiple`."""
    scale = min(1.0, math.sqrt(max_area / (width * height)))
    w = max(multiple, int(width * scale) // multiple * multiple)
    h = max(multiple, int(height * scale) // multiple * multiple)
    return w, h


def prepare(config: PrepareConfig, progress: Callable[..., None] | None = None) -> dict:
    """Validate, resize and write the pairs of `config.source` into `config.output`. Returns the summary.
    `progress(rows_read, total)` after each row (total None when unknown), then `progress(done, n, info="cache")`
    while the cache is made.

    The pairs go into a hidden `.NAME.partial` folder beside the output, renamed into place when
    complete. An interrupted run (Ctrl-C, SIGTERM, a crash) leaves that folder with a checkpoint; the
    same command run again continues from it, and the result equals an uninterrupted run's.
    """
    config.validate()
    source = read_source(config)
    out = Path(config.output)
    tmp = out.with_name(f".{out.name}.partial")
    done = _Progress.start(tmp, config)
    try:
        with open(tmp / "manifest.jsonl", "a+", encoding="utf-8") as manifest:
            manifest.truncate(done.manifest_bytes)  # drop a line half-written when the run was stopped
            manifest.seek(done.manifest_bytes)
            for n, row in enumerate(source.rows, 1):
                if n <= done.consumed:
                    continue  # done before the interruption
                if config.limit is not None and done.kept >= config.limit:
                    break
                reason = _write_pair(row, tmp, done.kept, config, manifest, done.seen)
                if reason:
                    done.dropped[reason] += 1
                else:
                    done.kept += 1
                done.consumed = n
                if n % CHECKPOINT_EVERY == 0:
                    done.save(tmp, manifest)
                if progress:
                    progress(n, source.total)
            done.save(tmp, manifest)
        if done.kept == 0:
            raise UsageError(
                f"No usable pairs in {config.source} (dropped: {dict(done.dropped) or 'none'}).",
                "Check the images and instructions.",
            )
        summary = _summary(config, source, done)
        if config.cache_model is not None:
            summary["cache"] = _cache(tmp, config.cache_model, progress)
        (tmp / "prepare.json").write_text(json.dumps(summary, indent=2, default=str))
    except UsageError:
        shutil.rmtree(tmp, ignore_errors=True)  # bad data: a rerun would stop at the same place
        raise
    # Any other failure (Ctrl-C, SIGTERM, a crash) keeps the partial folder and its last checkpoint, taken
    # between rows so it is consistent, for a rerun to continue from.
    done.finish(tmp)
    if out.exists():
        shutil.rmtree(out)  # validate() allowed it: --overwrite
    tmp.rename(out)
    return summary


def _options_key(config: PrepareConfig) -> str:
    """What must be equal for a partial folder to be continued rather than started over."""
    blob = json.dumps({**asdict(config), "overwrite": None, "output": None}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class _Progress:
    """How far a prepare got. Saved in the partial folder every CHECKPOINT_EVERY rows (RESUME_FILE, and the
    kept pairs' digests in SEEN_FILE), so that the same command run again continues from there."""

    key: str  # `_options_key`: a checkpoint of other options is not continued
    consumed: int = 0  # source rows read
    kept: int = 0  # pairs written
    dropped: Counter = field(default_factory=Counter)  # reason -> rows dropped for it
    manifest_bytes: int = 0  # manifest.jsonl's length at the checkpoint: anything after it is half-written
    seen: set[bytes] = field(default_factory=set)  # digests of the pairs kept, so that duplicates are dropped

    @classmethod
    def start(cls, tmp: Path, config: PrepareConfig) -> _Progress:
        """The checkpoint of an interrupted run with the same options, or a fresh partial folder."""
        key, path = _options_key(config), tmp / RESUME_FILE
        try:
            state = json.loads(path.read_text()) if path.is_file() else {}
        except json.JSONDecodeError:
            state = {}
        if state.get("key") == key:
            seen_file = tmp / SEEN_FILE
            seen = {bytes.fromhex(h) for h in seen_file.read_text().split()} if seen_file.exists() else set()
            dropped = Counter(state["dropped"])
            return cls(key, state["consumed"], state["kept"], dropped, state["manifest_bytes"], seen)
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "images").mkdir(parents=True)
        return cls(key)

    def save(self, tmp: Path, manifest) -> None:
        manifest.flush()
        self.manifest_bytes = manifest.tell()
        (tmp / SEEN_FILE).write_text("\n".join(d.hex() for d in self.seen))
        record = {"key": self.key, "consumed": self.consumed, "kept": self.kept, "dropped": dict(self.dropped)}
        (tmp / RESUME_FILE).write_text(json.dumps({**record, "manifest_bytes": self.manifest_bytes}))

    def finish(self, tmp: Path) -> None:
        """The folder is complete: no checkpoint stays in it."""
        (tmp / RESUME_FILE).unlink()
        (tmp / SEEN_FILE).unlink(missing_ok=True)


def _summary(config: PrepareConfig, source: Source, done: _Progress) -> dict:
    """prepare.json: what was read, with which options, and how many pairs were kept and dropped, and why."""
    return {
        "format_version": FORMAT_VERSION,
        "imvedit_version": __version__,
        "source": str(config.source),
        "columns": source.columns,
        "preset": source.preset,
        "options": {k: v for k, v in asdict(config).items() if k not in ("source", "output")},
        "kept": done.kept,
        "dropped": dict(done.dropped),
    }


def _cache(folder: Path, model: str, progress: Callable[..., None] | None) -> dict:
    """The latent cache of the folder's pairs, made by `model`'s VAE and text encoder (cache.py)."""

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base = load_base(model, torch_dtype=torch.float32)
    for m in (base.vae, base.text_encoder):
        m.to(device)
    return build_cache(folder, base, progress=progress)


def _write_pair(row: dict, root: Path, index: int, config: PrepareConfig, manifest, seen: set) -> str | None:
    """Write one pair; returns the reason it was dropped, or None. `seen` holds the digests of pairs kept.
    A clip pair (toy --toy-frames) is a strip of its frames: the checks and the size are one frame's."""
    instruction = row["instruction"].strip() if isinstance(row["instruction"], str) else ""
    if not instruction:
        return "empty_instruction"
    src, tgt = open_rgb(row["source"]), open_rgb(row["target"])
    if src is None or tgt is None:
        return "unreadable_image"
    frames = row.get("frames", 1)
    (sw, sh), (tw, th) = (src.width, src.height // frames), (tgt.width, tgt.height // frames)
    if min(sw, sh, tw, th) < config.min_side:
        return "too_small"
    if max(sw, sh) / min(sw, sh) > MAX_ASPECT:
        return "extreme_aspect"
    if abs(sw / sh - tw / th) > SIZE_TOLERANCE * (sw / sh):
        return "size_mismatch"  # not the same picture framed the same way: resizing would distort one
    digest = hashlib.sha256(src.tobytes() + tgt.tobytes() + instruction.encode()).digest()
    if digest in seen:
        return "duplicate"
    seen.add(digest)
    w, h = bucket_size(sw, sh, config.max_area)
    pid = f"{index:06d}"
    names = {}
    for role, im in (("source", src), ("target", tgt)):
        name = f"images/{pid}_{role}.png"
        im.resize((w, h * frames), Image.Resampling.BICUBIC).save(root / name)
        names[role] = name
    caption = row.get("caption")
    caption = caption.strip() if isinstance(caption, str) and caption.strip() else None
    record = {"id": pid, **names, "instruction": instruction, "caption": caption, "width": w, "height": h}
    if frames > 1:
        record["frames"] = frames
    if "kind" in row:
        record["kind"] = row["kind"]
    manifest.write(json.dumps(record, ensure_ascii=False) + "\n")
    return None
