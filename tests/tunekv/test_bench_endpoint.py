"""`tunekv bench --endpoint` against `tunekv serve` on 127.0.0.1: the workload's exact token counts
reach the server and come back, the client's latencies agree with the server's own histograms,
capacity, and two servers compared as the in-process comparison orders them."""

from __future__ import annotations

import json

import pytest

from tests.tunekv.run_cli import tunekv
from tests.tunekv.serve_process import ServeProcess, get
from tunekv.workload.workloads import load_workload

pytestmark = pytest.mark.slow
WORKLOAD = """description: small
num_requests: 24
prompt_len: {dist: uniform, min: 8, max: 40}
output_len: {dist: uniform, min: 4, max: 24}
"""
SERVER = ("--model", "tiny-llama", "--max-model-len", "512", "--num-kv-blocks", "512")


@pytest.fixture(scope="module")
def server():
    with ServeProcess(*SERVER) as s:
        yield s
    assert s.proc is not None and s.proc.returncode == 0, s.stderr()


@pytest.fixture
def workload(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(WORKLOAD)
    return path


def sum_and_count(url: str, name: str) -> tuple[float, float]:
    """A histogram of the server's /metrics: (sum of observations, count)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(get(url + "/metrics")[1].decode()):
        if family.name == name:
            values = {s.name: s.value for s in family.samples}
            return values[name + "_sum"], values[name + "_count"]
    raise AssertionError(f"no histogram {name}")


@pytest.mark.parametrize("load", [["--rate", "20"], ["--concurrency", "4"]])
def test_every_measured_request_gets_the_workloads_lengths_and_the_latencies_agree_with_the_server(
        server, workload, tmp_path, load):
    names = ("tunekv:time_to_first_token_seconds", "tunekv:e2e_request_latency_seconds",
             "tunekv:inter_token_latency_seconds")
    before = [sum_and_count(server.url, n) for n in names]
    out = tmp_path / "r.json"
    result = tunekv("bench", "--endpoint", server.url, "--workload", str(workload), *load, "--warmup", "0",
                    "--json", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    requests = load_workload(str(workload)).fit_to(512).requests(0, 512)
    metrics = data["metrics"]
    assert metrics["completed"] == 24 and metrics["failed"] == 0
    assert data["client"]["shorter"] == 0 and data["client"]["errors"] == []
    duration = metrics["duration_s"]
    assert metrics["output_throughput_tok_s"] * duration == pytest.approx(sum(r.output_len for r in requests))
    assert metrics["total_throughput_tok_s"] * duration == pytest.approx(
        sum(r.output_len + len(r.prompt_token_ids) for r in requests))
    assert data["target"]["model"] == "tiny-llama" and data["target"]["prompts"] == "token ids"
    assert data["target"]["server"].startswith("tunekv/") and data["config"] is None and data["kv"] is None
    # The server's clock starts when the request is parsed and stops at its last token; the client's
    # starts before the send and stops at the last byte: it sees the same latencies plus HTTP's share.
    counts = {"ttft_ms": 25, "e2e_ms": 25, "itl_ms": sum(r.output_len - 1 for r in requests)}
    for name, (sum0, count0), key in zip(names, before, ("ttft_ms", "e2e_ms", "itl_ms")):
        total, count = sum_and_count(server.url, name)
        server_mean_ms = (total - sum0) / (count - count0) * 1e3
        # 25: the measured requests and open_target's one-token probe (which has no gap)
        assert count - count0 == counts[key], (key, count - count0)
        # A request's gaps add up to its last token minus its first on either clock: the pooled means
        # differ by delivery jitter only.
        slack = (-5.0, 5.0) if key == "itl_ms" else (-2.0, 50.0)
        assert slack[0] <= metrics[key]["mean"] - server_mean_ms <= slack[1], (key, metrics[key]["mean"],
                                                                              server_mean_ms)


def test_find_capacity_returns_a_level(server, workload, tmp_path):
    out = tmp_path / "cap.json"
    result = tunekv("bench", "--endpoint", server.url + "/v1", "--workload", str(workload), "--find-capacity",
                    "--slo", "ttft_p99=30s,itl_p99=10s", "--concurrency", "2", "--json", str(out), timeout=400)
    assert result.returncode == 0, result.stderr
    capacity = json.loads(out.read_text())["capacity"]
    assert capacity["load"] is not None and capacity["load"] >= 2 and capacity["probes"][0] == [2.0, True]
    # Each probe keeps the figures behind its verdict, in the file and on the screen.
    runs = capacity["probe_runs"]
    assert [(r["load"], r["within_slo"]) for r in runs] == [tuple(p) for p in capacity["probes"]]
    assert all(r["completed"] > 0 and r["ttft_p99_ms"] > 0 for r in runs)
    assert f"2 users: within SLO (TTFT p99 {runs[0]['ttft_p99_ms']:.0f} ms, ITL p99" in result.stdout


def test_a_traces_capacity_is_the_pace_the_server_keeps_within_the_slo(server, tmp_path):
    trace = tmp_path / "t.jsonl"   # 16 requests over 0.3 s
    trace.write_text("".join(json.dumps({"prompt_len": 8, "output_len": 4, "arrival_s": i * 0.02}) + "\n"
                             for i in range(16)))
    out = tmp_path / "cap.json"
    result = tunekv("bench", "--endpoint", server.url, "--workload", str(trace), "--find-capacity", "--slo",
                    "ttft_p99=30s", "--trace-speedup", "256", "--json", str(out), timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert [p[0] for p in data["capacity"]["probes"]] == [256, 512, 1024] and data["capacity"]["at_least"]
    assert data["result"]["workload"]["load"]["speedup"] == 1024 and data["result"]["metrics"]["failed"] == 0
    assert "  512x: within SLO (TTFT p99" in result.stdout


def test_two_servers_compare_in_the_order_the_engine_comparison_gives(workload, tmp_path):
    # A 1,024-token pool holds one contiguous max_model_len reservation, and about 16 paged requests.
    pool = ("--max-model-len", "1024", "--num-kv-blocks", "64", "--block-size", "16")
    engine = tunekv("bench", "--model", "tiny-llama", *pool, "--compare", "kv_policy=paged,contiguous",
                    "--workload", str(workload), "--concurrency", "16", "--json", str(tmp_path / "engine.json"),
                    timeout=400)
    assert engine.returncode == 0, engine.stderr
    in_process = json.loads((tmp_path / "engine.json").read_text())["results"]
    out = tmp_path / "cmp.json"
    with ServeProcess("--model", "tiny-llama", *pool, "--kv-policy", "paged") as paged, \
            ServeProcess("--model", "tiny-llama", *pool, "--kv-policy", "contiguous") as contiguous:
        result = tunekv("bench", "--endpoint", paged.url, "--endpoint", contiguous.url, "--workload", str(workload),
                        "--concurrency", "16", "--json", str(out), timeout=400)
    assert result.returncode == 0, result.stderr
    assert "against 2 servers" in result.stdout
    served = json.loads(out.read_text())["results"]
    assert list(served) == [paged.url + "/v1", contiguous.url + "/v1"]
    over_http = [r["metrics"]["output_throughput_tok_s"] for r in served.values()]
    engine_runs = [in_process[f"kv_policy={v}"]["metrics"]["output_throughput_tok_s"] for v in ("paged", "contiguous")]
    assert engine_runs[0] > 1.3 * engine_runs[1], engine_runs
    assert over_http[0] > 1.3 * over_http[1], (over_http, engine_runs)
