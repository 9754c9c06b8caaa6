"""Cache-directory helpers and an inter-process file lock (standard library only)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["default_cache_dir", "file_lock", "resolve_cache_dir", "tail"]


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
    """Hold an exclusive ``flock`` on ``path`` for the duration of the block.

    On platforms without :mod:`fcntl` the lock is a no-op.

    Args:
        path: The lock file (created if missing; never deleted).

    Yields:
        Nothing; the lock is held inside the block.

    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if sys.platform == "win32":  # pragma: no cover - no fcntl
        yield
        return
    import fcntl

    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


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
