"""Real local model servers listen on 127.0.0.1 only: their sockets, read from ``/proc``, not their command lines.

``glimp serve-router``'s socket is checked in ``test_router_server_real.py``; the refusal of a non-loopback
``host`` in ``tests/unit/test_security.py``.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

import pytest

from tests.integration.sockets import command_line, listeners, listeners_of, owners

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def test_llama_servers_listen_on_loopback_only(smol_pair):
    for endpoint in smol_pair:
        port = urlsplit(endpoint.base_url).port
        on_port = [listener for listener in listeners() if listener.port == port]
        # one listener on the port, on 127.0.0.1: no 0.0.0.0 or :: socket next to it
        assert [listener.address for listener in on_port] == ["127.0.0.1"], on_port
        pids = owners(on_port[0].inode)
        assert pids and all("llama-server" in command_line(pid) for pid in pids), [command_line(p) for p in pids]
        for pid in pids:  # and the server listens on no other port beyond loopback
            assert {listener.address for listener in listeners_of(pid)} == {"127.0.0.1"}, listeners_of(pid)
