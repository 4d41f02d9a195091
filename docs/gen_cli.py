"""Regenerate docs/cli.md from the commands' own --help (run: python docs/gen_cli.py).

tests/test_docs.py fails when docs/cli.md is out of date, so the reference never drifts from the code.
"""

from pathlib import Path

from typer.testing import CliRunner

from imvedit.cli.main import app

COMMANDS = ["prepare", "train", "edit", "eval", "export"]
HEADER = """# CLI reference

Generated from `imvedit <command> --help` by `docs/gen_cli.py`; do not edit by hand.
Exit codes: 0 success, 1 the run failed, 2 the command was misused (bad option, missing or invalid
input). Errors are one line on stderr; `imvedit --debug <command> ...` shows the full traceback.
"""


def render() -> str:
    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    parts = [HEADER]
    for name, args in [("imvedit", ["--help"])] + [(f"imvedit {c}", [c, "--help"]) for c in COMMANDS]:
        out = runner.invoke(app, args, prog_name="imvedit").output
        text = "\n".join(line.rstrip() for line in out.strip("\n").splitlines())
        parts.append(f"## `{name}`\n\n```text\n{text}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    path = Path(__file__).with_name("cli.md")
    path.write_text(render())
    print(f"wrote {path}")
