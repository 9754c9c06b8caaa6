"""Options and helpers shared by the ``glimp`` commands (the CLI reads environment variables; the library never).

Three option groups hand their values to a command as one argument each, so that a command neither re-spells nor
forwards them one by one: :func:`endpoint_options` (``servers``, a :class:`Servers`), :func:`local_options`
(``local``, a :class:`LocalPair`) and :func:`router_options` (``settings``, the router's settings as a dict).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
from click.core import ParameterSource
from pydantic import ValidationError

from glimp_graph.config import GlimpConfig, check_tau
from glimp_graph.endpoints import Endpoint
from glimp_graph.errors import EndpointError, GlimpError, InputError

if TYPE_CHECKING:
    from glimp_graph.serving import LocalModels

LOCAL_SMALL = "qwen2.5-coder-0.5b"
LOCAL_LARGE = "qwen2.5-coder-1.5b"

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class RuntimeFailure(click.ClickException):
    """A failure while running (a server, the network, the weights): ``error: ...`` on stderr, exit code 1."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        """Print ``error: MESSAGE`` (red on a terminal) to stderr."""
        click.secho(f"error: {self.format_message()}", fg="red", err=file is None, file=file)


class GlimpGroup(click.Group):
    """The ``glimp`` group: the one place where the library's errors become a message and an exit code.

    Bad option values are :class:`click.BadParameter` (exit 2, raised while parsing); a bad input found by the
    graph (:class:`~glimp_graph.errors.InputError`, e.g. an empty question) is a usage error too (exit 2); any
    other :class:`~glimp_graph.errors.GlimpError` (a server unreachable or failing, weights, a build) is a
    runtime failure (exit 1). None of them prints a traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command, mapping :class:`~glimp_graph.errors.GlimpError` to click's exceptions."""
        try:
            return super().invoke(ctx)
        except GlimpError as exc:
            if isinstance(exc, InputError) and not isinstance(exc, EndpointError):
                raise click.UsageError(str(exc)) from None
            raise RuntimeFailure(str(exc)) from None


# --------------------------------------------------------------------------- option callbacks


def parse_tau(value: str) -> float:
    """A threshold typed on the command line (``inf`` and ``-inf`` allowed, ``nan`` refused).

    Args:
        value: The text of ``--tau`` or of one ``--threshold`` value.

    Returns:
        The threshold, checked by :func:`~glimp_graph.config.check_tau`.

    Raises:
        click.BadParameter: ``value`` is not a number of nats.

    """
    try:
        return check_tau(float(value))
    except ValueError:
        raise click.BadParameter(f"tau must be a number of nats, 'inf' or '-inf', got {value!r}") from None


def _tau_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """Click callback: ``--tau`` as a float (``inf`` and ``-inf`` allowed, ``nan`` refused)."""
    return parse_tau(value)


def _given(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``'VALUE'``, with the environment variable it came from when it did not come from the command line."""
    envvar = param.envvar if isinstance(param.envvar, str) else None
    if param.name and envvar and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT:
        return f"{value!r} (from {envvar})"
    return repr(value)


def _url_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: an OpenAI-compatible base URL, ``http://`` or ``https://`` with a host (empty: not given)."""
    if not value:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme in ("http", "https") and parts.netloc:
        return value
    if "://" not in value:
        fix = f"write it with its scheme, e.g. http://{value}"
    elif parts.scheme not in ("http", "https"):
        fix = "use an http:// or https:// URL, e.g. http://127.0.0.1:8001/v1"
    else:
        fix = "add the host and port, e.g. http://127.0.0.1:8001/v1"
    raise click.BadParameter(f"{_given(ctx, param, value)} is not an http(s) URL; {fix}")


def _local_model_option(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Click callback: the name of a local model known to :data:`~glimp_graph.serving.MODELS`."""
    from glimp_graph.serving.weights import MODELS

    if value not in MODELS:
        raise click.BadParameter(f"unknown model {value!r}; choose one of {', '.join(sorted(MODELS))}")
    return value


def memory_split_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    """Click callback: ``SMALL,LARGE`` GPU memory fractions."""
    try:
        small, large = (float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two fractions SMALL,LARGE such as 0.25,0.65, got {value!r}") from None
    return small, large


def json_object_option(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    """Click callback: a JSON object (``None`` when not given)."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f'{value!r} is not JSON ({exc.msg}); give an object such as \'{{"method": "ngram"}}\''
        ) from None
    if not isinstance(parsed, dict):
        raise click.BadParameter(f'{value!r} is not a JSON object; give one such as \'{{"method": "ngram"}}\'')
    return parsed


def with_option_names(message: str, names: Iterable[str]) -> str:
    """``message`` with each of the Python ``names`` written as its option: ``top_k`` -> ``--top-k``.

    Args:
        message: A library error message.
        names: The parameter names to rewrite where they stand as words.

    Returns:
        The message as the command line's user reads it.

    """
    ordered = sorted(names, key=len, reverse=True)
    if not ordered:
        return message
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, ordered)) + r")\b")
    return pattern.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


def checked_config(settings: dict[str, Any]) -> GlimpConfig:
    """``GlimpConfig(**settings)``, a bad value becoming one usage error naming the option that set it.

    Each setting must come from the option of the same name (``max_step_tokens`` from ``--max-step-tokens``), as
    the ``settings`` of :func:`router_options` do.

    Args:
        settings: The router's settings.

    Returns:
        The validated settings.

    Raises:
        click.BadParameter: One option's value is bad.
        click.UsageError: A rule across options is broken (the message names each option).

    """
    try:
        return GlimpConfig(**settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a rule across settings: the message names them
            raise click.UsageError(
                with_option_names(message, [n for n in GlimpConfig.model_fields if "_" in n])
            ) from None
        if repr(error["input"]) not in message:
            message += f", got {error['input']!r}"
        raise click.BadParameter(message, param_hint=f"'--{str(error['loc'][0]).replace('_', '-')}'") from None


def count_option(name: str, default: int | None, help: str) -> Decorator:
    """An integer option of at least 1, its default (when it has one) shown in ``--help``.

    Args:
        name: The option, e.g. ``--gpus``.
        default: Its default (``None``: not given).
        help: Its help text.

    Returns:
        The ``click.option`` decorator.

    """
    return click.option(name, default=default, show_default=default is not None, type=click.IntRange(min=1), help=help)


# --------------------------------------------------------------------------- option groups


def grouped(into: str, options: Sequence[Decorator], make: Callable[..., Any]) -> Decorator:
    """Add ``options`` to a command and hand their values to it as one argument ``into``: ``make(**values)``.

    Args:
        into: The name of the command function's argument that receives the group.
        options: ``click.option(...)`` decorators, in the order ``--help`` lists them.
        make: Builds the argument from the options' values, by their parameter names.

    Returns:
        A decorator for a command function (put it below ``@click.command``).

    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        names: list[str] = []

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            kwargs[into] = make(**{name: kwargs.pop(name) for name in names})
            return fn(*args, **kwargs)

        params: list[click.Parameter] = list(getattr(fn, "__click_params__", []))
        command.__click_params__ = params  # type: ignore[attr-defined]
        before = len(params)
        for option in reversed(options):
            option(command)
        names.extend(str(p.name) for p in params[before:])
        return command

    return decorate


@dataclass(frozen=True)
class LocalPair:
    """The local pair of models to serve on 127.0.0.1 with llama.cpp's server.

    Attributes:
        local_small: The small model's name (``--local-small``).
        local_large: The large model's name (``--local-large``).
        cache_dir: Where weights and the ``llama-server`` binary are kept (``--cache-dir``; ``None``: the default).
        ctx_size: The servers' context size (``--ctx-size``).

    """

    local_small: str
    local_large: str
    cache_dir: Path | None
    ctx_size: int

    def start(self) -> LocalModels:
        """The two servers, started when the returned context is entered and stopped when it is left."""
        from glimp_graph.serving import LocalModels

        return LocalModels(
            small=self.local_small, large=self.local_large, cache_dir=self.cache_dir, ctx_size=self.ctx_size
        )


cache_dir_option = click.option(
    "--cache-dir",
    envvar="GLIMP_CACHE_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Cache for weights and the llama-server binary [default: ~/.cache/glimp-graph].",
)
"""``--cache-dir`` (env ``GLIMP_CACHE_DIR``)."""

LOCAL_OPTIONS: list[Decorator] = [
    click.option(
        "--local-small", default=LOCAL_SMALL, show_default=True, callback=_local_model_option, help="Local small model."
    ),
    click.option(
        "--local-large", default=LOCAL_LARGE, show_default=True, callback=_local_model_option, help="Local large model."
    ),
    cache_dir_option,
    click.option("--ctx-size", default=8192, show_default=True, help="Context size of local servers."),
]
"""The options of :class:`LocalPair`."""


@dataclass(frozen=True)
class Servers:
    """Where the two models are: ``--small-url`` and ``--large-url``, or (neither given) a local pair to start.

    Attributes:
        small_url: The small model's base URL.
        large_url: The large model's base URL.
        small_model: The small model's served name.
        large_model: The large model's served name.
        api_key: Bearer token for both endpoints.
        local: The pair started when no URL is given.

    """

    small_url: str | None
    large_url: str | None
    small_model: str | None
    large_model: str | None
    api_key: str | None
    local: LocalPair

    @classmethod
    def from_options(
        cls,
        *,
        small_url: str | None,
        large_url: str | None,
        small_model: str | None,
        large_model: str | None,
        api_key: str | None,
        **local: Any,
    ) -> Servers:
        """The group's value, from the values of :func:`endpoint_options`."""
        return cls(small_url, large_url, small_model, large_model, api_key, LocalPair(**local))

    @contextlib.contextmanager
    def endpoints(self, started: list[Any] | None = None) -> Iterator[tuple[Endpoint, Endpoint]]:
        """The small and the large endpoint; the local pair runs (when started) until the block ends.

        Args:
            started: When given, the servers started here (small, large) are appended to it (e.g. for their pids).

        Raises:
            click.UsageError: Only one of the two URLs was given.

        """
        if bool(self.small_url) != bool(self.large_url):
            raise click.UsageError("give both --small-url and --large-url, or neither (then local models are started)")
        if self.small_url and self.large_url:
            key = {"api_key": self.api_key} if self.api_key else {}
            yield (
                Endpoint(base_url=self.small_url, model=self.small_model or "small", **key),
                Endpoint(base_url=self.large_url, model=self.large_model or "large", **key),
            )
            return
        local = self.local
        click.echo(
            f"Starting local models: small={local.local_small}, large={local.local_large} (llama.cpp server)", err=True
        )
        with local.start() as models:
            click.echo(f"  small: {models.small.base_url}  large: {models.large.base_url}", err=True)
            if started is not None:
                started += [models.small, models.large]
            yield (
                Endpoint(base_url=models.small.base_url, model=models.small.alias),
                Endpoint(base_url=models.large.base_url, model=models.large.alias),
            )


local_options = grouped("local", LOCAL_OPTIONS, LocalPair)
"""The local pair's options, handed to the command as ``local`` (a :class:`LocalPair`)."""

endpoint_options = grouped(
    "servers",
    [
        click.option(
            "--small-url",
            envvar="GLIMP_SMALL_URL",
            callback=_url_option,
            help="Small model's OpenAI-compatible base URL (http:// or https://).",
        ),
        click.option(
            "--large-url",
            envvar="GLIMP_LARGE_URL",
            callback=_url_option,
            help="Large model's OpenAI-compatible base URL (http:// or https://).",
        ),
        click.option("--small-model", envvar="GLIMP_SMALL_MODEL", help="Small model's served name."),
        click.option("--large-model", envvar="GLIMP_LARGE_MODEL", help="Large model's served name."),
        click.option("--api-key", envvar="GLIMP_API_KEY", help="Bearer token for both endpoints."),
        *LOCAL_OPTIONS,
    ],
    Servers.from_options,
)
"""The two endpoints' options, handed to the command as ``servers`` (a :class:`Servers`)."""


@dataclass(frozen=True)
class Budgets:
    """Default budgets of a command's reasoning and answer (the ``--max-...`` options).

    Attributes:
        max_step_tokens: Token cap of one step.
        max_thinking_tokens: Token budget of the reasoning.
        max_steps: Step budget of the reasoning.
        final_max_tokens: Token cap of the final answer.

    """

    max_step_tokens: int = 256
    max_thinking_tokens: int = 2048
    max_steps: int = 64
    final_max_tokens: int = 512

    def options(self) -> list[Decorator]:
        """The four options, with these defaults."""
        return [
            click.option(
                "--max-step-tokens", default=self.max_step_tokens, show_default=True, help="Token cap of one step."
            ),
            click.option(
                "--max-thinking-tokens",
                default=self.max_thinking_tokens,
                show_default=True,
                help="Token budget of the reasoning.",
            ),
            click.option(
                "--max-steps", default=self.max_steps, show_default=True, help="Step budget of the reasoning."
            ),
            click.option(
                "--final-max-tokens", default=self.final_max_tokens, show_default=True, help="Token cap of the answer."
            ),
        ]


RUN_BUDGETS = Budgets()
"""``glimp ask`` and ``glimp serve-router``: one question at a time, answered in full."""

EVAL_BUDGETS = Budgets(max_thinking_tokens=1024, final_max_tokens=128)
"""``glimp eval`` and ``glimp calibrate`` run every problem once per strategy and threshold, and their problem sets
are graded on one short answer (an integer, a boxed expression): half the reasoning budget and a short answer keep
a whole grid affordable on the local CPU pair. Calibration uses them too, so the tau it picks fits an evaluation."""


def router_options(budgets: Budgets, *, tau: bool = True, probe: bool = False) -> Decorator:
    """The router's options, handed to the command as ``settings`` (a dict for :func:`checked_config`).

    Args:
        budgets: The defaults of ``--max-step-tokens``, ``--max-thinking-tokens``, ``--max-steps`` and
            ``--final-max-tokens``.
        tau: Add ``--tau``.
        probe: Add the probe's options ``--top-k``, ``--estimator`` and ``--vocab-size``.

    Returns:
        The decorator.

    """
    options: list[Decorator] = []
    if tau:
        options.append(
            click.option(
                "--tau",
                default="1.0",
                show_default=True,
                callback=_tau_option,
                help="Entropy threshold in nats (inf, -inf ok).",
            )
        )
    if probe:
        options += [
            click.option(
                "--top-k", default=20, show_default=True, help="Log-probabilities per probe (-1: whole vocabulary)."
            ),
            click.option(
                "--estimator", default="renormalized", show_default=True, help="renormalized, lower, upper or exact."
            ),
            click.option(
                "--vocab-size", type=int, help="The small model's vocabulary size (the upper estimator needs it)."
            ),
        ]
    options.append(
        click.option(
            "--prompt",
            default="steps",
            show_default=True,
            help="Prompt preset: steps (instruct models), plain (the same, each step as plain sentences: no "
            "numbering or Markdown) or r1 (<think> models).",
        )
    )
    return grouped("settings", [*options, *budgets.options()], dict)
