"""Every error spectrostream raises on purpose, under one base class.

``SpectroStreamError`` means "the input, the arguments or the environment is wrong, and the
message says how": the command line prints it as one line and exits with status 2
(:func:`spectrostream.cli.main`). Anything else escaping is a bug. Each class also derives from
the builtin it replaced (ValueError or RuntimeError), so older ``except ValueError`` code still
catches it. Modules re-export the classes they raise (``spectrostream.audio_io.AudioError`` is
this ``AudioError``). Torch-free: the format layer imports it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any


class SpectroStreamError(Exception):
    """Base of every deliberate spectrostream error; the message is meant for the user."""


# ---- inputs and arguments ------------------------------------------------------------------
class UsageError(SpectroStreamError, ValueError):
    """A wrong argument or combination of arguments (command line or Python API)."""


class ConfigError(SpectroStreamError, ValueError):
    """A model configuration is malformed, inconsistent or out of bounds."""


class AudioError(SpectroStreamError, ValueError):
    """Missing, empty, undecodable or non-finite audio, or an audio target that cannot be written."""


class BitstreamError(SpectroStreamError, ValueError):
    """An ``.ssc`` stream is malformed, corrupted, truncated or made by another model."""


class ModelError(SpectroStreamError, ValueError):
    """Weights could not be loaded or used: missing file, mismatched tensors, missing half,
    unavailable device."""


class OutputError(SpectroStreamError, ValueError):
    """An output would overwrite an input, collide with another output, or has the wrong kind."""


class BatchError(SpectroStreamError):
    """Some files of a batch failed; every other file was coded. ``failures`` is
    ``[(input, message)]``."""

    def __init__(self, message: str, failures: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.failures = failures


# ---- training, data and evaluation ----------------------------------------------------------
class TrainConfigError(SpectroStreamError, ValueError):
    """A training configuration (TOML) is malformed or inconsistent."""


class DataError(SpectroStreamError, ValueError):
    """Training or corpus data cannot be found, read or built."""


class CheckpointError(SpectroStreamError, RuntimeError):
    """A training checkpoint is missing, unreadable, corrupted or of the wrong kind."""


class TrainingError(SpectroStreamError, RuntimeError):
    """Training cannot start or continue."""


class DivergedError(TrainingError):
    """A loss became NaN or Inf; the run stopped before writing another checkpoint."""


class EvalError(SpectroStreamError, ValueError):
    """An evaluation run is misconfigured (bad rates, no clips, no systems)."""


class MetricError(SpectroStreamError, ValueError):
    """A metric cannot be computed for these signals."""


class BaselineError(SpectroStreamError, RuntimeError):
    """A baseline codec (the Opus tools) is missing or failed."""


# ---- the one place that maps errors to exit statuses ------------------------------------------
EXIT_OK = 0
EXIT_BROKEN_PIPE = 1  # stdout closed by the reader (e.g. ``| head``): not an error of ours
EXIT_USER_ERROR = 2  # one line on stderr; no partial output left behind
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)


def describe_os_error(error: OSError) -> str:
    """``path: reason`` for an OS error on a user path (``reason`` alone when it has no path)."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{error.filename}: {reason}" if error.filename is not None else reason


def exit_status(run: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a subcommand so that deliberate errors become one line on stderr and an exit status
    (see the EXIT_* constants); anything else is a bug and keeps its traceback."""

    @functools.wraps(run)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        try:
            return int(run(*args, **kwargs) or EXIT_OK)
        except SpectroStreamError as error:
            return _fail(str(error))
        except BrokenPipeError:
            return EXIT_BROKEN_PIPE
        except OSError as error:
            return _fail(describe_os_error(error))
        except KeyboardInterrupt:
            print("spectrostream: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapped


def _fail(message: str) -> int:
    print(f"spectrostream: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR
