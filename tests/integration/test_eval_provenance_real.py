"""``glimp eval`` on real llama.cpp servers it starts: every record says which code, packages, build and CPU."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from glimp_graph.cli import main
from glimp_graph.eval import load_records
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration


def test_glimp_eval_records_the_servers_build_and_binary(tmp_path, data_dir):
    dataset = tmp_path / "one.jsonl"
    dataset.write_text((data_dir / "gsm8k_dev.jsonl").read_text().splitlines()[0] + "\n")
    out = tmp_path / "runs.jsonl"
    cache = ["--cache-dir", str(cache_dir())] if cache_dir() else []
    result = CliRunner().invoke(
        main,
        [
            "eval", "--dataset", str(dataset), "--strategies", "large-only", "--out", str(out),
            "--local-small", "smollm2-135m", "--local-large", "smollm2-135m", "--ctx-size", "4096", *cache,
            "--max-steps", "2", "--max-step-tokens", "32", "--max-thinking-tokens", "64", "--final-max-tokens", "16",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (record,) = load_records(out)
    prov = record["provenance"]
    for role in ("small", "large"):
        server = prov["servers"][role]
        assert server["owned_by"] == "llamacpp", json.dumps(prov)
        assert server["build_info"], json.dumps(prov)  # llama-server's GET /props
        assert server["binary"].startswith("llama-server-"), json.dumps(prov)  # the cached build it ran
        assert server["model_file"].endswith(".gguf")
    assert prov["cpu"]["cores"] >= 1 and prov["packages"]["glimp-graph"]
    assert record["row"] == 0
    assert "- large-only: " in result.output and "Stalled steps" in result.output
