"""A server's /metrics read as its load (KV cache usage, requests running and waiting): each
server's exposition text as it writes it, tunekv serve's from its own registry, and the one-line
reasons when nothing readable answers."""

from __future__ import annotations

import socket

import pytest

from tests.tunekv.helpers import http_pages
from tunekv.engine.llm_engine import Occupancy
from tunekv.measure.server_metrics import NoMetrics, ServerLoad, parse_server_load, read_server_load
from tunekv.serve.metrics import ServerMetrics

MODEL = "meta-llama/Llama-3.1-8B-Instruct"

# vLLM 0.10 (V1 engine): labelled by engine and model, among counters and histograms.
VLLM = f"""# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 12345.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 12.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} 0.25
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="{MODEL}"}} 40960.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.001",model_name="{MODEL}"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="{MODEL}"}} 7.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} 10.0
vllm:time_to_first_token_seconds_count{{engine="0",model_name="{MODEL}"}} 10.0
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{MODEL}"}} 1.25
"""

# vLLM before 0.10 named the KV gauge gpu_cache_usage_perc; data parallel: a series per engine.
VLLM_OLD_TWO_ENGINES = f"""# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 8.0
vllm:num_requests_running{{engine="1",model_name="{MODEL}"}} 6.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 0.0
vllm:num_requests_waiting{{engine="1",model_name="{MODEL}"}} 1.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{engine="0",model_name="{MODEL}"}} 0.5
vllm:gpu_cache_usage_perc{{engine="1",model_name="{MODEL}"}} 0.3
"""

# SGLang 0.4/0.5 (--enable-metrics): token_usage is the KV pool's used fraction.
SGLANG = f"""# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{{engine_type="unified",model_name="{MODEL}",pp_rank="0",tp_rank="0"}} 7.0
# HELP sglang:num_used_tokens The number of used tokens.
# TYPE sglang:num_used_tokens gauge
sglang:num_used_tokens{{engine_type="unified",model_name="{MODEL}",pp_rank="0",tp_rank="0"}} 98304.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{{engine_type="unified",model_name="{MODEL}",pp_rank="0",tp_rank="0"}} 0.5
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{{engine_type="unified",model_name="{MODEL}",pp_rank="0",tp_rank="0"}} 1523.4
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{{engine_type="unified",model_name="{MODEL}",pp_rank="0",tp_rank="0"}} 2.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{{engine_type="unified",model_name="{MODEL}",pp_rank="0",tp_rank="0"}} 0.12
"""

# TGI 3.x (metrics-exporter-prometheus): batch and queue sizes, no KV cache gauge.
TGI = """# TYPE tgi_request_count counter
tgi_request_count 42
# TYPE tgi_request_success counter
tgi_request_success 40
# TYPE tgi_queue_size gauge
tgi_queue_size 4
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 16
# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 20480
# TYPE tgi_request_duration summary
tgi_request_duration{quantile="0.5"} 1.21
tgi_request_duration{quantile="0.99"} 3.5
tgi_request_duration_sum 50.1
tgi_request_duration_count 42
"""


@pytest.mark.parametrize("text, load", [
    (VLLM, ServerLoad(0.25, 12, 3)),
    (VLLM_OLD_TWO_ENGINES, ServerLoad(0.4, 14, 1)),
    (SGLANG, ServerLoad(0.5, 7, 2)),
    (TGI, ServerLoad(None, 16, 4)),
], ids=["vllm", "vllm-old-two-engines", "sglang", "tgi"])
def test_each_servers_exposition_reads_as_its_load(text, load):
    got = parse_server_load(text)
    assert got.running == load.running and got.waiting == load.waiting
    assert got.kv_usage == pytest.approx(load.kv_usage)
    assert not got.empty


def test_tunekv_serves_own_metrics_read_back():
    metrics = ServerMetrics("tiny")
    metrics.observe_step(Occupancy(running=5, waiting=2, used_blocks=96, num_blocks=128), 0, 5)
    assert parse_server_load(metrics.render().decode()) == ServerLoad(0.75, 5, 2)


def test_prefix_cache_counters_count_only_with_a_prefix_cache():
    from tunekv.engine.request import RequestMetrics

    def queries(metrics: ServerMetrics) -> float:
        metrics.first_token(12, RequestMetrics(arrival_time=0.0, first_token_time=0.1, num_cached_tokens=8))
        page = metrics.render().decode()
        return float(page.split('tunekv:prefix_cache_queries_total{model_name="tiny"} ')[1].split()[0])

    assert queries(ServerMetrics("tiny")) == 12.0
    assert queries(ServerMetrics("tiny", prefix_caching=False)) == 0.0, "no cache, no query (as vLLM)"


def test_a_page_without_known_gauges_and_one_that_is_not_metrics():
    assert parse_server_load("# TYPE process_open_fds gauge\nprocess_open_fds 12.0\n").empty
    assert parse_server_load("").empty
    with pytest.raises(ValueError):
        parse_server_load("<html><body>Not Found</body></html>")


def test_read_over_http_and_why_not(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://192.0.2.1:9")   # a proxy would not answer: none is used
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    pages = {"/metrics": (200, VLLM)}
    with http_pages(pages) as url:
        assert read_server_load(url + "/") == ServerLoad(0.25, 12, 3)
        pages["/metrics"] = (200, "<html>a login page</html>")
        with pytest.raises(NoMetrics, match="not Prometheus' text format"):
            read_server_load(url)
        del pages["/metrics"]
        with pytest.raises(NoMetrics, match="HTTP 404"):
            read_server_load(url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(NoMetrics, match="refused"):
        read_server_load(f"http://127.0.0.1:{closed}")
