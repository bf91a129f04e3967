"""Errors that mean "the user asked for something that cannot be done": the CLI prints their message, no traceback.

Set HYDRA_FULL_ERROR=1 to see the traceback anyway.
"""

import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

from scoredist.checkpoint import CheckpointError


class WeightsNotFoundError(RuntimeError):
    """Model weights are not available (offline, or a folder that is not a diffusers pipeline); says what to pass."""


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps; the run was checkpointed before stopping."""


class RunLockedError(RuntimeError):
    """Another process is training in this run folder."""


class OutputError(OSError):
    """The run folder cannot be written (disk full, read-only, no permission); says which path and how much space."""


class ResourceError(RuntimeError):
    """The run needs more memory than the machine has; says what to lower."""


USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    CheckpointError,
    NonFiniteError,
    WeightsNotFoundError,
    RunLockedError,
    OutputError,
    ResourceError,
)


def user_error(error: BaseException) -> str | None:
    """The message of a user error, looking through the wrappers Hydra's instantiate puts around constructor errors,
    with the file:line that raised it (a ValueError can also be a bug: the location says where to look); None for
    anything else (a bug, which should show its traceback)."""
    while error is not None:
        if isinstance(error, USER_ERRORS):
            frames = traceback.extract_tb(error.__traceback__)
            where = f" [{Path(frames[-1].filename).name}:{frames[-1].lineno}]" if frames else ""
            return f"{error}{where}"
        error = error.__cause__
    return None


@contextmanager
def cli_errors():
    """In a script's entry point: a user error (also one wrapped by Hydra's instantiate) ends the command with its
    one-line message on stderr and exit status 2; a bug keeps its traceback, and so does every error with
    HYDRA_FULL_ERROR=1."""
    try:
        yield
    except Exception as e:
        message = user_error(e)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
