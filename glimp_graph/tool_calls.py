r"""Tool calls on the router's final-answer call: checking the tools, shaping the request, reading the calls back.

The final answer is a *continuation*: the last message is a partial assistant message (the reasoning so far plus
an answer prefix) that the server continues. Servers differ in how tools work with that, so each server kind gets
its own request shape (measured on the real servers, see docs/SERVING.md):

* ``"vllm"`` and ``"openai"``: ``tools`` and ``tool_choice`` as the OpenAI API defines them. vLLM (started with
  ``--enable-auto-tool-choice --tool-call-parser hermes`` for Qwen2.5) forces the call for ``"required"`` and a
  named function with a structural tag, and holds the arguments to the tool's schema only for tools marked
  ``"strict": true``, which the request here sets (without it a 0.5B model wrote junk arguments half the time).
* ``"llama.cpp"`` (llama-server, Jinja on): the server's own tool-call grammar and its ``json_schema`` /
  ``response_format`` do not work with a continuation (the schema's grammar expects the generation prompt, the
  prefix breaks it: HTTP 400 "Failed to initialize samplers"), and ``"required"`` is not enforced. A raw GBNF
  ``grammar`` does work, and is accepted together with ``tools`` when ``tool_choice`` is ``"none"``. So for
  ``"required"`` or a named function the request carries the tools (the chat template shows them to the model),
  ``tool_choice: "none"`` and a grammar built here from the tools' JSON schemas that admits exactly
  ``{"name": "<tool>", "arguments": {...}}``; :func:`tool_calls_from` turns that JSON into a tool call. For
  ``"auto"`` the tools go with ``tool_choice: "auto"``: the server parses ``<tool_call>`` tags, and the text is
  searched for a ``<tool_call>`` block or a JSON object (bare or in a ``json`` code fence) naming a known tool.

Example:
    >>> tools, choice = check_tools([{"type": "function", "function": {"name": "add", "parameters": {
    ...     "type": "object", "properties": {"a": {"type": "integer"}}}}}], "required")
    >>> sorted(tool_request("llama.cpp", tools, choice))
    ['extra_body', 'tool_choice', 'tools']
    >>> text, calls, bad = tool_calls_from("llama.cpp", '{"name": "add", "arguments": {"a": 2}}', [], [], tools,
    ...                                    choice)
    >>> calls[0]["name"], calls[0]["args"]
    ('add', {'a': 2})

"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages.tool import InvalidToolCall, ToolCall, invalid_tool_call, tool_call
from langchain_core.utils.function_calling import convert_to_openai_tool

__all__ = [
    "ToolChoice",
    "ToolServerKind",
    "check_tools",
    "tool_calls_from",
    "tool_grammar",
    "tool_request",
]

ToolServerKind = Literal["vllm", "llama.cpp", "openai"]
"""The server kinds with their own request shape (``glimp_graph.endpoints.ServerKind`` once resolved)."""
ToolChoice = str | dict[str, Any]
"""``"auto"``, ``"required"``, ``"none"`` or ``{"type": "function", "function": {"name": ...}}`` once checked."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CHOICES = ("auto", "required", "none")


# -- checking --------------------------------------------------------------------------------------------------
def check_tools(tools: Sequence[Any] | None, tool_choice: Any = None) -> tuple[list[dict[str, Any]], ToolChoice | None]:
    """Normalise and check tools and a tool choice for the final-answer call.

    Tools may be OpenAI tool dicts (``{"type": "function", "function": {"name", "description", "parameters"}}``,
    what ``langchain_core.utils.function_calling.convert_to_openai_tool`` returns), bare function dicts
    (``{"name", "description", "parameters"}``), or anything ``convert_to_openai_tool`` accepts (a LangChain tool,
    a Pydantic model, a typed function). A tool without ``parameters`` takes no arguments.

    ``tool_choice`` may be ``None`` (``"auto"`` when there are tools), ``"auto"``, ``"required"`` (``"any"`` and
    ``True`` mean the same, as in LangChain's ``bind_tools``), ``"none"``, a tool's name, or
    ``{"type": "function", "function": {"name": ...}}``.

    Args:
        tools: The tools (``None`` or empty: none).
        tool_choice: Whether and which tool the model must call.

    Returns:
        The tools as OpenAI tool dicts (new dicts; ``parameters`` always set) and the tool choice as ``"auto"``,
        ``"required"``, ``"none"`` or ``{"type": "function", "function": {"name": ...}}``; ``None`` when there
        are no tools and nothing requires one.

    Raises:
        ValueError: A tool has no name, a bad name, a duplicate name or a ``parameters`` schema that is not an
            object schema; the tool choice is unknown, names a tool that is not given, or requires a call while
            no tools are given.

    """
    checked = [_check_tool(tool, index) for index, tool in enumerate(tools or [])]
    names = [t["function"]["name"] for t in checked]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"tool names must be unique, but {duplicates} appear more than once: rename the tools")
    choice = _check_choice(tool_choice, names)
    if not checked:
        if choice == "required" or isinstance(choice, dict):
            raise ValueError(
                f"tool_choice={tool_choice!r} requires a tool call, but no tools are given: pass the tools "
                "(e.g. bind_tools([...])) or use tool_choice='auto'"
            )
        return [], None
    return checked, choice or "auto"


def _check_tool(tool: Any, index: int) -> dict[str, Any]:
    where = f"tool {index}"
    if not isinstance(tool, Mapping):
        try:
            tool = convert_to_openai_tool(tool)
        except Exception as exc:  # LangChain says ValueError, but any failure means the same here
            raise ValueError(
                f"{where} ({tool!r:.80}) is not a tool: pass an OpenAI tool dict, a LangChain tool, a Pydantic "
                f"model or a typed function ({exc})"
            ) from None
    if tool.get("type") == "function" or "function" in tool:
        if tool.get("type", "function") != "function":
            raise ValueError(f"{where} has type {tool.get('type')!r}: only 'function' tools are supported")
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise ValueError(
                f"{where} has no 'function' object: write {{'type': 'function', 'function': {{'name': ..., "
                f"'parameters': {{...}}}}}}, got {dict(tool)!r:.120}"
            )
    else:
        function = tool
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where} has no name: give the function a 'name' ({dict(function)!r:.120})")
    if not _NAME.match(name):
        raise ValueError(
            f"tool name {name!r} is not allowed: use 1 to 64 letters, digits, '_' or '-' (the OpenAI API's rule)"
        )
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, Mapping) or parameters.get("type", "object") != "object":
        raise ValueError(
            f"tool {name!r} has parameters {parameters!r:.120}: the parameters must be a JSON schema of an object, "
            "e.g. {'type': 'object', 'properties': {'x': {'type': 'number'}}, 'required': ['x']}"
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise ValueError(f"tool {name!r} has a description that is not a string: {description!r:.80}")
    body = {k: v for k, v in function.items() if k not in ("name", "description", "parameters")}
    out: dict[str, Any] = {"name": name}
    if description:
        out["description"] = description
    out["parameters"] = {"type": "object", **dict(parameters)}
    out.update(body)
    return {"type": "function", "function": out}


def _check_choice(tool_choice: Any, names: list[str]) -> ToolChoice | None:
    if tool_choice is None:
        return None
    if tool_choice is True or tool_choice == "any":
        return "required"
    if isinstance(tool_choice, str):
        if tool_choice in _CHOICES:
            return tool_choice
        if tool_choice in names:
            return _named(tool_choice)
        raise ValueError(
            f"unknown tool_choice {tool_choice!r}: use 'auto', 'required', 'none', or the name of one of the "
            f"tools {names}"
        )
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else None
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise ValueError(
                f"unknown tool_choice {dict(tool_choice)!r:.120}: a named choice is "
                "{'type': 'function', 'function': {'name': '<tool name>'}}"
            )
        if names and name not in names:
            raise ValueError(f"tool_choice names the function {name!r}, which is not among the tools {names}")
        return _named(name)
    raise ValueError(
        f"unknown tool_choice {tool_choice!r:.80}: use 'auto', 'required', 'none', a tool's name, or "
        "{'type': 'function', 'function': {'name': ...}}"
    )


def _named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def _forced(tool_choice: ToolChoice | None) -> str | None:
    """The forced tool's name for a named choice, ``""`` for ``"required"``, ``None`` when no call is forced."""
    if isinstance(tool_choice, dict):
        return str(tool_choice["function"]["name"])
    return "" if tool_choice == "required" else None


# -- the request ---------------------------------------------------------------------------------------------------
def tool_request(server_kind: str, tools: Sequence[dict[str, Any]], tool_choice: ToolChoice | None) -> dict[str, Any]:
    """The keyword arguments that add ``tools`` to a final-answer call (a ``ChatOpenAI`` invocation).

    Top-level keys (``tools``, ``tool_choice``) go to the call as they are; ``extra_body`` (only for llama.cpp)
    must be merged into the continuation's ``extra_body``. For vLLM each tool gets ``"strict": true`` unless it
    says otherwise: vLLM then holds the arguments to the tool's schema, not only the call's envelope.

    Args:
        server_kind: ``"vllm"``, ``"llama.cpp"`` or ``"openai"``.
        tools: Tools as :func:`check_tools` returns them.
        tool_choice: Tool choice as :func:`check_tools` returns it.

    Returns:
        The keyword arguments; empty when there are no tools.

    Raises:
        ValueError: An unknown server kind.

    """
    if server_kind not in ("vllm", "llama.cpp", "openai"):
        raise ValueError(f"unknown server kind {server_kind!r}: use 'vllm', 'llama.cpp' or 'openai'")
    if not tools:
        return {}
    choice = tool_choice or "auto"
    tools = [{**t, "function": dict(t["function"])} for t in tools]
    forced = _forced(choice)
    if server_kind == "llama.cpp" and forced is not None:
        chosen = [t for t in tools if not forced or t["function"]["name"] == forced]
        # "none": the server then accepts a grammar, and does not parse; the tools are still in the prompt
        return {"tools": tools, "tool_choice": "none", "extra_body": {"grammar": tool_grammar(chosen)}}
    if server_kind == "vllm":
        # without "strict" vLLM constrains only the call's envelope, and small models write junk arguments
        for tool in tools:
            tool["function"].setdefault("strict", True)
    return {"tools": tools, "tool_choice": choice}


def streams_text(server_kind: str, tools: Sequence[dict[str, Any]] | None, tool_choice: ToolChoice | None) -> bool:
    """Whether a final-answer call with these tools may stream its text to the user as it comes.

    Only where the server itself separates the calls from the text: no tools, or vLLM / OpenAI without a forced
    call. On llama.cpp the text may be the call (the grammar's JSON, or a ``<tool_call>`` block read here), so the
    answer's text is handed on in one piece once the calls are taken out of it.
    """
    if not tools or tool_choice == "none":
        return True
    return server_kind in ("vllm", "openai") and _forced(tool_choice or "auto") is None


# -- reading the calls back ----------------------------------------------------------------------------------------
def tool_calls_from(
    server_kind: str,
    text: str,
    tool_calls: Sequence[Mapping[str, Any]],
    invalid_tool_calls: Sequence[Mapping[str, Any]],
    tools: Sequence[dict[str, Any]],
    tool_choice: ToolChoice | None,
) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """The final answer's text and tool calls, from what the server returned. Never raises for bad calls.

    The server's own calls (``AIMessage.tool_calls`` / ``invalid_tool_calls`` as ``langchain-openai`` parsed
    them) are kept and checked. When there are none and tools are active (``tool_choice`` other than ``"none"``),
    the text is read: a ``<tool_call>...</tool_call>`` block (what Qwen's template asks for), a JSON object in a
    code fence, or the whole text as a JSON object (what the llama.cpp grammar produces), naming a tool with
    ``"arguments"`` (or ``"parameters"``). The calls found are removed from the text.

    A call naming an unknown tool, with arguments that are not a JSON object, or another tool than a named
    ``tool_choice`` forces, becomes an invalid tool call with an error message; so does text that is no call
    when ``tool_choice`` forced one. Calls keep the server's id, or get ``"call_" + uuid hex``.

    Args:
        server_kind: ``"vllm"``, ``"llama.cpp"`` or ``"openai"`` (the text is read the same way for all).
        text: The answer's new text (without the continued prefix).
        tool_calls: The server's parsed tool calls (LangChain ``ToolCall`` dicts).
        invalid_tool_calls: The server's unparsable tool calls (LangChain ``InvalidToolCall`` dicts).
        tools: Tools as :func:`check_tools` returns them.
        tool_choice: Tool choice as :func:`check_tools` returns it.

    Returns:
        The text (stripped; without the calls read from it), the tool calls and the invalid tool calls.

    """
    del server_kind  # one reading fits every server kind today; kept so that a server-specific one can come
    names = [t["function"]["name"] for t in tools]
    forced = _forced(tool_choice)
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = [_invalid_of(c) for c in invalid_tool_calls]
    for call in tool_calls:
        _add(calls, invalid, call.get("name"), call.get("args"), call.get("id"), names, forced)
    if not tools or tool_choice == "none" or calls or invalid:
        return text.strip(), calls, invalid
    rest = text
    for raw, start, end in _candidates(text, whole=forced is not None):
        found = _call_in(raw)
        if found is None:
            continue
        name, args = found
        _add(calls, invalid, name, args, None, names, forced)
        rest = rest.replace(text[start:end], "", 1)
    if forced is not None and not calls and not invalid:
        wanted = f"a call of {forced!r}" if forced else "a tool call"
        invalid.append(
            invalid_tool_call(
                name=forced or None,
                args=text,
                id=_new_id(),
                error=f"tool_choice required {wanted}, but the model answered with text that is no tool call",
            )
        )
        return "", calls, invalid
    return rest.strip(), calls, invalid


def _new_id() -> str:
    return "call_" + uuid.uuid4().hex


def _invalid_of(call: Mapping[str, Any]) -> InvalidToolCall:
    args = call.get("args")
    return invalid_tool_call(
        name=call.get("name"),
        args=args if isinstance(args, str) or args is None else json.dumps(args),
        id=call.get("id") or _new_id(),
        error=call.get("error") or "the tool call could not be parsed",
    )


def _add(
    calls: list[ToolCall],
    invalid: list[InvalidToolCall],
    name: Any,
    args: Any,
    call_id: Any,
    names: list[str],
    forced: str | None,
) -> None:
    """Append one call to ``calls``, or to ``invalid`` with the reason."""
    call_id = call_id if isinstance(call_id, str) and call_id else _new_id()
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError as exc:
            invalid.append(
                invalid_tool_call(
                    name=name if isinstance(name, str) else None,
                    args=args,
                    id=call_id,
                    error=f"the arguments are not valid JSON ({exc})",
                )
            )
            return
    if args is None:
        args = {}
    shown = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False, default=str)
    error = None
    if not isinstance(name, str) or name not in names:
        error = f"the model called the unknown tool {name!r}; the tools are {names}"
    elif forced and name != forced:
        error = f"tool_choice named {forced!r}, but the model called {name!r}"
    elif not isinstance(args, dict):
        error = f"the arguments of {name!r} are not a JSON object: {shown:.120}"
    if error:
        invalid.append(
            invalid_tool_call(name=name if isinstance(name, str) else None, args=shown, id=call_id, error=error)
        )
    else:
        calls.append(tool_call(name=name, args=args, id=call_id))


_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_FENCED = re.compile(r"```(?:json|JSON)?[ \t]*\n?(.*?)(?:```|$)", re.S)


def _candidates(text: str, *, whole: bool) -> list[tuple[str, int, int]]:
    """Pieces of ``text`` that may hold a call: tagged blocks, else fenced blocks, else the whole text."""
    tagged = [(m.group(1), m.start(), m.end()) for m in _TAGGED.finditer(text)]
    if tagged:
        return tagged
    fenced = [(m.group(1), m.start(), m.end()) for m in _FENCED.finditer(text)]
    if fenced:
        return fenced
    stripped = text.strip()
    if whole or stripped.startswith("{"):
        return [(text, 0, len(text))]
    return []


def _call_in(raw: str) -> tuple[Any, Any] | None:
    """``(name, arguments)`` of a call written as JSON in ``raw``, or ``None`` when ``raw`` is no call.

    Bad JSON that still shows a ``"name"`` comes back with the raw arguments text, so that it is reported as an
    invalid call rather than dropped.
    """
    raw = raw.strip()
    try:
        value = json.loads(raw)
    except ValueError:
        value = _first_object(raw)
        if value is None:
            match = re.search(r'"name"\s*:\s*"([^"]*)"', raw)
            return (match.group(1), raw) if match else None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    if "arguments" in value:
        return value["name"], value["arguments"]
    if "parameters" in value:
        return value["name"], value["parameters"]
    return None


def _first_object(raw: str) -> Any:
    """The first JSON value that starts at a ``{`` in ``raw`` (text may follow it), or ``None``."""
    start = raw.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(raw[start:])
    except ValueError:
        return None
    return value


# -- the grammar (llama.cpp's GBNF) --------------------------------------------------------------------------------
_BASE_RULES = {
    "ws": r'| " " | "\n" [ \t]{0,20}',
    "char": r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": r'"\"" char* "\""',
    "integer": r'"-"? ("0" | [1-9] [0-9]{0,15})',
    "number": r'"-"? ("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": r'"true" | "false"',
    "null": r'"null"',
    "value": "object | array | string | number | boolean | null",
    "object": r'"{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* )? ws "}"',
    "array": r'"[" ws ( value ( ws "," ws value )* )? ws "]"',
}


def tool_grammar(tools: Sequence[dict[str, Any]]) -> str:
    """A GBNF grammar (llama.cpp) for one call of one of ``tools``: ``{"name": "<tool>", "arguments": {...}}``.

    The arguments follow the tool's ``parameters`` schema: objects with their properties in schema order (the
    required ones always, the others may be left out), strings, numbers, integers, booleans, null, arrays,
    ``enum``, ``const``, ``anyOf`` / ``oneOf``, type lists and local ``$ref`` s (``#/$defs/...``,
    ``#/definitions/...``). Keywords it does not model (lengths, patterns, bounds, ``allOf``,
    ``additionalProperties`` beyond the listed properties) are left to the tool's own checks; an unknown schema
    admits any JSON value.

    Args:
        tools: Tools as :func:`check_tools` returns them (at least one).

    Returns:
        The grammar text; its ``root`` rule is the call.

    Raises:
        ValueError: ``tools`` is empty.

    """
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    builder = _Grammar()
    alternatives = []
    for tool in tools:
        function = tool["function"]
        name = function["name"]
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        builder.root_schema = schema
        arguments = builder.rule(f"{name}-arguments", schema)
        call = (
            rf'"{{" ws "\"name\"" ws ":" ws {_literal(json.dumps(name))} ws "," ws "\"arguments\"" ws ":" ws '
            rf'{arguments} ws "}}"'
        )
        alternatives.append(builder.add(f"{name}-call", call))
    builder.rules["root"] = " | ".join(alternatives)
    order = ["root", *sorted(k for k in builder.rules if k != "root")]
    return "\n".join(f"{key} ::= {builder.rules[key]}" for key in order) + "\n"


def _literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class _Grammar:
    """Builds GBNF rules from JSON schemas; each rule name is unique."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = dict(_BASE_RULES)
        self.root_schema: Mapping[str, Any] = {}
        self._refs: dict[tuple[int, str], str] = {}

    def add(self, name: str, body: str) -> str:
        base = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-").lower() or "rule"
        key, n = base, 1
        while key in self.rules:
            n += 1
            key = f"{base}-{n}"
        self.rules[key] = body
        return key

    def rule(self, name: str, schema: Any) -> str:
        """A rule (name) or an inline expression for ``schema``."""
        if not isinstance(schema, Mapping):
            return "value" if schema is not False else self.add(name, '"null"')
        if "$ref" in schema:
            return self._ref(name, str(schema["$ref"]))
        if "const" in schema:
            return _literal(json.dumps(schema["const"], ensure_ascii=False))
        if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
            return self.add(name, " | ".join(_literal(json.dumps(v, ensure_ascii=False)) for v in schema["enum"]))
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.add(name, " | ".join(self.rule(f"{name}-{i}", option) for i, option in enumerate(options)))
        kind = schema.get("type")
        if isinstance(kind, list):
            if not kind:
                return "value"
            return self.add(
                name, " | ".join(self.rule(f"{name}-{k}", {**schema, "type": k}) for k in kind if isinstance(k, str))
            )
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(name, schema)
        if kind == "array":
            items = schema.get("items")
            if items is None:
                return "array"
            item = self.rule(f"{name}-item", items)
            return self.add(name, rf'"[" ws ( {item} ( ws "," ws {item} )* )? ws "]"')
        if kind in ("string", "integer", "number", "boolean", "null"):
            return str(kind)
        return "value"

    def _ref(self, name: str, ref: str) -> str:
        key = (id(self.root_schema), ref)
        if key in self._refs:
            return self._refs[key]
        target: Any = self.root_schema
        if not ref.startswith("#"):
            return "value"  # a remote reference: not followed
        for part in ref.lstrip("#").strip("/").split("/") if ref.strip("#/") else []:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, Mapping) else None
        if target is None:
            return "value"
        rule_name = self.add(f"{name}-ref-{ref.rsplit('/', 1)[-1]}", "value")  # placeholder, for recursion
        self._refs[key] = rule_name
        body = self.rule(f"{rule_name}-body", target)
        self.rules[rule_name] = body
        return rule_name

    def _object(self, name: str, schema: Mapping[str, Any]) -> str:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping) or not properties:
            if schema.get("additionalProperties") is False or isinstance(properties, Mapping):
                return self.add(name, r'"{" ws "}"')
            return "object"
        required = {k for k in schema.get("required") or [] if k in properties}
        keys = list(properties)
        pairs = [
            rf'{_literal(json.dumps(str(key), ensure_ascii=False))} ws ":" ws {self.rule(f"{name}-{key}", value)}'
            for key, value in properties.items()
        ]

        def after(i: int) -> str:
            """Properties ``i..`` in schema order, after one already written (so each starts with a comma)."""
            parts = [
                rf'ws "," ws {pairs[j]}' if keys[j] in required else rf'( ws "," ws {pairs[j]} )?'
                for j in range(i, len(keys))
            ]
            return " ".join(parts)

        def first(i: int) -> str:
            """Properties ``i..`` in schema order, none written yet."""
            if i == len(keys):
                return ""
            here = f"{pairs[i]} {after(i + 1)}".strip()
            if keys[i] in required:
                return here
            rest = first(i + 1)
            # (llama.cpp reads past a newline after a trailing "|": an empty last alternative breaks the grammar)
            return self.add(f"{name}-from-{i}", f"{here} | {rest}" if rest else f"( {here} )?")

        body = first(0)
        return self.add(name, rf'"{{" ws {body} ws "}}"')
