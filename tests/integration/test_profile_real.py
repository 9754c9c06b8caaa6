"""``glimp profile`` on real llama.cpp servers it starts (SmolLM2-135M twice): a profile that fits its calls."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from glimp_graph.cli import main
from glimp_graph.eval import costmodel as cm
from tests.integration.conftest import cache_dir

pytestmark = pytest.mark.integration


def test_glimp_profile_fits_positive_rates_that_explain_the_calls(tmp_path):
    out = tmp_path / "smol.json"
    cache = ["--cache-dir", str(cache_dir())] if cache_dir() else []
    result = CliRunner().invoke(
        main,
        [
            "profile", "--local-small", "smollm2-135m", "--local-large", "smollm2-135m", "--ctx-size", "4096", *cache,
            "--new-tokens", "0,96,256", "--generated-tokens", "1,32", "--repeats", "2", "--base-tokens", "128",
            "--top-k", "20", "--retries", "1", "--name", "smol", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    profile = cm.load_profile(out)
    assert profile.source == "measured" and profile.name == "smol"
    for role in ("small", "large"):
        server = profile.server(role)
        fits = profile.extra["fits"][role]
        for kind in ("plain", "logprobs"):
            cost, fit = server.cost(logprobs=kind == "logprobs"), fits[kind]
            assert cost.prefill_s_per_token > 0 and cost.decode_s_per_token > 0, (role, kind, fit)
            # reading a prompt token is cheaper than generating one (the prompt is read in one batch)
            assert cost.prefill_s_per_token < cost.decode_s_per_token, (role, kind, fit)
            assert fit["r2"] > 0.9, (role, kind, fit)
        samples = profile.extra["samples"][role]["plain"]
        # 2 repeats of 6 cells; a call other work disturbed (``contended``) was measured again, once
        assert 2 * 6 <= len(samples) <= 2 * 6 * 2
        assert all("other_cores" in s for s in samples)
        # the cached base is not read again: a call on it alone reads one token, one with new text about that many
        assert {s["new_prompt_tokens"] for s in samples if s["target_new"] == 0} == {1}
        assert all(abs(s["new_prompt_tokens"] - s["target_new"]) < 16 for s in samples if s["target_new"])
        # the model counts on, so it writes what was asked (an end of sequence now and then is allowed for)
        assert sum(s["generated_tokens"] == s["target_generated"] for s in samples) >= len(samples) - 2
    prov = profile.extra["provenance"]
    assert prov["servers"]["small"]["build_info"] and prov["cpu"]["cores"] >= 1
    assert prov["servers"]["large"]["binary"].startswith("llama-server-")
    assert "| large | smollm2-135m | plain |" in result.output
