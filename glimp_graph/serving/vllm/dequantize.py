"""GGUF -> bf16 Hugging Face weights, for vLLM's CPU build (vLLM 0.32 has no GGUF loader).

The conversion runs transformers in the vLLM environment (:func:`~glimp_graph.serving.vllm.ensure_vllm_env`), in a
subprocess; this module itself imports only the standard library.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from glimp_graph.serving._commands import last_json_line, run_logged
from glimp_graph.serving._paths import file_lock, read_stamp, resolve_cache_dir, safe_name, tail, write_stamp
from glimp_graph.serving.errors import ServingError
from glimp_graph.serving.vllm.env import ensure_vllm_env
from glimp_graph.serving.weights import ModelSpec, fetch_model, get_spec

__all__ = ["dequantize_gguf"]

# Runs in the vLLM environment: python -c SCRIPT GGUF_DIR GGUF_NAME OUT_DIR
_DEQUANTIZE_SCRIPT = r"""
import json, sys
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

src, name, out = sys.argv[1:4]
kwargs = {}
if hasattr(transformers, "GgufConfig"):  # transformers 5: ask for plain tensors, not GGUF blocks
    kwargs["quantization_config"] = transformers.GgufConfig(gguf_file=name, dequantize=True)
tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.bfloat16, **kwargs)
# The weights are plain tensors now, but transformers still tags the model as GGUF-quantized (its
# hf_quantizer says "not serializable") and save_pretrained refuses it: drop the tag before saving.
model.hf_quantizer = None
for obj in (model, model.config):
    for attr in ("quantization_config", "is_quantized", "quantization_method"):
        if attr in vars(obj):
            delattr(obj, attr)
model = model.to(torch.bfloat16)
kinds = sorted({type(p).__name__ + ":" + str(p.dtype) for p in model.parameters()})
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()), "tensors": kinds,
                  "transformers": transformers.__version__}))
"""


def dequantize_gguf(
    name_or_spec: str | ModelSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
) -> Path:
    """Return a bf16 Hugging Face folder of a GGUF model, converting it on first use (vLLM 0.32 reads no GGUF).

    Fetches the GGUF with :func:`~glimp_graph.serving.fetch_model`, then, with the vLLM environment's Python
    (:func:`ensure_vllm_env`), loads it with transformers (``from_pretrained(dir, gguf_file=...)``, which
    dequantizes the weights), clears the quantization tag transformers puts on GGUF-loaded models, and saves
    model and tokenizer with ``save_pretrained`` into ``<cache>/hf/<name>``. The folder is written under a
    temporary name and renamed when complete; a stamp records the GGUF's sha256. About a minute and 1.2 GB
    for the 0.5B model. Output goes to ``<cache>/logs/dequantize-<name>.log``.

    Args:
        name_or_spec: A key of :data:`~glimp_graph.serving.MODELS` or a spec.
        cache_dir: Cache root; ``None`` means :func:`~glimp_graph.serving.default_cache_dir`.
        progress: Show progress bars (download, environment build, conversion).

    Returns:
        The folder, ready for ``vllm ... --model FOLDER``.

    Raises:
        KeyError: Unknown model name.
        ServingError: The environment or the conversion failed (the message shows the log tail).

    """
    from tqdm.auto import tqdm

    spec = get_spec(name_or_spec)
    root = resolve_cache_dir(cache_dir)
    out = root / "hf" / spec.name
    if _stamp_matches(out, spec):
        return out
    gguf = fetch_model(spec, root, progress=progress)
    env_python = ensure_vllm_env(root, progress=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(out.parent / f".{spec.name}.lock"):
        if _stamp_matches(out, spec):
            return out
        log_path = root / "logs" / f"dequantize-{safe_name(spec.name)}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{spec.name}.", suffix=".partial"))
        try:
            cmd = [str(env_python), "-c", _DEQUANTIZE_SCRIPT, str(gguf.parent), gguf.name, str(partial)]
            started = time.monotonic()
            with (
                open(log_path, "w", encoding="utf-8") as log,
                tqdm(total=1, desc=f"dequantize {spec.name}", unit="model", disable=not progress) as bar,
            ):
                rc = run_logged(cmd, log)
                bar.update(1)
            if rc != 0 or not (partial / "config.json").is_file():
                raise ServingError(
                    f"dequantizing {spec.name} failed (exit {rc}); full log: {log_path}\n"
                    f"--- last 30 lines ---\n{tail(log_path, 30)}"
                )
            info = last_json_line(log_path)
            write_stamp(
                partial,
                {
                    "model": spec.name,
                    "gguf_sha256": spec.sha256,
                    "seconds": round(time.monotonic() - started, 1),
                    **info,
                },
            )
            for path in (partial, *partial.iterdir()):  # mkdtemp/safetensors make them private; a cache is not
                path.chmod(0o755 if path.is_dir() else 0o644)
            if out.exists():
                shutil.rmtree(out)
            os.replace(partial, out)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return out


def _stamp_matches(folder: Path, spec: ModelSpec) -> bool:
    """Whether ``folder`` is complete and was converted from this spec's GGUF."""
    record = read_stamp(folder)
    return record is not None and record.get("gguf_sha256") == spec.sha256
