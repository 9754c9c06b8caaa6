"""Checkpoints of the router's runs: the serializer that knows its state types, and a PostgreSQL checkpointer.

A checkpointer stores every step of a run under its ``thread_id``, so a run that dies resumes from its last
completed step. LangGraph's serializer rebuilds the router's records (``Step``, ``Probe``, ``Decision``,
``RunStats``) from a checkpoint only when it is told their names; otherwise it logs "Deserializing unregistered
type ..." for each (and blocks them under ``LANGGRAPH_STRICT_MSGPACK=true``). :data:`SERIALIZER_ALLOWLIST` names
them, and :func:`serializer` is a serializer that allows exactly those (plus LangGraph's own safe types, messages
included)::

    from langgraph.checkpoint.sqlite import SqliteSaver
    from glimp_graph.persistence import serializer

    saver = SqliteSaver(sqlite3.connect("runs.sqlite", check_same_thread=False), serde=serializer())

For PostgreSQL (``pip install "glimp-graph[postgres]"``), :func:`postgres_checkpointer` (sync) and
:func:`async_postgres_checkpointer` open a connection pool, check the server first and create the tables; a
server that is down, a wrong password or a missing database is a :class:`CheckpointStoreError` that names the
URL with its password masked, never the password itself::

    from glimp_graph.persistence import postgres_checkpointer

    with postgres_checkpointer("postgresql://glimp:secret@127.0.0.1:5432/glimp") as saver:
        graph = create_glimp_graph(small, large, checkpointer=saver)
        graph.invoke({"question": "..."}, {"configurable": {"thread_id": "run-1"}})

The pool reconnects to a server restarted between two checkpoints. A server that is down when a checkpoint is
written fails the run with :class:`CheckpointStoreUnavailableError`; every step checkpointed before it is kept,
and running the same ``thread_id`` again (input ``None``) resumes there.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from glimp_graph.errors import GlimpError
from glimp_graph.scorers import Probe
from glimp_graph.state import Decision, RunStats, Step

if TYPE_CHECKING:
    from glimp_graph.persistence.postgres import async_postgres_checkpointer, postgres_checkpointer

__all__ = [
    "SERIALIZER_ALLOWLIST",
    "CheckpointStoreAuthError",
    "CheckpointStoreError",
    "CheckpointStoreUnavailableError",
    "async_postgres_checkpointer",
    "mask_url",
    "postgres_checkpointer",
    "serializer",
]

SERIALIZER_ALLOWLIST: tuple[tuple[str, str], ...] = tuple(
    (cls.__module__, cls.__name__) for cls in (Step, Probe, Decision, RunStats)
)
"""``(module, class)`` of every record the graph writes into its state, for LangGraph's msgpack allowlist.

Messages, sets, datetimes and LangGraph's own types are on LangGraph's built-in safe list and need no entry.
``deploy/langgraph.json`` repeats this list for LangGraph's server (its ``checkpointer.serde``).
"""

_POSTGRES_NAMES = ("postgres_checkpointer", "async_postgres_checkpointer")


def serializer() -> JsonPlusSerializer:
    """A checkpoint serializer that rebuilds the router's records and refuses every other unregistered type.

    Returns:
        A ``JsonPlusSerializer`` with ``allowed_msgpack_modules`` = :data:`SERIALIZER_ALLOWLIST` (LangGraph's
        built-in safe types, messages included, are always allowed; pickle is off).

    """
    return JsonPlusSerializer(allowed_msgpack_modules=SERIALIZER_ALLOWLIST)


class CheckpointStoreError(GlimpError):
    """The checkpoint store (a database) cannot be used; the message names its URL with the password masked.

    Attributes:
        url: The store's URL, password masked.

    """

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        super().__init__(message)


class CheckpointStoreUnavailableError(CheckpointStoreError):
    """The store cannot be reached, or went away during a run.

    Resumable: the checkpoints written before it are kept; once the store is back, run the same ``thread_id``
    again with input ``None`` to continue from the last checkpointed step.
    """


class CheckpointStoreAuthError(CheckpointStoreError):
    """The store refused the credentials: a wrong password, no password, or an unknown user."""


_MASK = "***"
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, to show in messages and logs.

    Handles URLs (``postgresql://user:secret@host/db``, ``?password=secret``) and key/value connection strings
    (``host=... password=secret``).

    Args:
        url: A database URL or connection string.

    Returns:
        The same text without the password.

    """
    if "://" not in url:
        return _KEYWORD_PASSWORD.sub(lambda m: m.group(1) + _MASK, url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, has_password, _ = userinfo.partition(":")
            netloc = f"{user}:{_MASK}@{hostinfo}" if has_password else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k.lower() == "password" for k, _ in pairs):
                query = urlencode([(k, _MASK if k.lower() == "password" else v) for k, v in pairs], safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not parseable as a URL: hide everything between the scheme and the host
        return re.sub(r"://[^@/]*@", f"://{_MASK}@", url)


def url_password(url: str) -> str | None:
    """The password written in ``url`` (URL userinfo, ``?password=`` or ``password=``), or ``None``."""
    if "://" not in url:
        match = _KEYWORD_PASSWORD.search(url)
        return match.group(2).strip("'") if match else None
    try:
        parts = urlsplit(url)
        if parts.password:
            return parts.password
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.lower() == "password":
                return value
    except ValueError:
        match = re.search(r"://[^:@/]*:([^@/]*)@", url)
        return match.group(1) if match else None
    return None


def __getattr__(name: str) -> Any:
    """The PostgreSQL helpers, imported on first use (they need the ``postgres`` extra)."""
    if name in _POSTGRES_NAMES:
        try:
            from glimp_graph.persistence import postgres
        except ImportError as exc:
            raise ImportError(
                f"{name} needs langgraph-checkpoint-postgres and psycopg: pip install 'glimp-graph[postgres]' ({exc})"
            ) from None
        return getattr(postgres, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
