"""Options and helpers shared by the ``glimp`` commands (the CLI reads environment variables; the library never)."""

from __future__ import annotations

import contextlib
import json
import math
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import click
from click.core import ParameterSource
from pydantic import ValidationError

from glimp_graph.config import Endpoint, GlimpConfig
from glimp_graph.errors import EndpointError, GlimpError, InputError

LOCAL_SMALL = "qwen2.5-coder-0.5b"
LOCAL_LARGE = "qwen2.5-coder-1.5b"


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


def _tau(value: str) -> float:
    try:
        tau = float(value)
    except ValueError:
        raise click.BadParameter(f"tau must be a number of nats, 'inf' or '-inf', got {value!r}") from None
    if math.isnan(tau):
        raise click.BadParameter("tau must be a number of nats, 'inf' or '-inf', got 'nan'")
    return tau


def _tau_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """Click callback: ``--tau`` as a float (``inf`` and ``-inf`` allowed, ``nan`` refused)."""
    return _tau(value)


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


def _with_option_names(message: str, names: Iterable[str]) -> str:
    """``message`` with each of the Python ``names`` written as its option: ``top_k`` -> ``--top-k``."""
    ordered = sorted(names, key=len, reverse=True)
    if not ordered:
        return message
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, ordered)) + r")\b")
    return pattern.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


def _config(**settings: Any) -> GlimpConfig:
    """``GlimpConfig(**settings)``, a bad value becoming one usage error naming the option that set it.

    Each setting must come from the option of the same name (``max_step_tokens`` from ``--max-step-tokens``).
    """
    try:
        return GlimpConfig(**settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a rule across settings: the message names them
            raise click.UsageError(
                _with_option_names(message, [n for n in GlimpConfig.model_fields if "_" in n])
            ) from None
        if repr(error["input"]) not in message:
            message += f", got {error['input']!r}"
        raise click.BadParameter(message, param_hint=f"'--{str(error['loc'][0]).replace('_', '-')}'") from None


def _memory_split_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float]:
    """Click callback: ``SMALL,LARGE`` GPU memory fractions."""
    try:
        small, large = (float(x) for x in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two fractions SMALL,LARGE such as 0.25,0.65, got {value!r}") from None
    return small, large


def _json_object_option(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
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


@contextlib.contextmanager
def _endpoints(
    small_url: str | None,
    large_url: str | None,
    small_model: str | None,
    large_model: str | None,
    api_key: str | None,
    local_small: str,
    local_large: str,
    cache_dir: Path | None,
    ctx_size: int,
) -> Iterator[tuple[Endpoint, Endpoint]]:
    if bool(small_url) != bool(large_url):
        raise click.UsageError("give both --small-url and --large-url, or neither (then local models are started)")
    if small_url and large_url:
        key = {"api_key": api_key} if api_key else {}
        yield (
            Endpoint(base_url=small_url, model=small_model or "small", **key),
            Endpoint(base_url=large_url, model=large_model or "large", **key),
        )
        return
    from glimp_graph.serving import LocalModels

    click.echo(f"Starting local models: small={local_small}, large={local_large} (llama.cpp server)", err=True)
    with LocalModels(small=local_small, large=local_large, cache_dir=cache_dir, ctx_size=ctx_size) as models:
        click.echo(f"  small: {models.small.base_url}  large: {models.large.base_url}", err=True)
        yield (
            Endpoint(base_url=models.small.base_url, model=models.small.alias),
            Endpoint(base_url=models.large.base_url, model=models.large.alias),
        )


def _endpoint_options(fn: Any) -> Any:
    options = [
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
        click.option(
            "--local-small",
            default=LOCAL_SMALL,
            show_default=True,
            callback=_local_model_option,
            help="Local small model.",
        ),
        click.option(
            "--local-large",
            default=LOCAL_LARGE,
            show_default=True,
            callback=_local_model_option,
            help="Local large model.",
        ),
        click.option(
            "--cache-dir",
            envvar="GLIMP_CACHE_DIR",
            type=click.Path(file_okay=False, path_type=Path),
            help="Cache for weights and the llama-server binary [default: ~/.cache/glimp-graph].",
        ),
        click.option("--ctx-size", default=8192, show_default=True, help="Context size of local servers."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
