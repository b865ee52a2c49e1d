"""Atomic file outputs: a file appears complete or not at all.

Every output (audio, ``.ssc``, models, checkpoints, reports) is written to a unique temporary
file in the target's directory (``tempfile.mkstemp``: no two writers share it), fsynced, then
renamed over the target (``os.replace``, atomic on POSIX and Windows). Two processes writing
one path each win whole, in some order; a failure or a kill leaves the target as it was and
at worst a ``.spectrostream-*`` temporary file (removed on every failure we can see).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SpectroStreamError

STDIO = "-"
TEMP_PREFIX = ".spectrostream-"  # short and fixed: a long target name still gets a temp file

_UMASK = os.umask(0)  # read once: mkstemp makes 0600 files, outputs get the usual mode
os.umask(_UMASK)


def _translate(error: Exception, tmp: str, target: str) -> Exception:
    """The same error naming the user's target instead of the temporary file."""
    if isinstance(error, OSError) and not isinstance(error, BrokenPipeError):
        if error.filename is None or error.filename == tmp:
            return OSError(error.errno, error.strerror or str(error), target)
        return error
    if isinstance(error, SpectroStreamError) and tmp and tmp in str(error):
        return type(error)(str(error).replace(tmp, target))
    return error


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | Path, tag: str = "") -> Iterator[str]:
    """Yields a fresh temporary path next to ``target`` with its extension (which picks an
    audio format); on success the file is fsynced and renamed over ``target``, on failure
    removed. Errors name ``target``, never the temporary file. ``"-"`` is passed through.
    ``tag`` follows the prefix in the temporary name (``.spectrostream-<tag>...``), so that a
    writer can find its own leftovers after a hard kill."""
    target = str(target)
    if target == STDIO:
        yield target
        return
    parent = os.path.dirname(target) or "."
    try:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + tag, suffix=Path(target).suffix, dir=parent)
        os.close(fd)
    except OSError as e:  # name the user's folder or target, never the temporary name
        where = parent if e.filename == parent else target
        reason = "exists and is not a directory" if isinstance(e, FileExistsError) else e.strerror
        raise OSError(e.errno, reason or str(e), where) from None
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except (OSError, SpectroStreamError) as e:
        translated = _translate(e, tmp, target)
        if translated is e:
            raise
        raise translated from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
