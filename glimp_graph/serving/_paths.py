"""The cache's files: its directory, an inter-process lock, completion stamps, hashes and log tails."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from filelock import FileLock

__all__ = [
    "STAMP",
    "default_cache_dir",
    "file_lock",
    "read_stamp",
    "resolve_cache_dir",
    "safe_name",
    "sha256_file",
    "tail",
    "write_stamp",
]

STAMP = ".glimp-complete.json"
"""Name of the file that marks a cached folder complete (see :func:`write_stamp`)."""
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """Return the default cache directory, ``~/.cache/glimp-graph``.

    Returns:
        The path (not created).

    """
    return Path.home() / ".cache" / "glimp-graph"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Turn an optional user-given cache directory into an absolute path.

    Args:
        cache_dir: A directory, or ``None`` for :func:`default_cache_dir`.

    Returns:
        The absolute, user-expanded path (not created).

    """
    path = default_cache_dir() if cache_dir is None else Path(cache_dir)
    return path.expanduser().absolute()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` for the duration of the block.

    The lock is :class:`filelock.FileLock` (``flock`` on Unix, ``msvcrt`` locking on Windows); it waits as long
    as another process or thread holds it.

    Args:
        path: The lock file (created if missing, with its folder; never deleted).

    Yields:
        Nothing; the lock is held inside the block.

    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path):
        yield


def sha256_file(path: Path) -> str:
    """Return the lower-case hex sha256 of a file, read in 1 MiB blocks.

    Args:
        path: The file.

    Returns:
        The digest.

    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def safe_name(text: str) -> str:
    """Turn a model name or alias into a short file-name part (other characters become ``_``).

    Args:
        text: Any text.

    Returns:
        At most 60 characters of ``[A-Za-z0-9._-]``; ``"model"`` when nothing is left.

    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60] or "model"


def write_stamp(directory: Path, record: Mapping[str, object]) -> None:
    """Mark a cached folder complete: write ``record`` as JSON to its :data:`STAMP` file, atomically.

    Args:
        directory: The folder (it must exist).
        record: What the folder was built from (versions, pins, timings).

    """
    tmp = directory / (STAMP + ".tmp")
    tmp.write_text(json.dumps(dict(record), indent=1), encoding="utf-8")
    os.replace(tmp, directory / STAMP)


def read_stamp(directory: Path) -> dict[str, object] | None:
    """Return the record of a folder's :data:`STAMP` file, or ``None`` when it is missing or unreadable.

    Args:
        directory: The folder.

    Returns:
        The record written by :func:`write_stamp`, or ``None`` (the folder is not complete).

    """
    try:
        record = json.loads((directory / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def tail(text_or_path: str | Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a string or of a text file.

    Args:
        text_or_path: The text itself, or a path to a file to read (undecodable bytes are replaced).
        lines: How many lines to keep.

    Returns:
        The tail, or an empty string when the file cannot be read.

    """
    if isinstance(text_or_path, Path):
        try:
            text = text_or_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
    else:
        text = text_or_path
    return "\n".join(text.rstrip().splitlines()[-lines:])
