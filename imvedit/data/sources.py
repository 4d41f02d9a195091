"""Reading image-pair datasets from where users keep them, for `imvedit prepare` (prepare.py writes them out).

A source is a folder with a manifest (csv/jsonl), a saved Hugging Face dataset, parquet/arrow file(s), a hub
dataset id ("owner/name"), or "toy" (rendered shapes-world pairs). Each is read as rows of one shape,
`{index, source, target, instruction, caption}`, whatever its columns are called: a preset names a known
dataset's columns, or they are found among common aliases. Image paths in a local dataset stay inside its
folder; a hub dataset's must be images, never paths or URLs (imvedit fetches nothing).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImveditError, UsageError
from ..toy.world import sample_example
from ..video.io import iter_frames

if TYPE_CHECKING:
    import datasets

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
TOY_SOURCE = "toy"  # renders shapes-world image pairs (imvedit/toy/world.py) instead of reading files
TOY_SEED_OFFSET = 0  # training pairs use seeds [offset + seed * 1_000_003 + i]; the eval bench uses 10**9 and up


@dataclass
class Source:
    """A dataset as `prepare` reads it."""

    # {index, source, target (a PIL image, a path or bytes), instruction, caption}; toy rows add kind and frames
    rows: Iterator[dict]
    total: int | None  # how many rows there are; for a stream, the --limit (None: unknown until read)
    columns: dict[str, str]  # role (source, target, instruction, caption) -> the dataset's column
    preset: str | None  # the preset whose layout was used: given with --preset or detected; None for aliases


def is_hub_id(source: str) -> bool:
    """'owner/name' that is not a path on this machine."""
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and not Path(source).exists()


def read_source(config) -> Source:
    """The rows of `config.source`; `config` is a `PrepareConfig` (prepare.py), of which reading uses the
    source, its columns or preset, seed and limit, the hub's split, revision and streaming, and the toy options.
    With a seed the rows come shuffled (a stream: through a seeded buffer)."""
    if config.source == TOY_SOURCE:
        columns = dict.fromkeys(("source", "target", "instruction", "caption"), "toy")
        return Source(_toy_rows(config), config.limit, columns, None)
    if is_hub_id(config.source):
        return _read_hub(config)
    path = Path(config.source)
    root = path if path.is_dir() else path.parent
    table = _rows_from_folder(path) if path.is_dir() else None
    if table is not None:
        if not table:
            raise UsageError(f"The manifest in {path} has no rows.", "Add at least one pair.")
        names = list(table[0].keys())
    else:
        table = _rows_from_hf(path)
        names = list(table.column_names)
    columns, preset = _resolve_columns(names, config.columns, config.preset)
    order = list(range(len(table)))
    if config.seed is not None:
        random.Random(config.seed).shuffle(order)
    return Source((_mapped(table[i], i, columns, root) for i in order), len(table), columns, preset)


def _resolve_columns(
    names: list[str], explicit: dict[str, str], preset: str | None = None
) -> tuple[dict[str, str], str | None]:
    """(role -> column, the preset used): explicit columns first, then the preset's (given, or the first
    whose columns are all there), then the aliases. A missing caption is allowed; other roles are not."""
    if preset is None:
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
    return mapping, preset


def _rows_from_folder(root: Path) -> list[dict] | None:
    """The rows of the folder's manifest, or None when it has none."""
    manifest = next((root / n for n in MANIFEST_NAMES if (root / n).is_file()), None)
    if manifest is None:
        return None
    if manifest.suffix == ".csv":
        with open(manifest, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    rows = []
    for i, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UsageError(f"{manifest}:{i} is not valid JSON ({e.msg}).", "Fix that line.") from e
    return rows


def _rows_from_hf(path: Path) -> datasets.Dataset:
    """A dataset saved with `save_to_disk`, or parquet/arrow file(s): a file, or a folder of them."""
    import datasets

    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001
            raise UsageError(
                f"Could not read the saved dataset in {path} ({_first_line(e)[:200]}).",
                "Save it again with datasets' save_to_disk.",
            ) from e
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return ds
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".parquet", ".arrow"))
    if not files:
        raise UsageError(
            f"{path} holds no manifest (manifest.csv/.jsonl), saved dataset or parquet/arrow files.",
            "See `imvedit prepare --help` for the accepted layouts.",
        )
    kind = "parquet" if files[0].suffix == ".parquet" else "arrow"
    try:
        with _datasets_quiet():  # its own log line would precede ours; ours says the same and what to do
            return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train")
    except Exception as e:  # noqa: BLE001 - pyarrow and datasets raise many types for a bad file
        raise UsageError(
            f"Could not read {path} as {kind} data ({_first_line(e)[:200]}).",
            "Check that the files are whole and really are that format.",
        ) from e


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@contextlib.contextmanager
def _datasets_quiet():
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_hub(config) -> Source:
    """A hub dataset's split, whole or streamed. Images in hub datasets are decoded images (or bytes), so
    no local root applies; string paths in them are refused by `_image_ref`'s confinement."""
    import datasets

    try:
        ds = datasets.load_dataset(
            config.source, split=config.split, revision=config.revision, streaming=config.streaming
        )
    except Exception as e:  # noqa: BLE001 - datasets raises many types for "could not get it"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = (
            "The hub is switched off (HF_HUB_OFFLINE=1) and the dataset is not in the local cache: download it first."
            if offline
            else "Check the id, --split and --revision, and your network or hub login."
        )
        raise ImveditError(f"Could not load hub dataset {config.source!r} ({_first_line(e)}).", hint) from e
    if config.streaming:
        names = list(ds.column_names or next(iter(ds)).keys())
        columns, preset = _resolve_columns(names, config.columns, config.preset)
        if config.seed is not None:  # a shuffle buffer: the best a stream allows, and reproducible
            ds = ds.shuffle(seed=config.seed, buffer_size=10_000)
        return Source((_mapped(row, i, columns, None) for i, row in enumerate(ds)), config.limit, columns, preset)
    columns, preset = _resolve_columns(list(ds.column_names), config.columns, config.preset)
    order = list(range(len(ds)))
    if config.seed is not None:
        random.Random(config.seed).shuffle(order)
    return Source((_mapped(ds[i], i, columns, None) for i in order), len(ds), columns, preset)


def _mapped(row: dict, index: int, mapping: dict, root: Path | None) -> dict:
    return {
        "index": index,
        "source": _image_ref(row[mapping["source"]], root),
        "target": _image_ref(row[mapping["target"]], root),
        "instruction": row[mapping["instruction"]],
        "caption": row.get(mapping["caption"]) if "caption" in mapping else None,
    }


def _toy_rows(config) -> Iterator[dict]:
    """Shapes-world pairs: the source image (or clip), the ground-truth edit, the instruction and the
    description of the edited result. Deterministic from the seed. A clip is one strip of its frames."""

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
    """What an image cell holds, ready for `open_rgb`: a path confined to the dataset folder, bytes, or an image."""
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


def open_rgb(ref) -> Image.Image | None:
    """The RGB image a row refers to (a clip's first frame), or None when it cannot be read."""
    try:
        if isinstance(ref, Image.Image):
            return ref.convert("RGB")
        if isinstance(ref, Path) and ref.suffix.lower() in VIDEO_SUFFIXES:
            return Image.fromarray(next(iter(iter_frames(ref, max_frames=1))))
        with Image.open(ref) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, TypeError, AttributeError, UsageError, StopIteration):
        return None
