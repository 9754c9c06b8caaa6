"""``glimp serve``: serve the local pair on 127.0.0.1 (until Ctrl-C), or print vLLM's commands for GPUs."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import click

from glimp_graph.cli.options import (
    LocalPair,
    count_option,
    json_object_option,
    local_options,
    memory_split_option,
    with_option_names,
)

if TYPE_CHECKING:
    from glimp_graph.serving.process import ManagedServer


@click.command()
@click.option(
    "--backend",
    type=click.Choice(["llama.cpp", "vllm"]),
    default="llama.cpp",
    show_default=True,
    help="llama.cpp: serve the local pair here; vllm: print the `vllm serve` commands for a GPU machine.",
)
@local_options
@click.option("--small-model", default="Qwen/Qwen3-4B", show_default=True, help="vllm: the small model.")
@click.option(
    "--large-model",
    default="deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    show_default=True,
    help="vllm: the large model.",
)
@count_option("--gpus", 1, "vllm: 1 = both models share GPU 0; >= 2 = a GPU each.")
@count_option("--tensor-parallel", 1, "vllm: GPUs for the large model.")
@click.option(
    "--memory-split",
    default="0.25,0.65",
    show_default=True,
    callback=memory_split_option,
    help="vllm, one GPU: memory fractions.",
)
@click.option("--max-logprobs", default=20, show_default=True, help="vllm: the small server's --max-logprobs.")
@click.option(
    "--speculative-config", callback=json_object_option, help="vllm: JSON for the large model's --speculative-config."
)
def serve(
    backend: str,
    local: LocalPair,
    small_model: str,
    large_model: str,
    gpus: int,
    tensor_parallel: int,
    memory_split: tuple[float, float],
    max_logprobs: int,
    speculative_config: dict[str, Any] | None,
) -> None:
    """Serve the two models: the local pair on 127.0.0.1 (until Ctrl-C), or print vLLM's commands for GPUs.

    If one local server dies, the other is stopped and the command exits 1, naming the server, how it ended and
    the last lines of its log.
    """
    if backend == "vllm":
        from glimp_graph.serving import vllm_commands

        try:
            lines = vllm_commands(
                small_model,
                large_model,
                gpus=gpus,
                gpu_memory_split=memory_split,
                tensor_parallel=tensor_parallel,
                speculative_config=speculative_config,
                max_logprobs=max_logprobs,
            )
        except (ValueError, TypeError) as exc:
            message = with_option_names(str(exc), ["gpus", "max_logprobs", "tensor_parallel", "speculative_config"])
            raise click.UsageError(message.replace("gpu_memory_split", "--memory-split")) from None
        click.echo("\n".join(lines))
        return
    import time

    from glimp_graph.serving import ServingError

    with local.start() as models:
        click.echo(f"export GLIMP_SMALL_URL={models.small.base_url} GLIMP_SMALL_MODEL={models.small.alias}")
        click.echo(f"export GLIMP_LARGE_URL={models.large.base_url} GLIMP_LARGE_MODEL={models.large.alias}")
        click.echo("Serving; Ctrl-C stops both servers.", err=True)
        with contextlib.suppress(KeyboardInterrupt):
            while models.small.running and models.large.running:
                time.sleep(1)
        servers = {"small": models.small, "large": models.large}
        dead = [role for role, server in servers.items() if not server.running]
        if dead:  # leaving the block stops the other server; the group prints the error and exits 1
            raise ServingError(_server_died(servers, dead))


def _server_died(servers: dict[str, ManagedServer], dead: list[str]) -> str:
    """Which server of ``glimp serve`` died, how, and the last lines of its log (one message)."""
    from glimp_graph.serving._paths import tail
    from glimp_graph.serving.process import describe_exit

    parts = []
    for role in dead:
        server = servers[role]
        code = server.returncode
        how = describe_exit(code) if code is not None else "stopped"
        parts.append(f"the {role} model's server ({server.alias}) {how}")
    alive = [role for role in servers if role not in dead]
    message = " and ".join(parts) + (f"; the {alive[0]} model's server was stopped" if alive else "")
    for role in dead:
        log = servers[role].log_path
        lines = tail(log, 20)
        quoted = "\n".join(f"  {line}" for line in lines.splitlines()) if lines else "  (empty)"
        message += f"\nlast lines of the {role} model's server log {log}:\n{quoted}"
    return message
