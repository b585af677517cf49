"""`/metrics`: the engine's state and request latencies in Prometheus' text format.

The names are vLLM's (v1) with ``tunekv:`` for ``vllm:``, labelled ``model_name``, so a dashboard
or an autoscaler built for vLLM reads tunekv by changing the prefix. The engine thread writes
them (prometheus_client's metrics are thread-safe); the app only renders the registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from tunekv.engine.request import RequestMetrics

if TYPE_CHECKING:
    from tunekv.engine.llm_engine import Occupancy

__all__ = ["PREFIX", "ServerMetrics"]

PREFIX = "tunekv:"
# vLLM's buckets (seconds) for the latency histograms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


class ServerMetrics:
    """One registry per server. ``observe_step`` after every engine step; ``first_token`` and
    ``finished`` once per request."""

    def __init__(self, model_name: str, prefix_caching: bool = True) -> None:
        """``prefix_caching``: the engine looks prompts up in a prefix cache; without one, as vLLM,
        no prefix-cache query or hit is counted."""
        disable_created_metrics()  # no *_created series, as vLLM: a server process has one registry
        self.registry = CollectorRegistry()
        labels = ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=self.registry)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, labels + list(extra), registry=self.registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry)

        self.model, self.prefix_caching = model_name, prefix_caching
        self.running = gauge("num_requests_running", "Number of requests in model execution batches.").labels(
            model_name)
        self.waiting = gauge("num_requests_waiting", "Number of requests waiting to be processed.").labels(model_name)
        self.kv_usage = gauge("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.").labels(model_name)
        self.preemptions = counter("num_preemptions", "Cumulative number of preemptions from the engine.").labels(
            model_name)
        self.prompt_tokens = counter("prompt_tokens", "Number of prefill tokens processed.").labels(model_name)
        self.generation_tokens = counter("generation_tokens", "Number of generation tokens processed.").labels(
            model_name)
        self.prefix_queries = counter("prefix_cache_queries", "Prefix cache queries, in terms of number of "
                                                              "queried tokens.").labels(model_name)
        self.prefix_hits = counter("prefix_cache_hits", "Prefix cache hits, in terms of number of cached "
                                                        "tokens.").labels(model_name)
        self.success = counter("request_success", "Count of finished requests by finish reason.",
                               ("finished_reason",))
        self.ttft = histogram("time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS).labels(model_name)
        self.itl = histogram("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS).labels(model_name)
        self.e2e = histogram("e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             REQUEST_BUCKETS).labels(model_name)
        self.queue = histogram("request_queue_time_seconds", "Histogram of time spent in WAITING phase for "
                                                             "request.", REQUEST_BUCKETS).labels(model_name)
        self.request_prompt = histogram("request_prompt_tokens", "Number of prefill tokens processed.",
                                        TOKEN_BUCKETS).labels(model_name)
        self.request_generation = histogram("request_generation_tokens", "Number of generation tokens processed.",
                                            TOKEN_BUCKETS).labels(model_name)
        for reason in ("stop", "length", "abort"):
            self.success.labels(model_name, reason)
        self._preemptions_seen = 0

    def observe_step(self, occupancy: Occupancy, num_preemptions: int, new_tokens: int) -> None:
        self.running.set(occupancy.running)
        self.waiting.set(occupancy.waiting)
        self.kv_usage.set(occupancy.used_blocks / occupancy.num_blocks)
        if num_preemptions > self._preemptions_seen:
            self.preemptions.inc(num_preemptions - self._preemptions_seen)
            self._preemptions_seen = num_preemptions
        if new_tokens:
            self.generation_tokens.inc(new_tokens)

    def first_token(self, num_prompt_tokens: int, metrics: RequestMetrics) -> None:
        """A request's prefill is done: its prompt tokens, how many came from the prefix cache, TTFT."""
        self.prompt_tokens.inc(num_prompt_tokens)
        if self.prefix_caching:
            self.prefix_queries.inc(num_prompt_tokens)
            self.prefix_hits.inc(metrics.num_cached_tokens)
        self.request_prompt.observe(num_prompt_tokens)
        assert metrics.first_token_time is not None, "first_token is called once the first token came"
        self.ttft.observe(metrics.first_token_time - metrics.arrival_time)

    def finished(self, reason: str, num_output_tokens: int, metrics: RequestMetrics) -> None:
        self.success.labels(self.model, reason).inc()
        if metrics.finished_time is not None:
            self.e2e.observe(metrics.finished_time - metrics.arrival_time)
        if metrics.scheduled_time is not None:
            self.queue.observe(metrics.scheduled_time - metrics.arrival_time)
        times = metrics.token_times
        for earlier, later in zip(times, times[1:]):
            self.itl.observe(later - earlier)
        self.request_generation.observe(num_output_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
