"""`tunekv bench --endpoint --rate R --max-concurrency N` against a fake server that counts the
requests it holds at once: the cap holds, and a request that waited for a slot counts its TTFT
from when it was sent, as `vllm bench serve --max-concurrency` does."""

from __future__ import annotations

import json
import threading
import time

from tests.tunekv.fake_openai import FakeServer, Handler, stream
from tests.tunekv.run_cli import tunekv

WORKLOAD = "description: tiny\nnum_requests: 8\nprompt_len: 8\noutput_len: 4\narrival: {offline: true}\n"
ANSWER_S = 0.3   # each streamed answer starts after this long


class Counter:
    """The streamed requests in flight, and the most there were at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = 0

    def slow(self, handler: Handler, body: dict, n: int) -> None:
        if not body.get("stream"):   # the bench's one-token probe
            stream(handler, body, n)
            return
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(ANSWER_S)
            stream(handler, body, n)
        finally:
            with self.lock:
                self.now -= 1


def test_the_cap_holds_and_a_waiting_request_counts_from_its_send(tmp_path):
    workload, out = tmp_path / "tiny.yaml", tmp_path / "r.json"
    workload.write_text(WORKLOAD)
    counter = Counter()
    with FakeServer(counter.slow) as fake:
        done = tunekv("bench", "--endpoint", fake.url, "--workload", str(workload), "--rate", "500",
                      "--max-concurrency", "2", "--warmup", "0", "--json", str(out),
                      env={"OPENAI_API_KEY": ""}, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert counter.peak == 2, "8 requests due at once reach the cap of 2 and never pass it"
    data = json.loads(out.read_text())
    assert data["workload"]["load"]["max_concurrency"] == 2 and data["metrics"]["completed"] == 8
    assert data["workload"]["load_description"] == "Poisson 500 req/s, at most 2 in flight"
    # Four rounds of two: counted from the schedule, the last round's TTFT would be about 4 x 0.3 s.
    ttft_p99_s = data["metrics"]["ttft_ms"]["p99"] / 1000
    assert ANSWER_S <= ttft_p99_s < 2.5 * ANSWER_S, ttft_p99_s
    assert data["metrics"]["duration_s"] >= 4 * ANSWER_S
    assert "Maximum request concurrency:".ljust(40) + " 2 " in done.stdout
    assert "Request rate configured (RPS):".ljust(40) + " 500.00" in done.stdout
