"""File-system helpers: every file imvedit produces appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest`, on failure removed.

    The temporary keeps `dest`'s extension (ffmpeg picks the container from it) and lives in the same
    folder, so the final rename is atomic on every local file system.
    """
    dest = Path(dest)
    suffix = suffix if suffix is not None else dest.suffix
    remove_stale_temporaries(dest, suffix)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); the result gets the permissions any new file would.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def remove_stale_temporaries(dest: Path, suffix: str) -> None:
    """Remove what a killed run (SIGKILL, power loss: no chance to clean up) left while writing `dest`:
    hidden siblings named exactly as `atomic_path` names its temporaries (`.STEM.<8 random chars>SUFFIX`,
    and the `.video` part files made from them). Only names of that exact shape are touched."""
    pattern = re.compile(rf"^\.{re.escape(dest.stem)}\.[A-Za-z0-9_]{{8}}(\.video)?{re.escape(suffix)}$")
    if not dest.parent.is_dir():
        return
    for p in dest.parent.iterdir():
        if pattern.match(p.name) and p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


@contextlib.contextmanager
def staged_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a hidden sibling folder to fill; on success it replaces `dest`, on any failure (an error,
    Ctrl-C) it is removed, so `dest` only ever holds a complete result."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def check_output_path(output: str | Path, inputs: list[str | Path] = (), overwrite: bool = False) -> Path:
    """Fail before any work when the output cannot or must not be written."""
    out = Path(output)
    for src in inputs:
        if Path(src).exists() and out.exists() and out.resolve() == Path(src).resolve():
            raise UsageError(f"Output {out} is the input file.", "Write the result to another path.")
    if out.is_dir():
        raise UsageError(f"Output {out} is a directory.", "Give a file name, e.g. -o out.mp4.")
    if out.exists() and not overwrite:
        raise UsageError(f"Output {out} already exists.", "Pass --overwrite to replace it, or choose another path.")
    if not out.parent.exists():
        raise UsageError(f"Output folder {out.parent} does not exist.", "Create it first or choose another path.")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"Output folder {out.parent} is not writable.", "Choose a folder you can write to.")
    return out


def check_output_dir(output: str | Path, inputs: list[str | Path] = (), overwrite: bool = False) -> Path:
    """Fail before any work when a folder output cannot or must not be (re)written."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"Output {out} is a file, and this writes a folder.", "Choose another path.")
    for src in inputs:
        if out.exists() and Path(src).exists() and Path(src).resolve().is_relative_to(out.resolve()):
            raise UsageError(f"Output folder {out} holds the input {src}.", "Write the result to another folder.")
    if out.exists() and not overwrite:
        raise UsageError(f"Output {out} already exists.", "Pass --overwrite to replace it, or choose another path.")
    parent = out.resolve().parent
    if not parent.exists():
        raise UsageError(f"Output folder {parent} does not exist.", "Create it first or choose another path.")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"Output folder {parent} is not writable.", "Choose a folder you can write to.")
    return out
