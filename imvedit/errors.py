"""The one error type of imvedit.

Every failure a user can cause or fix (a missing file, an adapter for another base, a bad option)
is raised as an `ImveditError` whose message says what is wrong *and what to do*. The CLI prints it
as one line and exits non-zero; library users catch one type.
"""

from __future__ import annotations


class ImveditError(Exception):
    """A failure the user can act on. `exit_code` 1: the run failed; 2: the command was misused."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class UsageError(ImveditError):
    """Bad arguments or input files: exit code 2, like every CLI's usage errors."""

    exit_code = 2


class TrainingError(ImveditError):
    """A run that failed though its input was fine (e.g. the loss diverged): exit code 1, not a usage error."""

    exit_code = 1
