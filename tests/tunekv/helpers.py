"""Inputs more than one test module uses: a best trial to export, a small workload on a tiny GPU
for searches, and plain HTTP pages (a server's /metrics). Test modules import from here (or from
``tui_helpers``), never from each other."""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import threading
from collections.abc import Callable, Iterator

from tunekv.export import Best
from tunekv.hardware.gpus import gpu_preset
from tunekv.workload.workloads import LengthDist, Workload

GIB = 1 << 30

# What a search records about itself, as `Best.spec` carries it into an export's header.
BEST_SPEC = {"model": "qwen3-0.6b", "model_source": "Qwen/Qwen3-0.6B", "dtype": "bfloat16",
             "gpu": "NVIDIA H100 80GB HBM3", "gpu_preset": "h100-80gb", "workload": "chat", "num_requests": 200,
             "seed": 0, "slo": "ttft_p99<=500ms,itl_p99<=50ms", "slo_ms": {"ttft_p99": 500.0, "itl_p99": 50.0},
             "load": None, "max_prompt_tokens": 2100, "base": {"model": "qwen3-0.6b", "dtype": "auto", "seed": 0}}
BEST_POINT = {"block_size": 32, "max_model_len": 4096, "max_num_seqs": 128, "max_num_batched_tokens": 2048,
              "gpu_memory_utilization": 0.9, "tensor_parallel_size": 1, "enable_chunked_prefill": True,
              "enable_prefix_caching": False, "kv_policy": "paged", "kv_cache_dtype": "auto"}

SMALL = Workload("small", num_requests=24, prompt_len=LengthDist("uniform", min=16, max=200),
                 output_len=LengthDist("uniform", min=8, max=40))
# A 2.7 GiB card: qwen3-0.6b's weights and the fixed 1 GiB leave a KV pool only at high utilisation.
TINY_GPU = dataclasses.replace(gpu_preset("l4-24gb"), memory_bytes=int(2.7 * GIB))


def best(point: dict = BEST_POINT, fidelity: str = "real", blocks: int = 5000) -> Best:
    """Trial 7 of a study as the exporters get it: ``point`` measured at ``fidelity`` (2,500 tok/s at
    96 users) on a KV pool of ``blocks`` blocks."""
    metrics = {"ttft_ms": {"p99": 321.0}, "itl_ms": {"p99": 41.5}}
    outcome = {"value": 2500.0, "capacity": 96, "capacity_capped": False, "metrics": metrics,
               "kv": {"num_blocks": blocks, "block_size": point["block_size"]}}
    return Best("qwen3-0.6b-chat-1234", BEST_SPEC, 7, fidelity, point, outcome)


@contextlib.contextmanager
def http_pages(pages: dict[str, tuple[int, str]]) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 that answers a GET of each path in ``pages`` with its
    (status, text), read at each request (so a test changes a page by changing the dict), and 404
    elsewhere; yields its root URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, text = pages.get(self.path, (404, "not found"))
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class StandInRunner:
    """A search's runner without an engine: subclasses give ``run`` its outcomes (the
    TrialRunner protocol of tunekv.search.trials)."""

    calibration_note = ""
    max_requests: int | None = None
    overhead_s = 1.0
    fixed_deployment = False

    def __init__(self) -> None:
        self.on_note: Callable[[str], None] = print

    def calibrate(self, point: dict, seconds: float, stop: Callable[[], bool]) -> tuple[bool, str]:
        raise AssertionError("this search has a calibration, or simulates nothing")

