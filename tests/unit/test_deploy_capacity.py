"""bench/deploy_capacity.py: the capacity arithmetic follows its inputs, and docs/DEPLOY.md shows what it renders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import load_bench

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cap() -> Any:
    return load_bench("deploy_capacity")


def _costs(big_decode: float = 10.0, tiny_decode: float = 2.0, batch_rows: str = "") -> str:
    batch_header = " batch |" if batch_rows else ""
    batch_cell = " 1 |" if batch_rows else ""
    header = (
        f"| shape (model it stands for) | params (B) |{batch_header} weights read per token (GB) | decode ms/token"
        " | prefill 64 new tokens (ms) | prefill 256 (ms) |"
    )
    return f"""# Costs

Measured on one TEST GPU (bf16), with a KV cache of 512 tokens already filled.

{header}
|---|---|---|---|---|---|{"---|" if batch_rows else ""}
| big-base(big) | 30 |{batch_cell} 60 | {big_decode} | 20 | 50 |
| tiny | 1 |{batch_cell} 2 | {tiny_decode} | 4 | 8 |
{batch_rows}
Prose after the table.
"""


OVERHEAD = """# Framework overhead

Machine: 2 cores, test; models x.

| driver | runs | steps | wall s (mean) | in model calls s (mean) | overhead per step, ms | overhead share |
|---|---|---|---|---|---|---|
| langgraph | 4 | 20 | 1.0 | 0.9 | 5.0 | 1% |
| hand loop | 4 | 20 | 1.0 | 1.0 | 0.1 | 0.1% |
"""


def _record(job: str, steps: list[tuple[str, int]], final: int, **extra: Any) -> str:
    return json.dumps(
        {
            "job": job,
            "error": None,
            "final_tokens": final,
            "step_records": [{"model": m, "tokens": t} for m, t in steps],
            **extra,
        }
    )


# one routed run: small 5 tokens, large 3, small 4, then a 2-token answer; large alone: two steps of 6 and 4
RECORDS = [
    _record("glimp@1", [("small", 5), ("large", 3), ("small", 4)], 2),
    _record("large-only", [("large", 6), ("large", 4)], 2),
    _record("glimp@1", [("small", 99)], 1, error="boom"),  # failed runs are left out
    _record("other", [("small", 50)], 1),
]
PAIR = [("big", "tiny", "the test pair")]


def _render(cap: Any, costs: str, prompt: int = 64, pairs: list[tuple[str, str, str]] = PAIR) -> str:
    return cap.render(
        cap.read_gpu_costs(costs),
        cap.read_runs(RECORDS, "glimp@1"),
        cap.read_runs(RECORDS, "large-only"),
        cap.read_overhead(OVERHEAD),
        cap.Prices(prompt, 1, 4),
        sources={"gpu_costs": "COSTS.md", "results": "runs.jsonl", "overhead": "OVER.md"},
        job="glimp@1",
        alone_job="large-only",
        command="python bench/deploy_capacity.py --write",
        pairs=pairs,
    )


def test_prefill_is_linear_through_one_decode_step_and_the_measured_points(cap: Any) -> None:
    costs = cap.read_gpu_costs(_costs())
    big = costs.find("big")  # the model named in brackets, or the shape's own name
    assert big is not None and big == costs.find("big-base") and big.name == "big-base(big)"
    assert costs.find("bi") is None
    assert big.prefill(1) == 10.0 and big.prefill(64) == 20.0 and big.prefill(256) == 50.0
    assert big.prefill(160) == pytest.approx(35.0)  # halfway from 64 to 256
    assert big.prefill(448) == pytest.approx(80.0)  # past the last point: the last segment's slope


def test_a_routed_run_is_priced_call_by_call(cap: Any) -> None:
    costs = cap.read_gpu_costs(_costs())
    tiny, big = costs.find("tiny"), costs.find("big")
    run = cap.read_runs(RECORDS, "glimp@1")
    assert len(run) == 1
    cost = cap.run_cost(run[0], tiny, big, cap.Prices(64, 1, 4))

    def pre(shape: Any, n: int) -> float:
        return shape.prefill(n) - shape.decode_ms  # reading beyond the one token a decode step reads

    # small: probe 1 reads the 64-token prompt; step 1 continues for 4 more tokens; probe 2 reads the delimiter;
    # probe 3 reads the large step (3) and a delimiter; step 3 continues for 3 more tokens
    assert cost["probes"] == pytest.approx(3 * 2.0)
    assert cost["small steps"] == pytest.approx((4 + 3) * 2.0)
    assert cost["small reading"] == pytest.approx(pre(tiny, 64) + pre(tiny, 1) + pre(tiny, 4))
    assert cost["small read"] == 64 + 1 + 4
    # large: step 2 reads prompt + step 1 + delimiter (70 tokens) and writes 3; the answer reads delimiter,
    # step 3 and the 4-token answer prefix after its own step (9 tokens), then writes 2
    assert cost["large steps"] == pytest.approx(3 * 10.0)
    assert cost["final answer"] == pytest.approx(2 * 10.0)
    assert cost["large reading"] == pytest.approx(pre(big, 70) + pre(big, 9))
    assert cost["large read"] == 70 + 9
    alone = cap.run_cost(cap.read_runs(RECORDS, "large-only")[0], None, big, cap.Prices(64, 1, 4))
    assert alone["probes"] == 0 and alone["large steps"] == pytest.approx(10 * 10.0)
    assert alone["large read"] == 64 + 1 + 4


def test_the_rendered_numbers_follow_the_data(cap: Any) -> None:
    costs = cap.read_gpu_costs(_costs())
    tiny, big = costs.find("tiny"), costs.find("big")
    prices = cap.Prices(64, 1, 4)
    routed = cap.run_cost(cap.read_runs(RECORDS, "glimp@1")[0], tiny, big, prices)
    small_ms = routed["probes"] + routed["small steps"] + routed["small reading"]
    large_ms = routed["large steps"] + routed["final answer"] + routed["large reading"]
    assert large_ms > small_ms
    text = _render(cap, _costs())
    assert "one TEST GPU per model" in text and "after a 512-token cache" in text
    assert f"**{small_ms:,.0f}**" in text and f"**{large_ms:,.0f}**" in text
    assert f"| bottleneck (busy ratio) | large ({large_ms / small_ms:.2f}x) |" in text
    assert f"**{1000 / large_ms:.3g}**" in text  # runs/s per pair with runs overlapped: 1 / the large GPU's time
    assert "the large GPU is the bottleneck" in text
    # the router: 5.0 ms per step x 3 steps per run
    assert "15.0 ms of one core per run" in text and f"at most {1000 / 15:.3g} runs/s" in text
    assert "**Batching is not measured.**" in text


def test_the_bottleneck_flips_when_the_small_model_gets_slow(cap: Any) -> None:
    text = _render(cap, _costs(tiny_decode=9.0))
    assert "the small GPU is the bottleneck" in text and "| bottleneck (busy ratio) | small (" in text
    found, _ = cap.capacities(
        cap.read_gpu_costs(_costs(tiny_decode=9.0)),
        cap.read_runs(RECORDS, "glimp@1"),
        cap.read_runs(RECORDS, "large-only"),
        cap.Prices(64, 1, 4),
        pairs=PAIR,
    )
    (pair,) = found
    assert pair.bottleneck == "small" and pair.runs_per_s(1, 1) == pytest.approx(1000 / pair.small_ms)
    # a node split gives the slow side more GPUs
    small_gpus, large_gpus, rate = pair.node_split
    assert small_gpus > large_gpus and rate == pytest.approx(pair.runs_per_s(small_gpus, large_gpus))
    assert f"on 8 GPUs, {small_gpus} small + {large_gpus} large replicas" in text


def test_batch_rows_are_used_when_the_table_has_them(cap: Any) -> None:
    rows = "| big-base(big) | 30 | 8 | 60 | 20 | 40 | 90 |\n| tiny | 1 | 8 | 2 | 3 | 6 | 12 |\n"
    text = _render(cap, _costs(batch_rows=rows))
    assert "Batching is not measured" not in text and "**Batching, as GPU_COSTS.md measures it**" in text
    found, _ = cap.capacities(
        cap.read_gpu_costs(_costs(batch_rows=rows)),
        cap.read_runs(RECORDS, "glimp@1"),
        cap.read_runs(RECORDS, "large-only"),
        cap.Prices(64, 1, 4),
        pairs=PAIR,
        batch=8,
    )
    assert f"| 8 | {8 * found[0].runs_per_s(1, 1):.3g} runs/s (large) |" in text


def test_a_pair_missing_from_the_table_is_named_not_invented(cap: Any) -> None:
    costs = cap.read_gpu_costs(_costs())
    pairs = [*PAIR, ("big", "absent-1b", "x")]
    found, missing = cap.capacities(
        costs,
        cap.read_runs(RECORDS, "glimp@1"),
        cap.read_runs(RECORDS, "large-only"),
        cap.Prices(64, 1, 4),
        pairs=pairs,
    )
    assert [p.key for p in found] == PAIR and missing == [("big", "absent-1b", "x")]
    text = _render(cap, _costs(), pairs=pairs)
    assert "Not in GPU_COSTS.md at batch 1, so not computed: big + absent-1b." in text and "absent-1b (x)" not in text
    with pytest.raises(cap.InputError, match="none of the pairs"):
        _render(cap, _costs(), pairs=[("absent-1b", "tiny", "x")])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gpu-costs", "/nonexistent/GPU_COSTS.md"], "cannot read GPU costs '/nonexistent/GPU_COSTS.md'"),
        (["--job", "nope@1"], "no finished run of job 'nope@1'"),
        (["--node-gpus", "1"], "--node-gpus is 1"),
        (["--pair", "big"], "--pair 'big': write LARGE,SMALL"),
        (["--pair", "absent,tiny"], "none of the pairs absent + tiny"),
    ],
)
def test_bad_inputs_are_one_line_and_exit_2(
    cap: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    costs, runs, over = tmp_path / "c.md", tmp_path / "r.jsonl", tmp_path / "o.md"
    costs.write_text(_costs())
    runs.write_text("\n".join(RECORDS) + "\n")
    over.write_text(OVERHEAD)
    base = ["--gpu-costs", str(costs), "--results", str(runs), "--overhead", str(over), "--job", "glimp@1"]
    assert cap.main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_bad_cell_names_the_row_and_column(cap: Any) -> None:
    with pytest.raises(cap.InputError, match=r"'tiny' decode ms/token is 'fast'"):
        cap.read_gpu_costs(_costs(tiny_decode="fast"))  # type: ignore[arg-type]


def test_write_replaces_only_the_marked_block(cap: Any, tmp_path: Path) -> None:
    costs, runs, over, doc = tmp_path / "c.md", tmp_path / "r.jsonl", tmp_path / "o.md", tmp_path / "D.md"
    costs.write_text(_costs())
    runs.write_text("\n".join(RECORDS) + "\n")
    over.write_text(OVERHEAD)
    doc.write_text(f"# Page\n\nbefore\n\n{cap.BEGIN}\nold text\n{cap.END}\n\nafter\n")
    argv = ["--gpu-costs", str(costs), "--results", str(runs), "--overhead", str(over), "--job", "glimp@1"]
    argv += ["--pair", "big,tiny,the test pair"]
    assert cap.main([*argv, "--write", "--doc", str(doc)]) == 0
    written = doc.read_text()
    assert written.startswith("# Page\n\nbefore\n\n") and written.endswith(f"{cap.END}\n\nafter\n")
    assert "old text" not in written and "the large GPU is the bottleneck" in written
    assert (
        "--job glimp@1" in cap.current_block(written) and "--pair big,tiny,the test pair" in written
    )  # the command that produced it names its options
    doc.write_text("# Page without markers\n")
    assert cap.main([*argv, "--write", "--doc", str(doc)]) == 2
    assert doc.read_text() == "# Page without markers\n"


def test_deploy_md_shows_what_the_script_renders_from_the_real_inputs(cap: Any) -> None:
    if not cap.GPU_COSTS.exists():
        pytest.skip(f"{cap.GPU_COSTS} is absent (the shared folder ../shared is not next to this checkout)")
    rendered = cap.build(cap.parser().parse_args([]))
    block = cap.current_block((ROOT / "docs" / "DEPLOY.md").read_text())
    assert block is not None, "docs/DEPLOY.md lost its capacity markers"
    assert block == rendered, "docs/DEPLOY.md's capacity block is stale: run python bench/deploy_capacity.py --write"
    assert "not vLLM measurements" in block and "python bench/deploy_capacity.py --write" in block
