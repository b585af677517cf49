"""What the HTTP load generator (`tunekv bench --endpoint`) sustains and adds to TTFT and ITL.

tunekv's client (tunekv.measure.endpoint.run_endpoint) against a minimal OpenAI-compatible server:
this script in a second process (``--serve``, aiohttp.web on 127.0.0.1, a free port, stopped by
its PID), so client and server share no event loop. The server streams one-token chunks with
``token_ids``, a usage chunk and ``data: [DONE]``, either as fast as it can (one chunk per stream
per turn of its loop) or at a fixed pace per stream, and records when it wrote every chunk on
CLOCK_MONOTONIC, the clock of the client's time.perf_counter. Matching the client's chunk times
to the server's gives what the client adds, apart from the fake server's own timer lateness:

- delivery: client receive time - server write time, per chunk (socket, event loop, parsing);
- added ITL: client gap - server gap between the same two chunks;
- added TTFT: client TTFT - (server's first write - the server's receipt of the request).

Closed loops of 1, 64 and 512 users unpaced (the most chunks/s), of 1 to 512 users at a 10 ms
pace and of 512 at 50 ms (10,240 chunks/s), then open-loop Poisson runs for the client's own lag
report (ClientReport.lag_p99_ms, .behind). Each run's verdict says whose the latency was: the
client's (chunks waited after the server wrote them, sends left late, a core's worth of CPU used)
or the fake server's (its timers fired late), so a slow client is not read as a slow server.
Goals (the issue): 512 concurrent streams; >= 10,000 chunks/s; p99 added ITL <= 5 ms at 64
streams. Client and server share this machine's cores, so chunk rates are of the pair; each
process's CPU time per chunk is reported too (1e6 / client us per chunk: the chunks/s the client
alone could take on one core), and the client's garbage-collector pauses.

Run: python bench/http_loadgen_overhead.py [--quick] [--uvloop]    (under a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "fake-instant"
TOKEN = 42
PROMPT_LEN = 16
GOAL_STREAMS = 512
GOAL_CHUNKS_S = 10_000.0
GOAL_ADDED_ITL_P99_MS = 5.0
BEHIND_MS = 5.0                  # p99 delivery delay (client) or timer lateness (server) past this: behind
RUN_DEADLINE_S = 25.0            # no run lasts longer (run_endpoint's deadline; the run is marked cut)
REQUEST_TIMEOUT_S = 30.0
START_TIMEOUT_S = 30.0


# --- the fake server (``--serve``): aiohttp only, no tunekv or torch import --------------------

def _sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _chunk(finish: str | None) -> bytes:
    """A vLLM-sized completions chunk of one token (about 200 bytes)."""
    return _sse({"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": MODEL,
                 "choices": [{"index": 0, "text": " x", "logprobs": None, "finish_reason": finish,
                              "stop_reason": None, "token_ids": [TOKEN]}], "usage": None})


class FakeServer:
    """/v1/models, /v1/completions (streamed or not), and two bench routes: POST /bench/pace?ms=
    sets the pace of the streams that start after it; GET /bench/stats returns and clears what
    was recorded: per request (keyed by its first prompt token) the receipt time, the time the
    first chunk was due and every chunk's write time; the process's CPU seconds; the peak of
    concurrent streams."""

    def __init__(self) -> None:
        self.pace = 0.0
        self.records: dict[int, tuple[float, float, list[float]]] = {}
        self.active = self.peak = 0
        self.cpu_mark = time.process_time()
        self.peers: set = set()    # the client connections the requests came on
        self.chunk, self.last = _chunk(None), _chunk("length")

    async def models(self, request: Any) -> Any:
        from aiohttp import web
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model",
                                                               "max_model_len": 1 << 20}]})

    async def completions(self, request: Any) -> Any:
        from aiohttp import web
        received = time.perf_counter()
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        body = json.loads(await request.read())
        prompt, n = body["prompt"], int(body["max_tokens"])
        usage = {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}
        if not body.get("stream"):
            return web.json_response({"id": "cmpl-bench", "object": "text_completion", "created": 0, "model": MODEL,
                                      "choices": [{"index": 0, "text": " x" * n, "token_ids": [TOKEN] * n,
                                                   "logprobs": None, "finish_reason": "length"}], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        self.active += 1
        self.peak = max(self.peak, self.active)
        pace, writes = self.pace, []
        start = time.perf_counter()
        try:
            for k in range(n):
                if pace:
                    delay = start + k * pace - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif k:
                    await asyncio.sleep(0)  # one chunk per stream per turn, as an engine step gives
                await response.write(self.last if k == n - 1 else self.chunk)
                writes.append(time.perf_counter())
            await response.write(_sse({"id": "cmpl-bench", "object": "text_completion", "created": 0,
                                       "model": MODEL, "choices": [], "usage": usage}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        finally:
            self.active -= 1
            self.records[int(prompt[0])] = (received, start, writes)
        return response

    async def set_pace(self, request: Any) -> Any:
        from aiohttp import web
        self.pace = float(request.query["ms"]) / 1e3
        return web.json_response({"pace_ms": self.pace * 1e3})

    async def stats(self, request: Any) -> Any:
        from aiohttp import web
        cpu = time.process_time() - self.cpu_mark
        text = json.dumps({"cpu_s": cpu, "peak_streams": self.peak, "connections": len(self.peers),
                           "records": self.records})
        self.records, self.peak, self.peers = {}, self.active, set()
        self.cpu_mark = time.process_time()  # the next period's CPU leaves out this answer's
        return web.Response(text=text, content_type="application/json")


def serve() -> None:
    """Serve on 127.0.0.1 and a free port, print the port, run until SIGTERM or SIGINT."""
    from aiohttp import web

    async def main() -> None:
        fake = FakeServer()
        app = web.Application()
        app.router.add_get("/v1/models", fake.models)
        app.router.add_post("/v1/completions", fake.completions)
        app.router.add_post("/bench/pace", fake.set_pace)
        app.router.add_get("/bench/stats", fake.stats)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


class ServerProcess:
    """The fake server in its own process; stopped by its PID (SIGTERM, then SIGKILL)."""

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the server prints its port as soon as it listens
        if not line.strip().isdigit():
            self.__exit__()
            raise RuntimeError(f"the fake server did not start (exit {self.proc.poll()})")
        self.url = f"http://127.0.0.1:{int(line)}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def call(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=START_TIMEOUT_S) as response:
            return json.loads(response.read())


# --- the client side ------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile, as tunekv's metrics take it; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100.0)) - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": max(values, default=math.nan), "n": len(values)}


@dataclasses.dataclass(frozen=True)
class Case:
    """One run. Closed loop: ``users`` users, a warm-up of one request each (it opens every
    connection), then ``waves`` requests each, measured. Open loop: ``requests`` at Poisson ``rate``."""

    name: str
    pace_ms: float
    output_len: int
    users: int | None = None
    waves: int = 0
    rate: float | None = None
    requests: int = 0

    @property
    def warmup(self) -> int:
        return self.users if self.users is not None else min(32, self.requests // 4)

    @property
    def total(self) -> int:
        return self.users * (self.waves + 1) if self.users is not None else self.requests


def cases(quick: bool) -> list[Case]:
    w = 1 if quick else 3  # --quick: one measured wave (a smoke test)
    return [
        # Unpaced: the most chunks/s the pair sustains, and what queueing in the client does to TTFT.
        Case("unpaced-1", 0.0, 64, users=1, waves=50 * w),
        Case("unpaced-64", 0.0, 64, users=64, waves=3 * w),
        Case("unpaced-512", 0.0, 48, users=512, waves=w),
        # A 10 ms pace (100 tokens/s per stream): what the client adds to ITL and TTFT as streams grow.
        Case("paced10-1", 10.0, 32, users=1, waves=5 * w),
        Case("paced10-64", 10.0, 32, users=64, waves=2 * w),
        Case("paced10-128", 10.0, 32, users=128, waves=w),
        Case("paced10-256", 10.0, 32, users=256, waves=w),
        Case("paced10-512", 10.0, 32, users=512, waves=w),
        # 512 streams at 50 ms: 10,240 chunks/s, the two goals at once.
        Case("paced50-512", 50.0, 24, users=512, waves=w),
        # Open loop: the client's own report of its send lag (ClientReport.lag_p99_ms, .behind), within
        # its means and past them.
        Case("poisson-200", 0.0, 16, rate=200.0, requests=270 * w),
        Case("poisson-3000", 0.0, 16, rate=3000.0, requests=1000 * w),  # 48,000 chunks/s asked: past the client
    ]


def machine_noise(seconds: float = 2.0) -> dict[str, float]:
    """How late an idle asyncio loop's 1 ms sleeps wake in this process (ms): the floor that the
    machine's other work and the epoll timeout's 1 ms rounding put under every latency here."""
    async def sample() -> list[float]:
        late, end = [], time.perf_counter() + seconds
        while (t := time.perf_counter()) < end:
            await asyncio.sleep(0.001)
            late.append((time.perf_counter() - t - 0.001) * 1e3)
        return late
    return summary(asyncio.run(sample()))


class Probe:
    """What the client saw beside its result: every measured request's arrival, send and chunk
    times (run_endpoint's ``on_request``), and the garbage collector's pauses during the run
    (each one stops the client's event loop)."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[float, float, list[float]]] = {}
        self.gc_pauses: list[tuple[int, float]] = []   # (generation, ms)
        self.driving = False
        self._gc_start = 0.0

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                self._gc_start = time.perf_counter()
            elif self.driving:
                self.gc_pauses.append((info["generation"], (time.perf_counter() - self._gc_start) * 1e3))

        gc.callbacks.append(on_gc)

    def record(self, request: Any) -> None:
        """run_endpoint's on_request: a measured request's arrival, send and chunk times."""
        if request.error is None:
            self.seen[request.index] = (request.arrival, request.sent, list(request.chunk_times))


def metrics_cpu(seen: dict[int, tuple[float, float, list[float]]]) -> float:
    """The CPU seconds run_endpoint spends on the metrics of these requests (bootstrap intervals
    included), measured again here so the client's per-chunk cost leaves them out."""
    from tunekv.workload.metrics import RequestTiming, compute_metrics

    timings = [RequestTiming(arrival, times[0], tuple(times), times[-1], PROMPT_LEN, len(times))
               for arrival, _, times in seen.values() if times]
    if not timings:
        return 0.0
    start = time.process_time()
    compute_metrics(timings, 0, (min(t.arrival for t in timings), max(t.finished for t in timings)), None)
    return time.process_time() - start


def run_case(case: Case, server: ServerProcess, target: Any, probe: Probe) -> dict[str, Any]:
    from tunekv.measure.endpoint import run_endpoint
    from tunekv.measure.run import BenchPlan
    from tunekv.workload.loadgen import Load
    from tunekv.workload.workloads import LengthDist, Workload

    workload = Workload(case.name, num_requests=case.total, prompt_len=LengthDist("fixed", value=PROMPT_LEN),
                        output_len=LengthDist("fixed", value=case.output_len))
    # The first prompt token is the request's index: the server keys its records by it.
    requests = [dataclasses.replace(r, prompt_token_ids=(i,) + tuple(r.prompt_token_ids[1:]))
                for i, r in enumerate(workload.requests(0, 32000))]
    load = Load(concurrency=case.users) if case.users is not None else Load(rate=case.rate)
    warmup = case.warmup
    plan = BenchPlan(workload, requests, 0, warmup, None)
    server.call(f"/bench/pace?ms={case.pace_ms}", "POST")
    before = server.call("/bench/stats")
    probe.seen.clear()
    gc.collect()
    probe.gc_pauses.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    probe.driving = True
    try:
        result, report = run_endpoint(target, plan, load, REQUEST_TIMEOUT_S, deadline=wall + RUN_DEADLINE_S,
                                      on_request=probe.record)
    finally:
        probe.driving = False
    cpu, wall = time.process_time() - cpu - metrics_cpu(probe.seen), time.perf_counter() - wall
    after = server.call("/bench/stats")
    records = {int(k): v for k, v in after["records"].items()}
    server_chunks = sum(len(v[2]) for v in records.values())   # warm-up included, as the CPU times are

    delivery, added_itl, client_itl, server_late, added_ttft, client_ttft, request_leg = [], [], [], [], [], [], []
    mismatched = 0
    for i, (arrival, sent, times) in probe.seen.items():
        rec = records.get(i)
        if rec is None or len(rec[2]) != len(times):
            mismatched += 1
            continue
        received, start, writes = rec
        delivery += [(c - s) * 1e3 for c, s in zip(times, writes)]
        added_itl += [((times[k] - times[k - 1]) - (writes[k] - writes[k - 1])) * 1e3 for k in range(1, len(times))]
        client_itl += [(times[k] - times[k - 1]) * 1e3 for k in range(1, len(times))]
        if case.pace_ms:
            server_late += [(w - start) * 1e3 - k * case.pace_ms for k, w in enumerate(writes)]
        client_ttft.append((times[0] - arrival) * 1e3)
        added_ttft.append((times[0] - arrival - (writes[0] - received)) * 1e3)
        request_leg.append((received - sent) * 1e3)
    chunks = sum(len(t) for _, _, t in probe.seen.values())
    pauses = {f"gen{g}": {"count": len(ms), "total_ms": sum(ms), "max_ms": max(ms, default=0.0)}
              for g in range(3) if (ms := [p for gen, p in probe.gc_pauses if gen == g])}
    m = result.metrics
    out = {
        "case": dataclasses.asdict(case), "load": load.describe(), "warmup_requests": warmup,
        "wall_s": wall, "cut": result.cut, "completed": m.completed, "failed": m.failed,
        "errors": list(report.errors), "peak_concurrent_streams": after["peak_streams"],
        "connections_used": after["connections"],
        "chunks_measured": chunks, "chunks_per_s": chunks / m.duration_s if m.duration_s > 0 else math.nan,
        "client_cpu_us_per_chunk": cpu / server_chunks * 1e6 if server_chunks else math.nan,
        "client_busy": cpu / wall, "server_busy": (after["cpu_s"] - before["cpu_s"]) / wall,
        "server_cpu_us_per_chunk": (after["cpu_s"] - before["cpu_s"]) / server_chunks * 1e6
        if server_chunks else math.nan,
        "tunekv_metrics": {"ttft_ms": m.ttft_ms.to_json(), "itl_ms": m.itl_ms.to_json(),
                           "output_throughput_tok_s": m.output_throughput_tok_s, "duration_s": m.duration_s},
        "client_report": report.to_json(),
        "client_ttft_ms": summary(client_ttft), "added_ttft_ms": summary(added_ttft),
        "request_leg_ms": summary(request_leg), "client_itl_ms": summary(client_itl),
        "added_itl_ms": summary(added_itl), "delivery_ms": summary(delivery),
        "server_late_ms": summary(server_late) if case.pace_ms else None,
        "unmatched_requests": mismatched, "client_gc_pauses": pauses,
    }
    out["verdict"] = verdict(out)
    return out


def verdict(r: dict[str, Any]) -> str:
    """Whose the latency is: the client's (chunks waited after the server wrote them, or sends
    left late), the fake server's (its timers fired late), or nobody's."""
    parts = []
    if r["client_report"]["behind"]:
        parts.append(f"client behind its schedule (send lag p99 {r['client_report']['lag_p99_ms']:.1f} ms)")
    client_late = r["delivery_ms"]["p99"] > BEHIND_MS
    server_late = bool(r["server_late_ms"]) and r["server_late_ms"]["p99"] > BEHIND_MS
    if client_late:
        flood = not r["case"]["pace_ms"] and r["case"]["users"] is not None  # the server sends as fast as it can
        what = "the client is the limit" if flood else "client behind the stream"
        parts.append(f"{what} (chunks waited p99 {r['delivery_ms']['p99']:.1f} ms after the server wrote them)")
    if r["client_busy"] >= 0.9:
        parts.append(f"client saturated (busy {r['client_busy']:.0%} of a core)")
    if server_late:
        parts.append(f"fake server behind its pace (p99 {r['server_late_ms']['p99']:.1f} ms late)")
    if client_late and server_late:
        parts.append("both sides late: CPU contention")
    if r["failed"] or r["cut"] or r["unmatched_requests"]:
        parts.append(f"{r['failed']} failed, cut={r['cut']}, {r['unmatched_requests']} unmatched")
    return "; ".join(parts) or "kept up"


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_table(runs: list[dict[str, Any]]) -> None:
    head = (f"{'run':<13} {'streams':>7} {'chunks/s':>9} {'cli us/ch':>9} {'srv us/ch':>9} "
            f"{'TTFT p50/p99':>13} {'+TTFT p50/p99':>13} {'ITL p50/p99':>12} {'+ITL p50/p99':>13} "
            f"{'deliv p99':>9} {'srv late':>8} {'lag p99':>7} {'gc max':>6}")
    print(head)
    print("-" * len(head))
    for r in runs:
        c = r["case"]
        streams = c["users"] if c["users"] is not None else f"{c['rate']:g}/s"
        late = r["server_late_ms"]["p99"] if r["server_late_ms"] else math.nan
        print(f"{c['name']:<13} {streams:>7} {r['chunks_per_s']:>9.0f} {fmt(r['client_cpu_us_per_chunk']):>9} "
              f"{fmt(r['server_cpu_us_per_chunk']):>9} "
              f"{fmt(r['client_ttft_ms']['p50']):>6}/{fmt(r['client_ttft_ms']['p99']):<6} "
              f"{fmt(r['added_ttft_ms']['p50']):>6}/{fmt(r['added_ttft_ms']['p99']):<6} "
              f"{fmt(r['client_itl_ms']['p50'], 2):>5}/{fmt(r['client_itl_ms']['p99'], 1):<6} "
              f"{fmt(r['added_itl_ms']['p50'], 2):>6}/{fmt(r['added_itl_ms']['p99'], 2):<6} "
              f"{fmt(r['delivery_ms']['p99']):>9} {fmt(late):>8} {fmt(r['client_report']['lag_p99_ms']):>7} "
              f"{fmt(max((g['max_ms'] for g in r['client_gc_pauses'].values()), default=0.0)):>6}")
        if r["verdict"] != "kept up":
            print(f"{'':<13}   -> {r['verdict']}")
    print("ms throughout; +TTFT, +ITL: what the client adds (its times against the server's write times); "
          "deliv: server write -> client read;\nsrv late: the fake server's timers against its pace; lag: the "
          "client's ClientReport.lag_p99_ms (open loop); gc max: the client's longest garbage-collector pause")


def goals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {r["case"]["name"]: r for r in runs}
    closed = [r for r in runs if r["case"]["users"] is not None]
    held = [r["case"]["users"] for r in closed if not r["failed"] and not r["cut"]
            and r["peak_concurrent_streams"] >= r["case"]["users"]]
    within = [r["case"]["users"] for r in closed if r["case"]["pace_ms"] and not r["failed"] and not r["cut"]
              and r["added_itl_ms"]["p99"] <= GOAL_ADDED_ITL_P99_MS]
    best_rate = max((r["chunks_per_s"] for r in closed), default=math.nan)
    # CPU per chunk: unpaced, reads carry many chunks; paced, a chunk comes alone (an event-loop turn each).
    many = [r["client_cpu_us_per_chunk"] for r in closed if r["case"]["users"] > 1 and not r["case"]["pace_ms"]]
    alone = [r["client_cpu_us_per_chunk"] for r in closed if r["case"]["users"] > 1 and r["case"]["pace_ms"]]
    p64 = by.get("paced10-64")
    added = p64["added_itl_ms"]["p99"] if p64 else math.nan
    return {
        "concurrent_streams": {"goal": GOAL_STREAMS, "most_held_without_error": max(held, default=0),
                               "met": max(held, default=0) >= GOAL_STREAMS},
        "chunks_per_s": {"goal": GOAL_CHUNKS_S, "best_measured": best_rate, "met": best_rate >= GOAL_CHUNKS_S,
                         "client_alone_on_one_core_unpaced": 1e6 / min(many) if many else math.nan,
                         "client_alone_on_one_core_paced_worst": 1e6 / max(alone) if alone else math.nan},
        "added_itl_p99_ms_at_64_streams": {"goal": GOAL_ADDED_ITL_P99_MS, "measured": added,
                                           "met": added <= GOAL_ADDED_ITL_P99_MS},
        "most_paced_streams_with_added_itl_p99_within_goal": max(within, default=0),
    }


def commit() -> str:
    """The commit measured, with ``+modified`` when tunekv's client differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "tunekv/measure/endpoint.py"], cwd=root,
                               timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+modified" if dirty else "") if head else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests (a smoke test)")
    parser.add_argument("--only", help="run only the cases whose names contain one of these (comma-separated)")
    parser.add_argument("--no-write", action="store_true", help="print, write no result file")
    parser.add_argument("--uvloop", action="store_true",
                        help="run tunekv's client on uvloop's event loop (pip install uvloop): what the loop costs")
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve()

    import aiohttp

    from bench._common import machine, write_result
    from tunekv.measure.endpoint import open_target

    if args.uvloop:
        import uvloop
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # run_endpoint's asyncio.run takes it
    probe = Probe()
    runs = []
    started = time.perf_counter()
    noise = machine_noise()
    print(f"  machine noise: an idle loop's 1 ms sleeps wake late by p50 {noise['p50']:.2f} ms, "
          f"p99 {noise['p99']:.2f} ms", flush=True)
    with ServerProcess() as server:
        target = open_target(server.url, None, "completions", None, None)
        assert target.token_ids, "the fake server takes token-id prompts"
        for case in cases(args.quick):
            if args.only and not any(part in case.name for part in args.only.split(",")):
                continue
            runs.append(run_case(case, server, target, probe))
            r = runs[-1]
            print(f"  {case.name}: {r['wall_s']:.1f} s, {r['completed']} requests, "
                  f"{r['chunks_per_s']:.0f} chunks/s, {r['verdict']}", flush=True)
    print()
    print_table(runs)
    summary_goals = goals(runs)
    print()
    print(json.dumps(summary_goals, indent=2))
    load1, load5, _ = os.getloadavg()
    payload = {
        "machine": machine(), "args": vars(args), "aiohttp": aiohttp.__version__, "tunekv_commit": commit(),
        "python": sys.version.split()[0],
        "clock": str(time.get_clock_info("perf_counter").implementation),
        "client_event_loop": "uvloop (--uvloop)" if args.uvloop else "asyncio's default",
        "notes": ["client and server are two processes on the same machine and share its cores "
                  f"({os.cpu_count()}); chunk rates are of the pair",
                  "the machine was shared with other heavy work during the measurement "
                  f"(load average {load1:.1f} / {load5:.1f} over 1 / 5 min at the end)",
                  "one measurement, not repeated"],
        "definitions": {
            "delivery_ms": "client receive time - server write time, per chunk (CLOCK_MONOTONIC on both)",
            "added_itl_ms": "client gap - server gap between the same two consecutive chunks",
            "added_ttft_ms": "client TTFT - (server first write - server receipt of the request)",
            "request_leg_ms": "server receipt of the request - client send",
            "server_late_ms": "server write time - its due time on the pace",
            "client_cpu_us_per_chunk": "client process CPU over run_endpoint (metrics computation excluded) "
                                       "/ chunks the server wrote (warm-up included)",
        },
        "machine_noise_ms": noise, "goals": summary_goals, "runs": runs, "total_s": time.perf_counter() - started,
    }
    if args.dump:
        Path(args.dump).write_text(json.dumps(payload, indent=1))
    if not args.no_write:
        print(f"wrote {write_result('http-loadgen-overhead-cpu', payload)}")


if __name__ == "__main__":
    main()
