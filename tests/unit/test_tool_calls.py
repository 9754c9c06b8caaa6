"""Tools on the final-answer call: checking them, the request per server kind, reading the calls back, the grammar.

The grammar is checked with a small GBNF matcher (below) that knows the subset :func:`tool_grammar` writes; the
real llama-server runs it in tests/integration/test_tool_calls_real.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from glimp_graph.tool_calls import check_tools, tool_calls_from, tool_grammar, tool_request

CALC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}, "days": {"type": "integer"}},
        },
    },
}
NAMED = {"type": "function", "function": {"name": "calculator"}}


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    return expression


class Item(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    """Place an order."""

    customer: str
    items: list[Item]
    priority: Literal["low", "high"] = "low"
    note: str | None = None


def checked(tools: list[Any] = [CALC], choice: Any = "auto") -> tuple[list[dict[str, Any]], Any]:  # noqa: B006
    return check_tools(tools, choice)


# -- check_tools -------------------------------------------------------------------------------------------------
def test_tools_are_normalised_to_openai_tool_dicts() -> None:
    bare = {"name": "now", "description": "The time."}
    tools, choice = check_tools([CALC, Order, bare], None)
    assert choice == "auto"
    assert tools[0] == CALC
    assert tools[0] is not CALC
    assert tools[1] == convert_to_openai_tool(Order)
    assert tools[2] == {
        "type": "function",
        "function": {"name": "now", "description": "The time.", "parameters": {"type": "object", "properties": {}}},
    }
    assert check_tools([calculator], "required")[0][0]["function"]["name"] == "calculator"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, "auto"),
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("any", "required"),
        (True, "required"),
        ("calculator", NAMED),
        (NAMED, NAMED),
    ],
)
def test_tool_choices_are_normalised(choice: Any, expected: Any) -> None:
    assert checked([CALC, WEATHER], choice)[1] == expected


def test_no_tools_and_no_forced_call_means_no_tools() -> None:
    assert check_tools(None, None) == ([], None)
    assert check_tools([], "auto") == ([], None)
    assert check_tools([], "none") == ([], None)


@pytest.mark.parametrize("choice", ["required", "any", True, NAMED])
def test_a_forced_call_without_tools_is_refused(choice: Any) -> None:
    with pytest.raises(ValueError, match=r"requires a tool call, but no tools are given: pass the tools"):
        check_tools([], choice)


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([CALC], {"type": "function", "function": {"name": "search"}}, r"'search', which is not among the tools"),
        ([CALC], "search", r"unknown tool_choice 'search': use 'auto', 'required', 'none', or the name"),
        ([CALC], "always", r"unknown tool_choice 'always'"),
        ([CALC], {"type": "tool", "name": "calculator"}, r"a named choice is \{'type': 'function'"),
        ([CALC], 3, r"unknown tool_choice 3"),
        ([{"type": "function", "function": {"description": "x"}}], "auto", r"tool 0 has no name: give the function"),
        ([{"type": "function", "function": {"name": ""}}], "auto", r"tool 0 has no name"),
        ([{"type": "function"}], "auto", r"tool 0 has no 'function' object"),
        ([{"type": "retrieval", "function": {"name": "x"}}], "auto", r"only 'function' tools are supported"),
        ([{"name": "my tool"}], "auto", r"tool name 'my tool' is not allowed: use 1 to 64 letters"),
        ([{"name": "f", "parameters": {"type": "array"}}], "auto", r"must be a JSON schema of an object"),
        ([{"name": "f", "parameters": ["x"]}], "auto", r"tool 'f' has parameters \['x'\]: the parameters must"),
        ([{"name": "f", "description": 3}], "auto", r"description that is not a string"),
        ([CALC, CALC], "auto", r"\['calculator'\] appear more than once: rename"),
        ([3], "auto", r"tool 0 \(3\) is not a tool: pass an OpenAI tool dict"),
    ],
)
def test_bad_tools_and_choices_are_named_with_the_fix(tools: list[Any], choice: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_tools(tools, choice)


# -- tool_request --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("choice", ["auto", "required", "none", NAMED])
def test_openai_gets_the_openai_fields(choice: Any) -> None:
    tools, choice = checked([CALC, WEATHER], choice)
    assert tool_request("openai", tools, choice) == {"tools": tools, "tool_choice": choice}


@pytest.mark.parametrize("choice", ["auto", "required", "none", NAMED])
def test_vllm_gets_the_openai_fields_with_strict_tools(choice: Any) -> None:
    loose = {"name": "f", "parameters": {"type": "object", "properties": {}}, "strict": False}
    tools, choice = checked([CALC, loose], choice)
    request = tool_request("vllm", tools, choice)
    assert request["tool_choice"] == choice
    assert request["tools"][0] == {**CALC, "function": {**CALC["function"], "strict": True}}
    assert request["tools"][1]["function"]["strict"] is False  # the tool's own choice is kept
    assert "strict" not in tools[0]["function"]  # the caller's tools are not changed


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_llama_cpp_auto_and_none_get_the_openai_fields(choice: str) -> None:
    tools, choice = checked([CALC, WEATHER], choice)
    assert tool_request("llama.cpp", tools, choice) == {"tools": tools, "tool_choice": choice}


def test_llama_cpp_required_gets_the_tools_shown_no_server_parsing_and_a_grammar_of_every_tool() -> None:
    tools, choice = checked([CALC, WEATHER], "required")
    request = tool_request("llama.cpp", tools, choice)
    assert request["tools"] == tools
    assert request["tool_choice"] == "none"  # the server refuses a grammar with tools unless "none"
    assert request["extra_body"] == {"grammar": tool_grammar(tools)}
    assert set(request) == {"tools", "tool_choice", "extra_body"}


def test_llama_cpp_named_choice_gets_a_grammar_of_that_tool_only() -> None:
    tools, choice = checked([CALC, WEATHER], "get_weather")
    grammar = tool_request("llama.cpp", tools, choice)["extra_body"]["grammar"]
    assert grammar == tool_grammar([tools[1]])
    assert matches(grammar, '{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert not matches(grammar, '{"name": "calculator", "arguments": {"expression": "1+1"}}')


def test_no_tools_no_request_fields_and_unknown_server_kinds_are_refused() -> None:
    assert tool_request("vllm", [], None) == {}
    with pytest.raises(ValueError, match=r"unknown server kind 'tgi': use 'vllm', 'llama.cpp' or 'openai'"):
        tool_request("tgi", [CALC], "auto")


# -- tool_calls_from -----------------------------------------------------------------------------------------------
def read(text: str, choice: Any = "auto", calls: list[Any] = (), invalid: list[Any] = (), server: str = "llama.cpp"):  # type: ignore[assignment]
    tools, choice = checked([CALC, WEATHER], choice)
    return tool_calls_from(server, text, list(calls), list(invalid), tools, choice)


def is_new_id(value: str) -> bool:
    return re.fullmatch(r"call_[0-9a-f]{32}", value) is not None


def test_the_servers_calls_are_kept_with_their_ids() -> None:
    call = {"name": "calculator", "args": {"expression": "2+2"}, "id": "abc", "type": "tool_call"}
    text, calls, invalid = read(" Let me compute. ", calls=[call], server="vllm")
    assert (text, calls, invalid) == ("Let me compute.", [call], [])


def test_a_server_call_without_an_id_gets_one() -> None:
    call = {"name": "calculator", "args": {"expression": "2+2"}, "id": None, "type": "tool_call"}
    _, calls, _ = read("", calls=[call], server="vllm")
    assert is_new_id(calls[0]["id"])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ({"name": "search", "args": {"q": "x"}, "id": "1"}, r"unknown tool 'search'; the tools are \['calculator'"),
        ({"name": "calculator", "args": [1, 2], "id": "1"}, r"arguments of 'calculator' are not a JSON object"),
        ({"name": "calculator", "args": "{bad", "id": "1"}, r"arguments are not valid JSON"),
    ],
)
def test_bad_server_calls_become_invalid_calls(call: dict[str, Any], error: str) -> None:
    _, calls, invalid = read("", calls=[call], server="vllm")
    assert calls == []
    assert len(invalid) == 1
    assert invalid[0]["type"] == "invalid_tool_call"
    assert invalid[0]["id"] == "1"
    assert re.search(error, invalid[0]["error"]), invalid[0]["error"]
    assert isinstance(invalid[0]["args"], str)


@pytest.mark.parametrize(
    ("args", "valid"),
    [('{"expression": "23 * 4"}', True), ('{"expression": "23 *', False), ("", True), ('{"expression": 17 *', False)],
)
def test_raw_argument_strings_from_streamed_chunks_are_parsed_strictly(args: str, valid: bool) -> None:
    # a streamed call's tool_call_chunks carry the raw argument text; LangChain's own merge "repairs" it
    _, calls, invalid = read("", calls=[{"name": "calculator", "args": args, "id": "c1"}], server="vllm")
    assert (len(calls), len(invalid)) == ((1, 0) if valid else (0, 1))
    if not valid:
        assert invalid[0]["args"] == args
        assert "not valid JSON" in invalid[0]["error"]


def test_the_servers_invalid_calls_are_kept() -> None:
    bad = {"name": "calculator", "args": "{oops", "id": "9", "error": "bad JSON", "type": "invalid_tool_call"}
    _, calls, invalid = read("", invalid=[bad], server="vllm")
    assert calls == []
    assert invalid == [bad]


def test_a_named_choice_called_with_another_tool_is_invalid() -> None:
    call = {"name": "get_weather", "args": {"city": "Oslo"}, "id": "1"}
    _, calls, invalid = read("", choice="calculator", calls=[call], server="vllm")
    assert calls == []
    assert "tool_choice named 'calculator', but the model called 'get_weather'" in invalid[0]["error"]


def test_the_grammar_output_becomes_a_call_with_a_new_id() -> None:
    text, calls, invalid = read('{"name": "calculator", "arguments": {"expression": "37 * 24"}}', "required")
    assert text == ""
    assert invalid == []
    assert [(c["name"], c["args"], c["type"]) for c in calls] == [
        ("calculator", {"expression": "37 * 24"}, "tool_call")
    ]
    assert is_new_id(calls[0]["id"])


def test_tool_call_tags_are_read_and_removed_from_the_text() -> None:
    text = 'I will compute it.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "3*4"}}\n</tool_call>'
    rest, calls, invalid = read(text)
    assert rest == "I will compute it."
    assert [(c["name"], c["args"]) for c in calls] == [("calculator", {"expression": "3*4"})]
    assert invalid == []


def test_two_tagged_calls_and_an_unterminated_tag_are_read() -> None:
    text = (
        '<tool_call>{"name": "calculator", "arguments": {"expression": "1+1"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}'
    )
    rest, calls, invalid = read(text)
    assert invalid == []
    assert [c["name"] for c in calls] == ["calculator", "get_weather"]
    assert rest == ""
    assert len({c["id"] for c in calls}) == 2


def test_a_json_code_block_naming_a_tool_is_a_call() -> None:
    text = 'Use the tool:\n```json\n{"name": "calculator", "arguments": {"expression": "5-2"}}\n```'
    rest, calls, _ = read(text)
    assert rest == "Use the tool:"
    assert calls[0]["args"] == {"expression": "5-2"}


def test_parameters_and_string_encoded_arguments_are_accepted() -> None:
    _, calls, _ = read('{"name": "calculator", "parameters": {"expression": "1"}}')
    assert calls[0]["args"] == {"expression": "1"}
    _, calls, _ = read(json.dumps({"name": "calculator", "arguments": json.dumps({"expression": "2"})}))
    assert calls[0]["args"] == {"expression": "2"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('<tool_call>{"name": "calculator", "arguments": {"expression": </tool_call>', "not valid JSON"),
        ('<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>', "unknown tool 'search'"),
        ('```json\n{"name": "search", "arguments": {}}\n```', "unknown tool 'search'"),
        ('{"name": "calculator", "arguments": 42}', "not a JSON object"),
        ('{"name": "calculator", "arguments": "not json"}', "not valid JSON"),
    ],
)
def test_bad_calls_in_the_text_become_invalid_calls_never_errors(text: str, error: str) -> None:
    _, calls, invalid = read(text)
    assert calls == []
    assert len(invalid) == 1
    assert error in invalid[0]["error"]
    assert is_new_id(invalid[0]["id"])


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 42.",
        '```json\n{"answer": 42}\n```',
        '```python\nprint("calculator")\n```',
        'He said {"name": "calculator"} is a nice name.',
        "",
    ],
)
def test_text_that_is_no_call_stays_text_with_auto(text: str) -> None:
    rest, calls, invalid = read(text)
    assert (rest, calls, invalid) == (text.strip(), [], [])


def test_with_none_the_text_is_not_read() -> None:
    text = '<tool_call>{"name": "calculator", "arguments": {"expression": "1"}}</tool_call>'
    assert read(text, "none") == (text, [], [])


@pytest.mark.parametrize(("choice", "wanted"), [("required", "a tool call"), ("calculator", "a call of 'calculator'")])
def test_text_instead_of_a_forced_call_is_an_invalid_call(choice: str, wanted: str) -> None:
    text, calls, invalid = read("The answer is 42.", choice)
    assert (text, calls) == ("", [])
    assert invalid[0]["args"] == "The answer is 42."
    assert f"tool_choice required {wanted}, but the model answered with text" in invalid[0]["error"]


# -- the grammar ---------------------------------------------------------------------------------------------------
def test_the_calculator_grammar_admits_its_calls_only() -> None:
    grammar = tool_grammar([CALC])
    assert matches(grammar, '{"name": "calculator", "arguments": {"expression": "37 * 24"}}')
    assert matches(grammar, '{"name":"calculator","arguments":{"expression":"a \\"quoted\\" \\u00e9"}}')
    assert matches(grammar, '{\n  "name": "calculator",\n  "arguments": {"expression": "1"}\n}')
    assert not matches(grammar, '{"name": "calc", "arguments": {"expression": "1"}}')
    assert not matches(grammar, '{"name": "calculator", "arguments": {}}')  # expression is required
    assert not matches(grammar, '{"name": "calculator", "arguments": {"expression": 1}}')
    assert not matches(grammar, '{"name": "calculator", "arguments": {"expression": "1"}} and more')
    assert not matches(grammar, "The answer is 888.")


def test_optional_properties_any_ordered_subset() -> None:
    grammar = tool_grammar([WEATHER])
    for args in (
        {},
        {"city": "Oslo"},
        {"unit": "f"},
        {"city": "Oslo", "days": 2},
        {"city": "Oslo", "unit": "c", "days": -1},
    ):
        assert matches(grammar, json.dumps({"name": "get_weather", "arguments": args})), args
    assert not matches(grammar, json.dumps({"name": "get_weather", "arguments": {"unit": "kelvin"}}))
    assert not matches(grammar, json.dumps({"name": "get_weather", "arguments": {"days": 1.5}}))
    assert not matches(grammar, '{"name": "get_weather", "arguments": {"days": 2, "city": "Oslo"}}')  # schema order


def test_nested_models_enums_nullable_and_several_tools() -> None:
    tools, _ = check_tools([CALC, Order], "required")
    grammar = tool_grammar(tools)
    good = {"customer": "Al", "items": [{"sku": "A1", "qty": 2}, {"sku": "B", "qty": 0}], "priority": "high"}
    assert matches(grammar, json.dumps({"name": "Order", "arguments": good}))
    assert matches(grammar, json.dumps({"name": "Order", "arguments": {**good, "items": [], "note": None}}))
    assert matches(grammar, json.dumps({"name": "calculator", "arguments": {"expression": "1"}}))
    assert not matches(grammar, json.dumps({"name": "Order", "arguments": {**good, "priority": "urgent"}}))
    assert not matches(grammar, json.dumps({"name": "Order", "arguments": {"customer": "Al", "items": [{"sku": 1}]}}))


def test_refs_recursion_type_lists_const_and_unknown_schemas() -> None:
    tree = {
        "name": "tree",
        "parameters": {
            "type": "object",
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "v": {"type": "number"},
                        "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    },
                    "required": ["v"],
                }
            },
            "properties": {
                "root": {"$ref": "#/$defs/Node"},
                "tag": {"type": ["string", "null"]},
                "mode": {"const": "fast"},
                "extra": {},
            },
            "required": ["root", "mode"],
        },
    }
    tools, _ = check_tools([tree], "required")
    grammar = tool_grammar(tools)
    args = {"root": {"v": 1, "kids": [{"v": 2.5}, {"v": -3e2, "kids": []}]}, "mode": "fast", "extra": [1, {"a": None}]}
    assert matches(grammar, json.dumps({"name": "tree", "arguments": args}))
    assert matches(grammar, json.dumps({"name": "tree", "arguments": {"root": {"v": 0}, "tag": None, "mode": "fast"}}))
    assert not matches(grammar, json.dumps({"name": "tree", "arguments": {"root": {"v": 0}, "mode": "slow"}}))
    assert not matches(grammar, json.dumps({"name": "tree", "arguments": {"root": {"kids": []}, "mode": "fast"}}))


def test_no_arguments_and_odd_names_give_valid_rule_names() -> None:
    tools, _ = check_tools([{"name": "now"}, {"name": "Do-It_2"}], "required")
    grammar = tool_grammar(tools)
    assert all(re.fullmatch(r"[a-z0-9-]+ ::= .+", line) for line in grammar.splitlines())
    assert matches(grammar, '{"name": "now", "arguments": {}}')
    assert matches(grammar, '{"name": "Do-It_2", "arguments": { }}')
    assert not matches(grammar, '{"name": "now", "arguments": {"x": 1}}')
    with pytest.raises(ValueError, match="needs at least one tool"):
        tool_grammar([])


# -- a GBNF matcher for the subset tool_grammar writes -------------------------------------------------------------
Node = tuple[Any, ...]
_TOKEN = re.compile(
    r'\s*(?:(?P<lit>"(?:\\.|[^"\\])*")|(?P<cls>\[(?:\\.|[^\]\\])*\])|(?P<rep>\{\d+(?:,\d*)?\})|(?P<op>[|()?*+])'
    r"|(?P<name>[A-Za-z0-9-]+))"
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "]": "]", "[": "[", "-": "-", "/": "/"}


def _unescape(body: str) -> list[str]:
    """Characters of a literal or class body, escapes resolved (a ``\\`` before ``-`` keeps it literal)."""
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\":
            nxt = body[i + 1]
            if nxt == "x":
                out.append(chr(int(body[i + 2 : i + 4], 16)))
                i += 4
                continue
            if nxt == "u":
                out.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append("\\-" if nxt == "-" else _ESCAPES[nxt])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return out


def _char_class(text: str) -> Node:
    chars = _unescape(text[1:-1])
    negated = bool(chars) and chars[0] == "^"
    chars = chars[1:] if negated else chars
    ranges, i = [], 0
    while i < len(chars):
        c = "-" if chars[i] == "\\-" else chars[i]
        if i + 2 < len(chars) and chars[i + 1] == "-":
            ranges.append((c, "-" if chars[i + 2] == "\\-" else chars[i + 2]))
            i += 3
        else:
            ranges.append((c, c))
            i += 1
    return ("cls", negated, ranges)


def parse_gbnf(text: str) -> dict[str, Node]:
    rules = {}
    for line in text.strip().splitlines():
        name, body = line.split(" ::= ", 1)
        assert not body.rstrip().endswith("|"), f"llama.cpp reads the next line after a trailing '|': {line}"
        tokens = [(m.lastgroup, m.group(m.lastgroup)) for m in _TOKEN.finditer(body) if m.lastgroup]
        assert "".join(v for _, v in tokens).replace(" ", "") == body.replace(" ", ""), f"unparsed: {line}"
        node, rest = _alt(tokens)
        assert not rest, f"left over in {line}: {rest}"
        rules[name] = node
    return rules


def _alt(tokens: list[tuple[str, str]]) -> tuple[Node, list[tuple[str, str]]]:
    options = []
    seq, tokens = _seq(tokens)
    options.append(seq)
    while tokens and tokens[0] == ("op", "|"):
        seq, tokens = _seq(tokens[1:])
        options.append(seq)
    return ("alt", options), tokens


def _seq(tokens: list[tuple[str, str]]) -> tuple[Node, list[tuple[str, str]]]:
    items: list[Node] = []
    while tokens and tokens[0] not in (("op", "|"), ("op", ")")):
        kind, value = tokens[0]
        tokens = tokens[1:]
        if kind == "lit":
            item: Node = ("lit", "".join(c if c != "\\-" else "-" for c in _unescape(value[1:-1])))
        elif kind == "cls":
            item = _char_class(value)
        elif kind == "name":
            item = ("ref", value)
        elif value == "(":
            item, tokens = _alt(tokens)
            assert tokens[0] == ("op", ")")
            tokens = tokens[1:]
        else:
            raise AssertionError(f"unexpected {value!r}")
        while tokens and (tokens[0][0] == "rep" or tokens[0] in (("op", "?"), ("op", "*"), ("op", "+"))):
            op = tokens[0][1]
            tokens = tokens[1:]
            if op.startswith("{"):
                low, _, high = op[1:-1].partition(",")
                bounds = (int(low), int(high) if high else (None if "," in op else int(low)))
            else:
                bounds = {"?": (0, 1), "*": (0, None), "+": (1, None)}[op]
            item = ("rep", item, *bounds)
        items.append(item)
    return ("seq", items), tokens


def _ends(rules: dict[str, Node], node: Node, s: str, i: int) -> Iterator[int]:
    kind = node[0]
    if kind == "lit":
        if s.startswith(node[1], i):
            yield i + len(node[1])
    elif kind == "cls":
        if i < len(s):
            inside = any(lo <= s[i] <= hi for lo, hi in node[2])
            if inside != node[1]:
                yield i + 1
    elif kind == "ref":
        yield from _ends(rules, rules[node[1]], s, i)
    elif kind == "alt":
        for option in node[1]:
            yield from _ends(rules, option, s, i)
    elif kind == "seq":
        yield from _seq_ends(rules, node[1], s, i)
    elif kind == "rep":
        yield from _rep_ends(rules, node[1], node[2], node[3], s, i, 0)


def _seq_ends(rules: dict[str, Node], items: list[Node], s: str, i: int) -> Iterator[int]:
    if not items:
        yield i
        return
    for j in _ends(rules, items[0], s, i):
        yield from _seq_ends(rules, items[1:], s, j)


def _rep_ends(rules: dict[str, Node], item: Node, low: int, high: int | None, s: str, i: int, n: int) -> Iterator[int]:
    if high is None or n < high:
        for j in _ends(rules, item, s, i):
            if j > i:
                yield from _rep_ends(rules, item, low, high, s, j, n + 1)
    if n >= low:
        yield i


def matches(grammar: str, text: str) -> bool:
    """Whether ``grammar``'s root admits exactly ``text``."""
    rules = parse_gbnf(grammar)
    return any(end == len(text) for end in _ends(rules, rules["root"], text, 0))


def test_the_matcher_itself() -> None:
    grammar = 'root ::= "a" [b-d]{1,2} ( "x" | "y" )? item*\nitem ::= [^z\\x00-\\x1F] | "\\n"\n'
    assert matches(grammar, "ab")
    assert matches(grammar, "acdx\n#")
    assert not matches(grammar, "a")
    assert not matches(grammar, "axb")
    assert not matches(grammar, "abz")
