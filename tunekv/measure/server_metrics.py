"""A server's load as its Prometheus ``/metrics`` says: KV cache usage, requests running and waiting.

The client side of ``/metrics`` (``tunekv.serve.metrics`` is tunekv serve's own): the gauges vLLM,
SGLang, TGI and tunekv serve expose, read from the text format with prometheus_client's parser.
A name may carry labels (``model_name``, ``engine``, a rank); several series of one name are one
server's engines: their requests add up, their KV cache usage is averaged."""

from __future__ import annotations

import http.client
import math
import urllib.error
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from tunekv.errors import shorten

__all__ = ["KV_USAGE", "METRICS_TIMEOUT_S", "RUNNING", "WAITING", "NoMetrics", "ServerLoad", "parse_server_load",
           "read_server_load"]

# The first name a server has is the one read (vLLM before 0.10 named the KV gauge gpu_cache_usage_perc).
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "tunekv:kv_cache_usage_perc",
            "sglang:token_usage")
RUNNING = ("vllm:num_requests_running", "tunekv:num_requests_running", "sglang:num_running_reqs",
           "tgi_batch_current_size")
WAITING = ("vllm:num_requests_waiting", "tunekv:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
METRICS_TIMEOUT_S = 1.0
MAX_METRICS_BYTES = 8 << 20     # vLLM's page with every histogram is ~100 KB; more is not a metrics page


@dataclass(frozen=True)
class ServerLoad:
    """One reading of a server's /metrics (None: the server exposes no such gauge; TGI has no KV one)."""

    kv_usage: float | None      # the KV cache's used fraction, 0..1
    running: int | None         # requests in the running batch
    waiting: int | None         # requests queued for it

    @property
    def empty(self) -> bool:
        """None of the gauges tunekv reads is there (not one of the servers it knows)."""
        return self.kv_usage is None and self.running is None and self.waiting is None


class NoMetrics(Exception):
    """A server's /metrics could not be read: the reason, in a few words."""


def parse_server_load(text: str) -> ServerLoad:
    """The load in ``text`` (Prometheus' text format); ValueError when it is not that format."""
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isnan(sample.value):
                values.setdefault(sample.name, []).append(sample.value)

    def found(names: tuple[str, ...]) -> list[float] | None:
        return next((values[name] for name in names if name in values), None)

    kv, running, waiting = found(KV_USAGE), found(RUNNING), found(WAITING)
    return ServerLoad(None if kv is None else min(1.0, max(0.0, sum(kv) / len(kv))),
                      None if running is None else round(sum(running)),
                      None if waiting is None else round(sum(waiting)))


def read_server_load(url: str, timeout: float = METRICS_TIMEOUT_S) -> ServerLoad:
    """GET ``url``/metrics (``url`` is the server's root, such as http://127.0.0.1:8000) past any
    proxy and parse it; NoMetrics saying why when nothing readable answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url.rstrip("/") + "/metrics", timeout=timeout) as response:
            raw = response.read(MAX_METRICS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise NoMetrics(f"HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise NoMetrics(shorten(str(exc.reason), 80)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise NoMetrics(shorten(str(exc) or type(exc).__name__, 80)) from None
    if len(raw) > MAX_METRICS_BYTES:
        raise NoMetrics(f"more than {MAX_METRICS_BYTES >> 20} MiB: not a metrics page")
    try:
        return parse_server_load(raw.decode("utf-8", "replace"))
    except ValueError as exc:
        raise NoMetrics(f"not Prometheus' text format ({shorten(str(exc), 60)})") from None
