"""PostgreSQL checkpointers for the router: a connection pool checked at start, errors that name the URL masked.

Needs ``langgraph-checkpoint-postgres`` and ``psycopg`` (``pip install "glimp-graph[postgres]"``). Import the
names from :mod:`glimp_graph.persistence`, which loads this module on first use.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from urllib.parse import unquote

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from glimp_graph.persistence import (
    SERIALIZER_ALLOWLIST,
    CheckpointStoreAuthError,
    CheckpointStoreError,
    CheckpointStoreUnavailableError,
    mask_url,
    url_password,
)

__all__ = ["async_postgres_checkpointer", "postgres_checkpointer"]

# What LangGraph's own PostgresSaver.from_conn_string sets on its connection.
_CONNECTION_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}


@contextmanager
def postgres_checkpointer(
    url: str, *, max_size: int = 10, timeout: float = 10.0, setup: bool = True
) -> Iterator[PostgresSaver]:
    """A ``PostgresSaver`` on a connection pool, for the duration of a ``with`` block.

    The server is checked first (one connection): a server that is down, a wrong password, an unknown user or a
    missing database raises a :class:`~glimp_graph.persistence.CheckpointStoreError` naming the URL with its
    password masked. The pool then checks each connection before use, so a server restarted between two
    checkpoints is reconnected to without the run noticing; a server that is down when a checkpoint is written
    fails the run with :class:`~glimp_graph.persistence.CheckpointStoreUnavailableError` after ``timeout``
    seconds, and the same ``thread_id`` resumes from the last checkpoint once the server is back.

    Args:
        url: A PostgreSQL URL (``postgresql://user:password@host:5432/db``) or key/value connection string.
        max_size: Most connections the pool opens.
        timeout: Seconds to wait for a connection (at start, and for each checkpoint operation).
        setup: Create or migrate the checkpoint tables (``PostgresSaver.setup``; idempotent).

    Yields:
        A ``PostgresSaver`` whose serializer allows :data:`~glimp_graph.persistence.SERIALIZER_ALLOWLIST`, and
        which stores the values PostgreSQL's JSONB cannot hold (an infinite ``tau``, a string with a NUL
        character) as blobs instead of inline.

    Raises:
        CheckpointStoreError: The server cannot be used (see above), or ``url`` is not a connection string.

    """
    masked, secrets = _describe(url, max_size, timeout)
    try:
        psycopg.connect(url, connect_timeout=max(1, round(timeout))).close()
    except psycopg.Error as exc:
        raise _store_error(masked, exc, secrets) from None
    pool = _GuardedPool(url, masked, secrets, max_size, timeout)
    try:
        with _translated(masked, secrets):
            pool.open(wait=True, timeout=timeout)
        saver = _PostgresSaver(pool, serde=_BoxingSerializer(allowed_msgpack_modules=SERIALIZER_ALLOWLIST))
        if setup:
            saver.setup()
        yield saver
    finally:
        pool.close()


@asynccontextmanager
async def async_postgres_checkpointer(
    url: str, *, max_size: int = 10, timeout: float = 10.0, setup: bool = True
) -> AsyncIterator[AsyncPostgresSaver]:
    """An ``AsyncPostgresSaver`` on an async connection pool, for the duration of an ``async with`` block.

    The same checks, errors and reconnection as :func:`postgres_checkpointer`, for ``ainvoke`` / ``astream``.
    Many runs (threads) may share it at once.

    Args:
        url: A PostgreSQL URL or key/value connection string.
        max_size: Most connections the pool opens.
        timeout: Seconds to wait for a connection (at start, and for each checkpoint operation).
        setup: Create or migrate the checkpoint tables (idempotent).

    Yields:
        An ``AsyncPostgresSaver``, with the same serializer and blob handling as :func:`postgres_checkpointer`.

    Raises:
        CheckpointStoreError: The server cannot be used, or ``url`` is not a connection string.

    """
    masked, secrets = _describe(url, max_size, timeout)
    try:
        await (await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, round(timeout)))).close()
    except psycopg.Error as exc:
        raise _store_error(masked, exc, secrets) from None
    pool = _GuardedAsyncPool(url, masked, secrets, max_size, timeout)
    try:
        with _translated(masked, secrets):
            await pool.open(wait=True, timeout=timeout)
        saver = _AsyncPostgresSaver(pool, serde=_BoxingSerializer(allowed_msgpack_modules=SERIALIZER_ALLOWLIST))
        if setup:
            await saver.setup()
        yield saver
    finally:
        await pool.close()


def _describe(url: str, max_size: int, timeout: float) -> tuple[str, tuple[str, ...]]:
    """The URL to show (password masked) and the texts to scrub from messages; bad settings refused."""
    if not isinstance(url, str) or not url.strip():
        raise CheckpointStoreError(str(url), f"the checkpoint store URL is empty: got {url!r}")
    masked = mask_url(url)
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    password = url_password(url)
    secrets = tuple(s for s in {password, unquote(password)} if s) if password else ()
    return masked, secrets


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def _store_error(masked: str, exc: psycopg.Error, secrets: tuple[str, ...]) -> CheckpointStoreError:
    """The :class:`CheckpointStoreError` for a psycopg error, its message scrubbed of the password."""
    detail = " ".join(_scrub(str(exc), secrets).split()) or type(exc).__name__
    lowered = detail.lower()
    if isinstance(exc, psycopg.ProgrammingError):
        return CheckpointStoreError(
            masked,
            f"not a usable PostgreSQL connection string: {masked} ({detail}); the form is "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        )
    if "password authentication failed" in lowered:
        user = detail.rsplit("for user", 1)[-1].strip(' "')
        return CheckpointStoreAuthError(
            masked, f"wrong password for user {user!r} (or no such user) at {masked}: fix the password in the URL"
        )
    if "no password supplied" in lowered:
        return CheckpointStoreAuthError(
            masked, f"the server at {masked} asks for a password and the URL has none: add it (USER:PASSWORD@HOST)"
        )
    if "does not exist" in lowered and "database" in lowered:
        return CheckpointStoreError(
            masked, f"{detail.rsplit('FATAL:', 1)[-1].strip()} at {masked}: create it (createdb) or name another"
        )
    if "no pg_hba.conf entry" in lowered or ("role" in lowered and "does not exist" in lowered):
        return CheckpointStoreAuthError(masked, f"the server at {masked} refused the user: {detail}")
    return CheckpointStoreUnavailableError(
        masked,
        f"the checkpoint store at {masked} is unavailable ({detail}); the checkpoints already written are kept: "
        "run the same thread_id again (input None) once it is back to resume",
    )


@contextmanager
def _translated(masked: str, secrets: tuple[str, ...]) -> Iterator[None]:
    """Turn the connection errors of a block into :class:`CheckpointStoreError` (no psycopg traceback)."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise _store_error(masked, exc, secrets) from None


def _pool_options(masked: str, max_size: int, timeout: float) -> dict[str, Any]:
    """The settings both pools share: one connection kept, opened by the caller, named by the masked URL."""
    return {
        "kwargs": _CONNECTION_KWARGS,
        "min_size": 1,
        "max_size": max_size,
        "timeout": timeout,
        "open": False,
        "name": f"glimp-checkpoints {masked}",
    }


class _GuardedPool(ConnectionPool):
    """A pool whose connection errors (server down or gone mid-run) are :class:`CheckpointStoreError`."""

    def __init__(self, url: str, masked: str, secrets: tuple[str, ...], max_size: int, timeout: float) -> None:
        super().__init__(url, check=ConnectionPool.check_connection, **_pool_options(masked, max_size, timeout))
        self._masked, self._secrets = masked, secrets

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        """``ConnectionPool.connection``, with connection errors translated."""
        with _translated(self._masked, self._secrets), super().connection(timeout) as conn:
            yield conn


class _GuardedAsyncPool(AsyncConnectionPool):
    """The async pool counterpart of :class:`_GuardedPool`."""

    def __init__(self, url: str, masked: str, secrets: tuple[str, ...], max_size: int, timeout: float) -> None:
        super().__init__(url, check=AsyncConnectionPool.check_connection, **_pool_options(masked, max_size, timeout))
        self._masked, self._secrets = masked, secrets

    @asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """``AsyncConnectionPool.connection``, with connection errors translated."""
        with _translated(self._masked, self._secrets):
            async with super().connection(timeout) as conn:
                yield conn


# PostgresSaver keeps a checkpoint's str/int/float/bool channel values inline, in a JSONB column; PostgreSQL's JSONB
# holds neither an infinite or NaN float (``tau=inf``: 'Token "Infinity" is invalid') nor a string with a NUL
# character. Such a value goes to the blob table instead (msgpack holds both), and reads back as itself.


class _Boxed:
    """A channel value that JSONB cannot hold, so that ``put`` stores it as a blob rather than inline."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _unsafe_for_jsonb(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, str) and "\x00" in value


def _boxed(checkpoint: Checkpoint) -> Checkpoint:
    values = checkpoint["channel_values"]
    if not any(_unsafe_for_jsonb(v) for v in values.values()):
        return checkpoint
    boxed = {k: _Boxed(v) if _unsafe_for_jsonb(v) else v for k, v in values.items()}
    return {**checkpoint, "channel_values": boxed}


class _BoxingSerializer(JsonPlusSerializer):
    """The library's serializer (:func:`~glimp_graph.persistence.serializer`'s allowlist), unboxing blobs."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        """Serialize ``obj`` (the value itself for a boxed one)."""
        return super().dumps_typed(obj.value if isinstance(obj, _Boxed) else obj)


class _PostgresSaver(PostgresSaver):
    """``PostgresSaver`` storing the values JSONB cannot hold as blobs."""

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """``PostgresSaver.put``, non-finite floats and NUL-holding strings stored as blobs."""
        return super().put(config, _boxed(checkpoint), metadata, new_versions)


class _AsyncPostgresSaver(AsyncPostgresSaver):
    """``AsyncPostgresSaver`` storing the values JSONB cannot hold as blobs."""

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """``AsyncPostgresSaver.aput``, non-finite floats and NUL-holding strings stored as blobs."""
        return await super().aput(config, _boxed(checkpoint), metadata, new_versions)
