"""External commands of the serving modules: a logged subprocess, and ``pip download`` of one pinned file."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from glimp_graph.serving._paths import sha256_file, tail
from glimp_graph.serving.errors import ServingError

__all__ = ["last_json_line", "pip_download", "run_logged"]

_PROGRESS_RE = re.compile(r"^\[\s*(\d+)%\]")
_NINJA_PROGRESS_RE = re.compile(r"^\[(\d+)/(\d+)\]")


def run_logged(cmd: list[str], log: TextIO, *, bar: Any = None, cwd: Path | None = None) -> int:
    """Run ``cmd``, appending the command line, its merged output and its exit code to ``log``.

    Args:
        cmd: The command.
        log: An open text file.
        bar: A tqdm bar of total 100, advanced from make's ``[ NN%]`` or ninja's ``[i/n]`` lines; ``None``: none.
        cwd: Working directory; ``None``: this process's.

    Returns:
        The exit code.

    """
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    with subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if bar is not None:
                pct = None
                if match := _PROGRESS_RE.match(line):
                    pct = int(match.group(1))
                elif match := _NINJA_PROGRESS_RE.match(line):
                    pct = 100 * int(match.group(1)) // max(1, int(match.group(2)))
                if pct is not None and pct > bar.n:
                    bar.update(pct - bar.n)
        rc = proc.wait()
    log.write(f"# exit code {rc}\n")
    log.flush()
    return rc


def last_json_line(path: Path) -> dict[str, object]:
    """Return the last JSON object printed on a line of a log's last 50 lines (what a helper script reported).

    Args:
        path: The log file.

    Returns:
        The object, or an empty dict when there is none.

    """
    for line in reversed(tail(path, 50).splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


def pip_download(requirement: str, dest: Path, *, sdist: bool = False, sha256: str | None = None) -> Path:
    """Download one distribution of ``requirement`` without its dependencies, with this interpreter's pip.

    Nothing is installed or imported: the archive is only saved.

    Args:
        requirement: A pinned requirement such as ``"pkg==1.0"``.
        dest: A directory of its own to download into (only the one archive is expected there).
        sdist: ``False``: a wheel (``--only-binary=:all:``); ``True``: the source archive (``--no-binary :all:``).
        sha256: The archive's pinned sha256: pip checks it (``--require-hashes``) before it prepares anything of
            the archive, and it is checked again here; ``None``: no pin.

    Returns:
        The downloaded ``.whl`` or ``.tar.gz``.

    Raises:
        ServingError: pip failed, produced no archive, or the archive is not the pinned one.

    """
    kind = "sdist" if sdist else "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps"]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-d", str(dest)]
    with tempfile.TemporaryDirectory(prefix="glimp-pin-") as pins:
        if sha256 is None:
            cmd.append(requirement)
        else:
            pinned = Path(pins) / "requirements.txt"
            pinned.write_text(f"{requirement} --hash=sha256:{sha256}\n", encoding="utf-8")
            cmd += ["--require-hashes", "-r", str(pinned)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = tail(proc.stderr or proc.stdout, 20)
        raise ServingError(f"pip download of {requirement!r} ({kind}) failed (exit {proc.returncode}):\n{output}")
    found = sorted(dest.glob("*.tar.gz" if sdist else "*.whl"))
    if not found:
        raise ServingError(f"pip download of {requirement!r} produced no {kind} in {dest}")
    if sha256 is not None and (got := sha256_file(found[0])) != sha256:
        raise ServingError(f"{found[0].name}: sha256 {got} is not the pinned {sha256}")
    return found[0]
