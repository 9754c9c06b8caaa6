"""Listening TCP sockets and their owners, read from ``/proc`` (Linux only); stopping a test's server process."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in the "st" column of /proc/net/tcp and /proc/net/tcp6


@dataclass(frozen=True)
class Listener:
    """A listening TCP socket.

    Attributes:
        address: Local address, e.g. ``"127.0.0.1"``, ``"0.0.0.0"``, ``"::"``.
        port: Local port.
        inode: Socket inode (what ``/proc/<pid>/fd/<n>`` links to as ``socket:[inode]``).
    """

    address: str
    port: int
    inode: int


def _address(hex_address: str) -> str:
    """Decode an address of ``/proc/net/tcp*``: 32-bit words, each printed in the host's byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def listeners() -> list[Listener]:
    """Every listening TCP socket (IPv4 and IPv6) of this network namespace.

    Returns:
        The listeners, IPv4 first.
    """
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():  # a kernel without IPv6
            continue
        for row in path.read_text().splitlines()[1:]:
            fields = row.split()
            hex_address, hex_port = fields[1].split(":")
            if fields[3] == _LISTEN:
                found.append(Listener(_address(hex_address), int(hex_port, 16), int(fields[9])))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        links = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone, or not ours to read
        return inodes
    for link in links:
        try:
            target = link.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def owners(inode: int) -> set[int]:
    """The processes holding the socket ``inode`` open (a forked server shares it with its children).

    Args:
        inode: Socket inode from :class:`Listener`.

    Returns:
        Their pids (only processes this user may inspect).
    """
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return {pid for pid in pids if inode in _socket_inodes(pid)}


def listeners_of(pid: int) -> list[Listener]:
    """The listening sockets that process ``pid`` holds open, on any port.

    Args:
        pid: Process id.

    Returns:
        Its listeners.
    """
    inodes = _socket_inodes(pid)
    return [listener for listener in listeners() if listener.inode in inodes]


def command_line(pid: int) -> str:
    """The command line of process ``pid``, arguments joined by spaces."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Stop a server process the test started: SIGTERM, then SIGKILL if it is still there after ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
