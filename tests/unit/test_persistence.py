"""Checkpoints of the router's state: the exported serializer allowlist, and the Postgres helper's errors."""

from __future__ import annotations

import asyncio
import sqlite3
import traceback
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.serde.event_hooks import register_serde_event_listener
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from pydantic import BaseModel

from glimp_graph import Decision, GlimpState, Probe, RunStats, Step, create_glimp_graph
from glimp_graph.persistence import (
    SERIALIZER_ALLOWLIST,
    CheckpointStoreAuthError,
    CheckpointStoreError,
    CheckpointStoreUnavailableError,
    mask_url,
    serializer,
)
from tests.unit.conftest import FakeServer, ScriptedModel, ScriptStep, unused_port
from tests.unit.conftest import endpoint as endpoint_of

Scripted = Callable[..., ScriptedModel]
THREAD = {"configurable": {"thread_id": "t1"}}
STEPS = [
    ScriptStep(0.2, "First, write 17 * 3 as 10 * 3 + 7 * 3."),
    ScriptStep(2.0, "That is 30 + 21."),
    ScriptStep(0.2, "So the answer is \\boxed{51}."),
]


@pytest.fixture
def serde_events() -> Iterator[list[dict[str, Any]]]:
    """Every allowlist event LangGraph's serializer emits (unregistered type allowed with a warning, blocked)."""
    events: list[dict[str, Any]] = []
    unregister = register_serde_event_listener(lambda event: events.append(dict(event)))
    yield events
    unregister()


def _run_and_read_back(small: FakeServer, large: FakeServer, serde: JsonPlusSerializer) -> list[Any]:
    """Run the graph on a SQLite checkpointer with ``serde``, then read every checkpoint back."""
    saver = SqliteSaver(sqlite3.connect(":memory:", check_same_thread=False), serde=serde)
    graph = create_glimp_graph(endpoint_of(small), endpoint_of(large), config={"tau": 1.0}, checkpointer=saver)
    out = graph.invoke({"messages": [HumanMessage("What is 17 * 3?")]}, THREAD, durability="sync")
    assert out["glimp_answer"] == "51"
    return [snapshot.values for snapshot in graph.get_state_history(THREAD)]


def _instances(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _instances(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _instances(item)
    else:
        yield value


def test_every_state_type_round_trips_without_an_unregistered_type_warning(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted, serde_events: list[dict[str, Any]]
) -> None:
    scripted(STEPS, answer="51")
    states = _run_and_read_back(fake_small, fake_large, serializer())
    assert serde_events == []  # nothing allowed with a warning ("Deserializing unregistered type"), nothing blocked
    seen = {type(v) for state in states for v in _instances(state)}
    assert {Step, Probe, Decision, RunStats, HumanMessage, AIMessage} <= seen  # rebuilt as themselves, not dicts
    final = states[0]
    assert [s.index for s in final["glimp_steps"]] == [0, 1, 2]
    assert final["glimp_stats"].steps == 3


def test_without_the_allowlist_the_same_round_trip_warns(
    fake_small: FakeServer, fake_large: FakeServer, scripted: Scripted, serde_events: list[dict[str, Any]]
) -> None:
    # the check above can fail: LangGraph's default serializer reports the router's records as unregistered
    scripted(STEPS, answer="51")
    _run_and_read_back(fake_small, fake_large, JsonPlusSerializer())
    reported = {(e["module"], e["name"]) for e in serde_events if e["kind"] == "msgpack_unregistered_allowed"}
    assert reported == set(SERIALIZER_ALLOWLIST)


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models_in(field.annotation)
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)
    if isinstance(annotation, types.UnionType):
        for arg in annotation.__args__:
            yield from _models_in(arg)


def test_the_allowlist_names_every_record_type_of_the_state() -> None:
    hints = typing.get_type_hints(GlimpState, include_extras=True)
    models = {m for hint in hints.values() for m in _models_in(hint)}
    models = {m for m in models if m.__module__.startswith("glimp_graph.")}
    assert {(m.__module__, m.__name__) for m in models} == set(SERIALIZER_ALLOWLIST)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://glimp:s3cret@db:5432/glimp", "postgresql://glimp:***@db:5432/glimp"),
        ("postgresql://glimp:p%40ss@db/glimp?sslmode=require", "postgresql://glimp:***@db/glimp?sslmode=require"),
        ("postgresql://glimp@db/glimp", "postgresql://glimp@db/glimp"),
        ("postgresql://db/glimp?user=u&password=s3cret", "postgresql://db/glimp?user=u&password=***"),
        ("host=db user=glimp password=s3cret dbname=glimp", "host=db user=glimp password=*** dbname=glimp"),
        ("host=db password='s3 cret' dbname=glimp", "host=db password=*** dbname=glimp"),
    ],
)
def test_mask_url_hides_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def _error_of(url: str) -> CheckpointStoreError:
    from glimp_graph.persistence import postgres_checkpointer

    with pytest.raises(CheckpointStoreError) as info, postgres_checkpointer(url, timeout=2):
        pytest.fail("the checkpointer opened")
    return info.value


def test_postgres_down_at_start_names_the_url_masked_without_a_traceback() -> None:
    url = f"postgresql://glimp:s3cret@127.0.0.1:{unused_port()}/glimp"
    error = _error_of(url)
    assert isinstance(error, CheckpointStoreUnavailableError)
    assert mask_url(url) in str(error) and "s3cret" not in str(error)
    assert error.url == mask_url(url)
    assert error.__cause__ is None and error.__suppress_context__  # no psycopg traceback chained to it
    assert "s3cret" not in "".join(traceback.format_exception(error))


def test_postgres_down_at_start_is_the_same_error_for_the_async_checkpointer() -> None:
    from glimp_graph.persistence import async_postgres_checkpointer

    url = f"postgresql://glimp:s3cret@127.0.0.1:{unused_port()}/glimp"

    async def open_it() -> None:
        async with async_postgres_checkpointer(url, timeout=2):
            pytest.fail("the checkpointer opened")

    with pytest.raises(CheckpointStoreUnavailableError) as info:
        asyncio.run(open_it())
    assert mask_url(url) in str(info.value) and "s3cret" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_url_that_is_not_one_is_named_with_the_form_to_use() -> None:
    error = _error_of("postgresql://glimp:s3 cret@127.0.0.1:1:2/glimp")
    assert not isinstance(error, CheckpointStoreUnavailableError | CheckpointStoreAuthError)
    assert "postgresql://USER:PASSWORD@HOST:PORT/DATABASE" in str(error)
    assert "s3 cret" not in "".join(traceback.format_exception(error))


@pytest.mark.parametrize("url", ["", "   "])
def test_an_empty_url_is_refused(url: str) -> None:
    assert "empty" in str(_error_of(url))


@pytest.mark.parametrize(("kwargs", "match"), [({"max_size": 0}, "max_size"), ({"timeout": 0}, "timeout")])
def test_bad_pool_settings_are_refused(kwargs: dict[str, Any], match: str) -> None:
    from glimp_graph.persistence import postgres_checkpointer

    with pytest.raises(ValueError, match=match), postgres_checkpointer("postgresql://u@127.0.0.1/db", **kwargs):
        pass
