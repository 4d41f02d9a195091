"""`imvedit`: the command-line entry point. Each subcommand lives in its own module."""

from __future__ import annotations

import typer

from .. import __version__
from . import edit, eval, export, prepare, train
from ._common import state

app = typer.Typer(
    name="imvedit",
    help="Learn text-instructed video editing from image pairs (ImVideoEdit) on a frozen Wan base.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imvedit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    state["debug"] = debug


app.command("prepare")(prepare.prepare)
app.command("train")(train.train)
app.command("edit")(edit.edit)
app.command("eval")(eval.eval_)
app.command("export")(export.export)


def _terminate(signum, frame):
    # SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C, so temporary files and partial folders are
    # removed on the way out instead of being left behind by an abrupt exit.
    raise KeyboardInterrupt


def _bare_resume(argv: list[str]) -> list[str]:
    """`train --resume` with no value means `--resume latest` (Typer options cannot take an optional value)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("latest")
    return out


def main() -> None:
    import signal
    import sys

    signal.signal(signal.SIGTERM, _terminate)
    app(args=_bare_resume(sys.argv[1:]))
