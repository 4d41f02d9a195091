"""What every command shares: error reporting in one place, progress bars, JSON output."""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .. import jsonutil
from ..errors import ImveditError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
state = {"debug": False}
T = TypeVar("T")


def run(fn: Callable[[], T]) -> T:
    """Call the library; report a failure as one line on stderr with the right exit code."""
    try:
        return fn()
    except ImveditError as e:
        if state["debug"]:
            raise
        fail(e)
    except KeyboardInterrupt:
        err_console.print("Interrupted; the output was not written.")
        raise typer.Exit(130) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback unless asked
        if state["debug"]:
            raise
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            fail(
                ImveditError(
                    "The disk is full (no space left on the device).",
                    "Free some space or write to another disk; no partial output was kept.",
                )
            )
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        err_console.print(
            f"[bold red]Error:[/] unexpected {type(e).__name__}: {msg} (re-run with --debug for the traceback and report it)",
            markup=True,
            emoji=False,
        )
        raise typer.Exit(1) from None


def fail(error: ImveditError) -> NoReturn:
    """Report a user-facing error as one line on stderr and exit with its code."""
    err_console.print(f"[bold red]Error:[/] {error}", markup=True, emoji=False)
    raise typer.Exit(error.exit_code)


def _silence_library_bars() -> None:
    """Without our bar, the libraries' own (transformers prints "Loading weights" with tqdm when it loads a
    text encoder) would be the only noise left on stderr of `-q`, `--json` and batch-script runs."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # transformers reads this when it is first imported
    for name in ("transformers", "diffusers"):
        if name in sys.modules:  # already imported: switch its own flag too
            importlib.import_module(f"{name}.utils.logging").disable_progress_bar()


@contextmanager
def progress_bar(description: str, enabled: bool = True):
    """Yields a callback(done, total, **fields) that drives a rich progress bar on stderr."""
    if not enabled or not err_console.is_terminal:
        _silence_library_bars()
        yield lambda *a, **k: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None, info="")

        def update(done: int, total: int, info: str = "") -> None:
            bar.update(task, completed=done, total=total, info=info)

        yield update


def emit(result: dict[str, Any], as_json: bool, human: str) -> None:
    """Print the result: one JSON object on stdout with --json, else a short human line."""
    if as_json:
        sys.stdout.write(jsonutil.dumps(result) + "\n")
    else:
        Console(highlight=False).print(human, markup=False)
