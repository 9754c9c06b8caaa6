"""Where an evaluation's numbers come from: the code, the packages, the servers and the machine.

:func:`collect_provenance` describes one run of :func:`~glimp_graph.eval.run_eval`, which writes it into every
record. Records written before that carry none; a *sidecar* file next to the results
(``<results>.provenance.json``) can say what is knowable about them, by line range, and :func:`label` turns
either into the one string by which a report groups records measured under the same code.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx

from glimp_graph.endpoints import Endpoint

PACKAGES = ("glimp-graph", "langgraph", "langchain-core", "langchain-openai", "openai", "vllm")
"""The distributions whose versions a record keeps (those not installed are left out)."""
UNKNOWN = "unknown"
"""The label of records that say nothing of their code."""
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _git(*args: str, cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version(package_dir: Path = PACKAGE_DIR) -> dict[str, Any]:
    """The code that runs: the checkout's commit, the package's tree and whether its files differ, else the version.

    The commit is read only when ``package_dir`` is the ``glimp_graph`` folder of a git checkout (an installed
    package inside some other repository is not that repository's commit). ``tree`` is the git object id of the
    package folder at that commit: two commits that changed nothing under it (notes, results, docs committed
    between two halves of a long measurement) share it. ``dirty`` and ``diff_sha`` look at the package's own
    files (tracked changes and untracked files), not at results or notes beside it.

    Returns:
        ``{"commit", "tree", "dirty", "diff_sha", "version"}``; the first four are ``None`` outside a checkout.
    """
    out: dict[str, Any] = {
        "commit": None,
        "tree": None,
        "dirty": None,
        "diff_sha": None,
        "version": _version("glimp-graph"),
    }
    top = _git("rev-parse", "--show-toplevel", cwd=package_dir)
    if top is None or (Path(top.strip()) / package_dir.name).resolve() != package_dir.resolve():
        return out
    root = Path(top.strip())
    commit = _git("rev-parse", "HEAD", cwd=root)
    tree = _git("rev-parse", f"HEAD:{package_dir.name}", cwd=root)
    status = _git("status", "--porcelain", "--untracked-files=all", "--", package_dir.name, cwd=root)
    diff = _git("diff", "HEAD", "--binary", "--", package_dir.name, cwd=root)
    if commit is None or status is None or diff is None:
        return out
    out["commit"] = commit.strip()
    out["tree"] = tree.strip() if tree else None
    out["dirty"] = bool(status.strip())
    if out["dirty"]:
        digest = hashlib.sha256(diff.encode())
        for line in sorted(status.splitlines()):
            if line.startswith("??"):
                path = root / line[3:].strip()
                digest.update(line.encode())
                digest.update(path.read_bytes() if path.is_file() else b"")
        out["diff_sha"] = digest.hexdigest()[:12]
    return out


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    """The installed versions of ``names`` (distributions that are not installed are left out)."""
    found = {name: _version(name) for name in names}
    return {name: v for name, v in found.items() if v is not None}


@functools.cache
def cpu_info() -> dict[str, Any]:
    """The CPU model (``/proc/cpuinfo``'s model name, else what :mod:`platform` says) and the core count."""
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model or platform.processor() or UNKNOWN, "cores": os.cpu_count()}


def process_binary(pid: int) -> str | None:
    """The file name of the executable process ``pid`` runs (Linux ``/proc``; ``None`` elsewhere or when gone).

    For a server the caller started (e.g. ``llama-server-0.3.36-1872ee88c49d5717``: the cached build's name
    says its version and build kind).
    """
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name.removesuffix(" (deleted)")
    except OSError:
        return None


async def server_info(endpoint: Endpoint, *, timeout: float = 5.0) -> dict[str, Any]:
    """What a server says about itself: its model entry of ``GET /models`` and, where offered, its build.

    llama.cpp's server reports ``build_info`` on ``GET /props``, vLLM its version on ``GET /version``; a
    server without them (or one that does not answer) leaves the field out. Never raises for a server's answer.

    Returns:
        ``{"base_url", "model", "owned_by", "build_info", "version"}`` with what was found.
    """
    headers = {"Authorization": f"Bearer {endpoint.api_key.get_secret_value()}"}
    root = endpoint.base_url.removesuffix("/v1")
    info: dict[str, Any] = {"base_url": endpoint.base_url, "model": endpoint.model}

    async def get(client: httpx.AsyncClient, url: str) -> Any:
        try:
            response = await client.get(url)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async with httpx.AsyncClient(timeout=timeout, headers=headers) as client:
        models, props, server_version = await asyncio.gather(
            get(client, f"{endpoint.base_url}/models"), get(client, f"{root}/props"), get(client, f"{root}/version")
        )
    entries = [m for m in (models or {}).get("data", []) if isinstance(m, dict)] if isinstance(models, dict) else []
    entry = next((m for m in entries if m.get("id") == endpoint.model), entries[0] if len(entries) == 1 else None)
    if entry is not None and entry.get("owned_by"):
        info["owned_by"] = str(entry["owned_by"])
    if isinstance(props, dict) and props.get("build_info"):
        info["build_info"] = str(props["build_info"])
    if isinstance(server_version, dict) and server_version.get("version"):
        info["version"] = str(server_version["version"])
    return info


async def collect_provenance(
    small: Endpoint, large: Endpoint, *, servers: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The provenance of a run on ``small`` and ``large``: code, packages, servers, CPU and the time.

    Args:
        small: The small model's endpoint.
        large: The large model's endpoint.
        servers: What the caller knows of the servers it started, by role (``{"small": {"binary": ...}}``),
            merged into what the servers report.

    Returns:
        A JSON-ready dict: ``commit``, ``tree``, ``dirty``, ``diff_sha``, ``version``, ``packages``, ``servers``
        (``small`` and ``large``), ``cpu`` and ``collected_at`` (UTC, ISO 8601).
    """
    small_info, large_info = await asyncio.gather(server_info(small), server_info(large))
    described = {"small": small_info, "large": large_info}
    for role, extra in (servers or {}).items():
        described.setdefault(role, {}).update({k: v for k, v in extra.items() if v is not None})
    return {
        **code_version(),
        "packages": package_versions(),
        "servers": described,
        "cpu": cpu_info(),
        "collected_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def label(provenance: Mapping[str, Any] | None) -> str:
    """The code state a record was measured under, as one string (records with the same label may be pooled).

    ``code <tree>`` (the package folder's git tree, 7 digits: the same for every commit that left the package
    alone); ``<commit>`` (7 digits) for records that name no tree; either with ``+dirty.<diff_sha>`` when the
    package's files differed from it; ``glimp-graph <version>`` outside a checkout; for old records described by
    a sidecar, ``unrecorded (results committed in <commit>)``; else ``unknown``.
    """
    if not provenance:
        return UNKNOWN
    commit, tree = provenance.get("commit"), provenance.get("tree")
    if commit or tree:
        dirty = f"+dirty.{str(provenance.get('diff_sha') or '?')[:7]}" if provenance.get("dirty") else ""
        return f"code {str(tree)[:7]}{dirty}" if tree else f"{str(commit)[:7]}{dirty}"
    if provenance.get("recorded_in"):
        return f"unrecorded (results committed in {str(provenance['recorded_in'])[:7]})"
    if provenance.get("version"):
        return f"glimp-graph {provenance['version']}"
    return UNKNOWN


def sidecar_path(results: str | Path) -> Path:
    """The sidecar of a results file: ``runs.jsonl`` -> ``runs.provenance.json``."""
    results = Path(results)
    return results.with_name(f"{results.stem}.provenance.json")


def load_sidecar(results: str | Path) -> list[dict[str, Any]]:
    """The batches of the sidecar of ``results`` (none when there is no sidecar).

    A sidecar is ``{"batches": [{"lines": [first, last], ...provenance fields}, ...]}``: the fields describe the
    records on lines ``first..last`` (1-based, inclusive) of the results file that carry no provenance.

    Raises:
        ValueError: The sidecar is not such an object; the message names the file.
    """
    path = sidecar_path(results)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        batches = data["batches"]
        for batch in batches:
            first, last = batch["lines"]
            if not (isinstance(first, int) and isinstance(last, int) and 1 <= first <= last):
                raise ValueError
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f'{path}: expected {{"batches": [{{"lines": [first, last], ...}}, ...]}} with 1 <= first <= last'
        ) from None
    return batches


def for_line(batches: Iterable[Mapping[str, Any]], line: int) -> dict[str, Any] | None:
    """The provenance a sidecar gives the record on ``line`` (1-based), marked ``"source": "sidecar"``."""
    for batch in batches:
        first, last = batch["lines"]
        if first <= line <= last:
            return {**{k: v for k, v in batch.items() if k != "lines"}, "source": "sidecar"}
    return None


def states_by_job(records: Iterable[Mapping[str, Any]]) -> dict[str, Counter[str]]:
    """How many error-free records of each job were measured under each code state (:func:`label`)."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        if not r.get("error"):
            out[str(r["job"])][label(r.get("provenance"))] += 1
    return dict(out)


def mixed_jobs(records: Iterable[Mapping[str, Any]]) -> dict[str, Counter[str]]:
    """The jobs whose error-free records come from more than one code state, with the count of each."""
    return {job: states for job, states in states_by_job(records).items() if len(states) > 1}
