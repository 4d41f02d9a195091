"""Developer sessions. CI runs the same test command as `nox -s tests` (see .ci/run)."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"

TORCH = "torch==2.13.0"  # the CPU build; see README for why torch is installed first and pinned


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", "imvedit", "tests")
    session.run("ruff", "format", "--check", "imvedit", "tests")


@nox.session
def tests(session):
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def slow(session):
    """The tests marked slow: long end-to-end edits and batches left out of CI to keep it under 30 minutes."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "-m", "slow", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def soak(session):
    """A batch of 200 clips with corrupt inputs, killed twice and resumed (tests/soak; several minutes)."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "tests/soak", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def report_screenshot(session):
    """Render an eval report in headless Chromium (apt install chromium) and check the screenshot."""
    session.install(TORCH)
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "tests/visual", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def paper(session):
    """Train every method and ablation on the shapes world and write docs/results.md (about 2 hours on 2 CPU
    cores, 57 min of it the video-trained baseline; `nox -s paper -- --quick` is a smoke run of minutes)."""
    session.install(TORCH)
    session.install("-e", ".")
    session.run(
        "imvedit", "eval", "--suite", "paper", "--report", "docs", "--work", ".suite-work", *session.posargs,
        env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
