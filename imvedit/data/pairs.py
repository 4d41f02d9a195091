"""Image-pair datasets: read them from where users keep them and write the prepared folder (read back by dataset.py).

The prepared folder (format version 1), what `imvedit train` reads:

    PAIRS_DIR/
      manifest.jsonl    one pair per line: id, source, target (relative image paths), instruction,
                        caption (the target's description, or null), width, height
      images/           <id>_source.png, <id>_target.png, both resized to the same size (multiples of 16)
      prepare.json      what was read, with which options, how many pairs were kept and dropped, and why
      cache/            with --cache: VAE latents and text embeddings for one base (imvedit/data/cache.py)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import math
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import __version__
from ..errors import ImveditError, UsageError
from .cache import build_cache

# The reader lives in dataset.py; its names stay importable from here, where scripts import them.
from .dataset import BucketBatchSampler, PairsDataset, load_pairs_manifest  # noqa: F401

FORMAT_VERSION = 1
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "metadata.jsonl", "metadata.csv")
# Column names used by well-known edit datasets, tried in order when no mapping is given.
COLUMN_ALIASES = {
    "source": ("source", "source_image", "original_image", "source_img", "input_image"),
    "target": ("target", "target_image", "edited_image", "target_img", "output_image"),
    "instruction": ("instruction", "edit_prompt", "prompt", "edit_instruction"),
    "caption": ("caption", "edited_prompt", "target_caption", "output_caption"),
}
# The column layouts of well-known edit datasets, as their hub pages publish them. `--preset NAME` picks
# one; without it a preset whose columns are all present is detected, else COLUMN_ALIASES are tried.
PRESETS = {
    "instructpix2pix": {  # timbrooks/instructpix2pix-clip-filtered
        "source": "original_image", "target": "edited_image", "instruction": "edit_prompt", "caption": "edited_prompt",
    },
    "magicbrush": {"source": "source_img", "target": "target_img", "instruction": "instruction"},  # osunlp/MagicBrush
    "ultraedit": {  # BleachNick/UltraEdit
        "source": "source_image", "target": "edited_image", "instruction": "edit_prompt", "caption": "target_caption",
    },
    "vifeedit": {"source": "video", "target": "vife_edit_video", "instruction": "prompt"},  # metadata_vife.csv
}  # fmt: skip
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")  # a pair given as clips: their first frames are used
MAX_ASPECT = 4.0  # pairs wider or taller than 4:1 are dropped (extreme_aspect)
SIZE_TOLERANCE = 0.02  # source and target aspect ratios may differ by 2% (they are resized to one size)
SIZE_MULTIPLE = 16  # Wan's VAE stride (8) x patch size (2)
TOY_SOURCE = "toy"  # renders shapes-world image pairs (imvedit/toy/world.py) instead of reading files
TOY_SEED_OFFSET = 0  # training pairs use seeds [offset + seed * 1_000_003 + i]; the eval bench uses 10**9 and up


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
    toy_world: str = "hard"  # which shapes world toy pairs come from (imvedit/toy/world.py): "hard" or "simple"
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
            from ..toy.world import WORLDS

            if self.toy_world not in WORLDS:
                raise UsageError(f"Unknown world {self.toy_world!r}.", f"Use --world {' or '.join(WORLDS)}.")
        elif self.toy_frames != 1:
            raise UsageError("--toy-frames applies to the toy source only.", "Drop --toy-frames.")
        elif self.toy_world != "hard":
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


# ---------------------------------------------------------------------------------------------------
# Reading sources
# ---------------------------------------------------------------------------------------------------


def _resolve_columns(names: list[str], explicit: dict[str, str], preset: str | None = None) -> dict[str, str]:
    if preset is None:  # detect: the first preset whose columns are all there
        preset = next((k for k, cols in PRESETS.items() if set(cols.values()) <= set(names)), None)
    if preset is not None:
        explicit = {**{r: c for r, c in PRESETS[preset].items() if c in names or r != "caption"}, **explicit}
    mapping = {}
    for role, aliases in COLUMN_ALIASES.items():
        if role in explicit:
            if explicit[role] not in names:
                raise UsageError(
                    f"Column {explicit[role]!r} (for {role}) is not in the dataset.",
                    f"Columns are: {', '.join(names)}.",
                )
            mapping[role] = explicit[role]
            continue
        found = next((a for a in aliases if a in names), None)
        if found:
            mapping[role] = found
        elif role != "caption":
            raise UsageError(
                f"No {role} column found (looked for {', '.join(aliases)}).",
                f"Name it with --{role}-col; columns are: {', '.join(names)}.",
            )
    return mapping


def _rows_from_folder(root: Path) -> tuple[list[dict], Path]:
    manifest = next((root / n for n in MANIFEST_NAMES if (root / n).is_file()), None)
    if manifest is None:
        return None, root
    if manifest.suffix == ".csv":
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = []
        for i, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UsageError(f"{manifest}:{i} is not valid JSON ({e.msg}).", "Fix that line.") from e
    return rows, root


def _rows_from_hf(path: Path) -> list[dict]:
    import datasets

    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"Could not read the saved dataset in {path} ({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}).",
                "Save it again with datasets' save_to_disk.",
            ) from e
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    else:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".arrow"))
        if not files:
            raise UsageError(
                f"{path} holds no manifest (manifest.csv/.jsonl), saved dataset or parquet/arrow files.",
                "See `imvedit prepare --help` for the accepted layouts.",
            )
        kind = "parquet" if files[0].suffix == ".parquet" else "arrow"
        try:
            with _datasets_quiet():  # its own log line would precede ours; ours says the same and what to do
                ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
        except Exception as e:  # noqa: BLE001 - pyarrow and datasets raise many types for a bad file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(
                f"Could not read {path} as {kind} data ({first[:200]}).",
                "Check that the files are whole and really are that format.",
            ) from e
    return ds


def iter_source(config: PrepareConfig) -> tuple[Iterator[dict], int, dict]:
    """Rows as dicts with keys source/target (PIL image or path), instruction, caption."""
    if config.source == TOY_SOURCE:
        return (
            _toy_rows(config),
            config.limit,
            {"source": "toy", "target": "toy", "instruction": "toy", "caption": "toy"},
        )
    if is_hub_id(config.source):
        return _rows_from_hub(config)
    path = Path(config.source)
    rows, root = _rows_from_folder(path) if path.is_dir() else (None, path.parent)
    if rows is not None:
        names = list(rows[0].keys()) if rows else []
        if not rows:
            raise UsageError(f"The manifest in {path} has no rows.", "Add at least one pair.")
        mapping = _resolve_columns(names, config.columns, config.preset)
        table = rows
    else:
        table = _rows_from_hf(path)
        mapping = _resolve_columns(list(table.column_names), config.columns, config.preset)
        root = path if path.is_dir() else path.parent
    order = list(range(len(table)))
    if config.seed is not None:
        random.Random(config.seed).shuffle(order)

    return (_mapped(table[i], i, mapping, root) for i in order), len(table), mapping


@contextlib.contextmanager
def _datasets_quiet():
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def is_hub_id(source: str) -> bool:
    """'owner/name' that is not a path on this machine."""
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).exists()


def _rows_from_hub(config: PrepareConfig) -> tuple[Iterator[dict], int | None, dict]:
    """A hub dataset's split, whole or streamed. Images in hub datasets are decoded images (or bytes), so
    no local root applies; string paths in them are refused by `_image_ref`'s confinement."""
    import datasets

    try:
        ds = datasets.load_dataset(
            config.source, split=config.split, revision=config.revision, streaming=config.streaming
        )
    except Exception as e:  # noqa: BLE001 - datasets raises many types for "could not get it"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = (
            "The hub is switched off (HF_HUB_OFFLINE=1) and the dataset is not in the local cache: download it first."
            if offline
            else "Check the id, --split and --revision, and your network or hub login."
        )
        raise ImveditError(f"Could not load hub dataset {config.source!r} ({first}).", hint) from e
    if config.streaming:
        names = list(ds.column_names or next(iter(ds)).keys())
        mapping = _resolve_columns(names, config.columns, config.preset)
        if config.seed is not None:  # a shuffle buffer: the best a stream allows, and reproducible
            ds = ds.shuffle(seed=config.seed, buffer_size=10_000)
        rows = (_mapped(row, i, mapping, None) for i, row in enumerate(ds))
        return rows, config.limit, mapping
    mapping = _resolve_columns(list(ds.column_names), config.columns, config.preset)
    order = list(range(len(ds)))
    if config.seed is not None:
        random.Random(config.seed).shuffle(order)
    return (_mapped(ds[i], i, mapping, None) for i in order), len(ds), mapping


def _mapped(row: dict, index: int, mapping: dict, root: Path | None) -> dict:
    return {
        "index": index,
        "source": _image_ref(row[mapping["source"]], root),
        "target": _image_ref(row[mapping["target"]], root),
        "instruction": row[mapping["instruction"]],
        "caption": row.get(mapping["caption"]) if "caption" in mapping else None,
    }


def _toy_rows(config: PrepareConfig) -> Iterator[dict]:
    """Shapes-world pairs: the source image (or clip), the ground-truth edit, the instruction and the
    description of the edited result. Deterministic from the seed. A clip is one strip of its frames."""
    from ..toy.world import sample_example

    base = TOY_SEED_OFFSET + (config.seed or 0) * 1_000_003
    for i in range(config.limit):
        ex = sample_example(base + i, frames=config.toy_frames, size=config.toy_size, world=config.toy_world)
        yield {
            "index": i,
            "source": Image.fromarray(np.concatenate(list(ex.source), axis=0)),
            "target": Image.fromarray(np.concatenate(list(ex.target), axis=0)),
            "instruction": ex.instruction,
            "caption": ex.target_caption,
            "kind": ex.kind,
            "frames": config.toy_frames,
        }


def _image_ref(value, root: Path | None):
    if isinstance(value, str) and root is None:
        raise UsageError(
            f"The hub dataset's image column holds a path or URL ({value[:60]!r}), not an image; imvedit does not fetch those.",
            "Download the files and prepare from a local folder with a manifest.",
        )
    if isinstance(value, str):
        p = (root / value).resolve()
        if not p.is_relative_to(root.resolve()):
            raise UsageError(
                f"Image path {value!r} points outside the dataset folder.",
                "Keep image paths inside the dataset folder.",
            )
        return p
    if isinstance(value, dict) and value.get("bytes") is not None:  # datasets' Image feature, undecoded
        return io.BytesIO(value["bytes"])
    return value


def _open_rgb(ref) -> Image.Image | None:
    try:
        if isinstance(ref, Image.Image):
            return ref.convert("RGB")
        if isinstance(ref, Path) and ref.suffix.lower() in VIDEO_SUFFIXES:
            from ..video.io import iter_frames

            return Image.fromarray(next(iter(iter_frames(ref, max_frames=1))))
        with Image.open(ref) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, TypeError, AttributeError, UsageError, StopIteration):
        return None


# ---------------------------------------------------------------------------------------------------
# Writing the prepared folder
# ---------------------------------------------------------------------------------------------------


RESUME_FILE = ".resume.json"  # inside the partial folder: how far an interrupted prepare got
CHECKPOINT_EVERY = 64  # rows between resume checkpoints


def _options_key(config: PrepareConfig) -> str:
    """What must be equal for a partial folder to be continued rather than started over."""
    blob = json.dumps({**asdict(config), "overwrite": None, "output": None}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def prepare(config: PrepareConfig, progress: Callable[[int, int], None] | None = None) -> dict:
    """Validate, resize and write the pairs of `config.source` into `config.output`. Returns the summary.

    The pairs go into a hidden `.NAME.partial` folder beside the output, renamed into place when
    complete. An interrupted run (Ctrl-C, SIGTERM, a crash) leaves that folder with a checkpoint; the
    same command run again continues from it, and the result equals an uninterrupted run's.
    """
    config.validate()
    rows, total, mapping = iter_source(config)
    out = Path(config.output)
    tmp = out.with_name(f".{out.name}.partial")
    state = _resume_state(tmp, config)
    if state is None:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / "images").mkdir(parents=True)
        state = {"key": _options_key(config), "consumed": 0, "kept": 0, "dropped": {}, "manifest_bytes": 0}
    kept, dropped, consumed = state["kept"], Counter(state["dropped"]), state["consumed"]
    seen_path = tmp / ".seen"
    seen = set(bytes.fromhex(h) for h in seen_path.read_text().split()) if seen_path.exists() else set()

    def checkpoint():
        manifest.flush()
        with open(seen_path, "w") as f:
            f.write("\n".join(d.hex() for d in seen))
        record = {
            **state,
            "consumed": consumed,
            "kept": kept,
            "dropped": dict(dropped),
            "manifest_bytes": manifest.tell(),
        }
        (tmp / RESUME_FILE).write_text(json.dumps(record))

    try:
        with open(tmp / "manifest.jsonl", "a+", encoding="utf-8") as manifest:
            manifest.truncate(state["manifest_bytes"])  # drop a line half-written when the run was stopped
            manifest.seek(state["manifest_bytes"])
            for n, row in enumerate(rows, 1):
                if n <= consumed:
                    continue  # done before the interruption
                if config.limit is not None and kept >= config.limit:
                    break
                reason = _write_pair(row, tmp, kept, config, manifest, seen)
                if reason:
                    dropped[reason] += 1
                else:
                    kept += 1
                consumed = n
                if n % CHECKPOINT_EVERY == 0:
                    checkpoint()
                if progress:
                    progress(n, total)
            checkpoint()
        if kept == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UsageError(
                f"No usable pairs in {config.source} (dropped: {dict(dropped) or 'none'}).",
                "Check the images and instructions.",
            )
        summary = {
            "format_version": FORMAT_VERSION,
            "imvedit_version": __version__,
            "source": str(config.source),
            "columns": mapping,
            "preset": next(
                (
                    k
                    for k, cols in PRESETS.items()
                    if all(mapping.get(r) == c for r, c in cols.items() if r != "caption")
                ),
                None,
            ),
            "options": {k: v for k, v in asdict(config).items() if k not in ("source", "output")},
            "kept": kept,
            "dropped": dict(dropped),
        }
        if config.cache_model is not None:
            from ..models.bases import load_base

            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            base = load_base(config.cache_model, torch_dtype=torch.float32)
            for m in (base.vae, base.text_encoder):
                m.to(device)
            summary["cache"] = build_cache(tmp, base, progress=progress)
        (tmp / "prepare.json").write_text(json.dumps(summary, indent=2, default=str))
    except UsageError:
        shutil.rmtree(tmp, ignore_errors=True)  # bad data: a rerun would stop at the same place
        raise
    except BaseException:
        # Interrupted or crashed: keep the partial folder and its last checkpoint (taken between rows, so
        # it is consistent) for a rerun to continue from.
        raise
    (tmp / RESUME_FILE).unlink()
    seen_path.unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)  # validate() allowed it: --overwrite
    tmp.rename(out)
    return summary


def _resume_state(tmp: Path, config: PrepareConfig) -> dict | None:
    """The checkpoint of an interrupted run with the same options, or None (start over)."""
    path = tmp / RESUME_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return state if state.get("key") == _options_key(config) else None


def _write_pair(row: dict, root: Path, index: int, config: PrepareConfig, manifest, seen: set) -> str | None:
    """Write one pair; returns the reason it was dropped, or None. `seen` holds the digests of pairs kept."""
    instruction = (row["instruction"] or "").strip() if isinstance(row["instruction"], str) else ""
    if not instruction:
        return "empty_instruction"
    src, tgt = _open_rgb(row["source"]), _open_rgb(row["target"])
    if src is None or tgt is None:
        return "unreadable_image"
    frames = row.get("frames", 1)
    if frames > 1:  # a clip as a strip: sizes and buckets are those of one frame
        return _write_clip_pair(row, root, index, manifest, src, tgt, instruction, frames, config)
    if min(src.size + tgt.size) < config.min_side:
        return "too_small"
    if max(src.size) / min(src.size) > MAX_ASPECT:
        return "extreme_aspect"
    if abs(src.width / src.height - tgt.width / tgt.height) > SIZE_TOLERANCE * (src.width / src.height):
        return "size_mismatch"  # not the same picture framed the same way: resizing would distort one
    digest = hashlib.sha256(src.tobytes() + tgt.tobytes() + instruction.encode()).digest()
    if digest in seen:
        return "duplicate"
    seen.add(digest)
    w, h = bucket_size(*src.size, config.max_area)
    pid = f"{index:06d}"
    names = {}
    for role, im in (("source", src), ("target", tgt)):
        name = f"images/{pid}_{role}.png"
        im.resize((w, h), Image.Resampling.BICUBIC).save(root / name)
        names[role] = name
    caption = row.get("caption")
    record = {
        "id": pid,
        **names,
        "instruction": instruction,
        "caption": caption.strip() if isinstance(caption, str) and caption.strip() else None,
        "width": w,
        "height": h,
    }
    if "kind" in row:
        record["kind"] = row["kind"]
    manifest.write(json.dumps(record, ensure_ascii=False) + "\n")
    return None


def _write_clip_pair(row, root: Path, index: int, manifest, src, tgt, instruction: str, frames: int, config) -> None:
    """A rendered video pair (toy --toy-frames): written as strips at their size, one manifest row."""
    w, h = bucket_size(src.width, src.height // frames, config.max_area)
    pid = f"{index:06d}"
    names = {}
    for role, im in (("source", src), ("target", tgt)):
        name = f"images/{pid}_{role}.png"
        im.resize((w, h * frames), Image.Resampling.BICUBIC).save(root / name)
        names[role] = name
    record = {"id": pid, **names, "instruction": instruction, "caption": row.get("caption"), "width": w, "height": h}
    record.update({"frames": frames, "kind": row.get("kind")})
    manifest.write(json.dumps(record, ensure_ascii=False) + "\n")
    return None
