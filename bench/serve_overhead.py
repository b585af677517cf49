"""What `tunekv serve` costs: the same closed-loop requests through the server (streamed HTTP, N
concurrent clients) and through the in-process engine, side by side, on the same engine settings.

For each model the script loads the engine in this process and starts `tunekv serve` (a
subprocess on 127.0.0.1, a free port) with the same settings. Then, for each round and each
client count, it runs the same requests both ways, one after the other (the order alternates by
round; the side not running is idle): in process through `tunekv bench`'s closed-loop driver
(``run_bench`` with ``Load(concurrency=N)``), and through the server by N clients, each sending
its next request when its last one finished. Both sides are measured with the same definitions
(``compute_metrics``): output tok/s over the measured requests' span, TTFT, and ITL as every gap
between consecutive tokens (on the client a token arrives with its chunk; a chunk carrying k
tokens gives k - 1 gaps of 0). Reported: the output tok/s ratio (median of the per-round ratios;
goal >= 0.90 at 64 clients) and what the server adds to TTFT and ITL (server minus in-process,
p50 and p99, median over rounds).

Also recorded: the CPU seconds of each side (this process, the server process) and the share of
the machine other work kept busy meanwhile, so a run on a shared box can be judged; ``--wait-idle``
waits (bounded) for a quiet machine before each side.

The clients speak HTTP/1.1 on plain asyncio streams (one keep-alive connection each), reading
the server-sent events as they come: no client library to install (the GPU image has none), and
little client CPU, which matters where client and server share a few cores. Prompts are token
ids (``return_token_ids`` for the counts), so models without a tokenizer work; the presets have
none, so no text is detokenised. Prefix caching is off on both sides: the server's cache cannot be
emptied between levels and rounds, and the same requests would hit it. On a CPU-only box torch
gets one thread on both sides (``--threads``), leaving a core to the server's event loop and the
clients, as a GPU leaves the host's cores to them.

    python bench/serve_overhead.py                      # both CPU models, ~6 minutes on 2 idle cores
    python bench/serve_overhead.py --models tiny-llama --clients 1,64 --rounds 1
    python bench/serve_overhead.py --smoke              # a quick check that it all works
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench._common import machine, write_result  # noqa: E402
from tunekv import __version__  # noqa: E402
from tunekv.defaults import GPU_MODEL, warmup_requests  # noqa: E402
from tunekv.engine import EngineConfig, LLMEngine  # noqa: E402
from tunekv.measure.run import BenchPlan, run_bench  # noqa: E402
from tunekv.workload.loadgen import Load  # noqa: E402
from tunekv.workload.metrics import RequestTiming, ServingMetrics, compute_metrics  # noqa: E402
from tunekv.workload.workloads import LengthDist, Workload, WorkloadRequest  # noqa: E402

GOAL_RATIO = 0.90          # server / in-process output tok/s at GOAL_CLIENTS clients
GOAL_CLIENTS = 64
START_TIMEOUT_S = 300.0    # for the server to load the model and answer /health
STOP_TIMEOUT_S = 60.0      # for it to exit after SIGTERM (then SIGKILL)
SERVE_PACKAGES = ("starlette", "uvicorn", "prometheus_client", "aiohttp")   # the server, and bench --endpoint's client


@dataclass(frozen=True)
class Setup:
    """One model's requests: uniform prompt and output lengths (tokens), and how many are measured
    at a level: ``per_client`` per client, at least ``min_requests``."""

    prompt: tuple[int, int]
    output: tuple[int, int]
    per_client: int
    min_requests: int

    def workload(self, name: str) -> Workload:
        return Workload(name, prompt_len=LengthDist("uniform", min=self.prompt[0], max=self.prompt[1]),
                        output_len=LengthDist("uniform", min=self.output[0], max=self.output[1]))

    def measured(self, clients: int) -> int:
        return max(self.min_requests, self.per_client * clients)


# Sized so that one side of one level takes <= ~15 s on a 2-core CPU with one torch thread.
# smollm2-135m decodes one sequence at ~85 ms a token there and prefills ~200 tokens/s, so its
# requests are short and each of 64 clients sends one.
CPU_SETUPS = {
    "tiny-llama": Setup(prompt=(16, 256), output=(16, 256), per_client=4, min_requests=32),
    "smollm2-135m": Setup(prompt=(8, 32), output=(8, 24), per_client=1, min_requests=8),
}
# A GPU (bench/gpu_check.py: qwen3-0.6b, 1 and 64 clients): sized, from the engine's speed there,
# for ~30 s of runs on an H100 besides loading both engines; not yet measured.
GPU_SETUP = Setup(prompt=(64, 512), output=(32, 192), per_client=4, min_requests=8)
SMOKE_SETUP = Setup(prompt=(4, 24), output=(4, 12), per_client=2, min_requests=4)


def engine_fields(model: str, setup: Setup, max_clients: int, device: str = "auto") -> dict:
    """The EngineConfig fields both sides run with. The KV pool is given in blocks (every running
    sequence at its longest), so two engines on one GPU get the same pool."""
    max_len = setup.prompt[1] + setup.output[1]
    block = EngineConfig.block_size
    return dict(model=model, device=device, max_model_len=max_len, max_num_seqs=max_clients,
                num_kv_blocks=max_clients * -(-max_len // block) + 1, enable_prefix_caching=False, seed=0)


def serve_flags(fields: dict) -> list[str]:
    """``fields`` as `tunekv serve` flags (its engine flags are vLLM's spelling of the field names)."""
    flags = []
    for name, value in fields.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def config_line(config: EngineConfig) -> str:
    """The engine settings as `tunekv serve` prints them at start (its ``config:`` line)."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return "config: " + ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds process ``pid`` has used (Linux /proc; None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServeProcess:
    """`tunekv serve --host 127.0.0.1 --port 0` with the given flags, as a context manager: it
    waits (bounded) for the URL and a 200 from /health, and on exit stops the process by its PID
    (SIGTERM, then SIGKILL if it has not ended in STOP_TIMEOUT_S) and removes its log folder."""

    def __init__(self, flags: list[str], env: dict[str, str]) -> None:
        self.flags, self.env = flags, env
        self.dir = Path(tempfile.mkdtemp(prefix="tunekv-serve-overhead-"))
        self.proc: subprocess.Popen | None = None
        self.host, self.port = "127.0.0.1", 0

    def output(self) -> str:
        return (self.dir / "stdout").read_text() + (self.dir / "stderr").read_text()

    def __enter__(self) -> ServeProcess:
        cmd = [sys.executable, "-m", "tunekv", "serve", "--host", self.host, "--port", "0",
               "--shutdown-timeout", "5", *self.flags]
        with open(self.dir / "stdout", "w") as out, open(self.dir / "stderr", "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=self.env)
        try:
            self._wait_healthy(time.monotonic() + START_TIMEOUT_S)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_healthy(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunekv serve exited {self.proc.returncode}: {self.output()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tunekv serve was not healthy in {START_TIMEOUT_S:.0f} s: {self.output()[-2000:]}")
            if not self.port:
                found = re.search(r"http://127\.0\.0\.1:(\d+)", self.output())
                self.port = int(found.group(1)) if found else 0
            elif self._health() == 200:
                return
            time.sleep(0.1)

    def _health(self) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/health", timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return 0

    def config_line(self) -> str:
        """The ``config:`` line the server printed: the settings its engine runs with."""
        return next((line for line in self.output().splitlines() if line.startswith("config: ")), "")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Streamed:
    """One request as its client saw it."""

    timing: RequestTiming
    chunks: int                # server-sent events that carried tokens


async def stream_completion(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str,
                            request: WorkloadRequest) -> Streamed:
    """POST one streamed completion on an open keep-alive connection and read its events to the
    end. Times are taken as each HTTP chunk arrives; every token in it arrives then."""
    body = json.dumps({"prompt": list(request.prompt_token_ids), "max_tokens": request.output_len,
                       "ignore_eos": True, "temperature": 0, "stream": True, "return_token_ids": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sent = time.perf_counter()
    writer.write(head + body)
    await writer.drain()
    status = await reader.readline()
    headers = {}
    for _ in range(100):  # a response head has a few lines
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if not status.startswith(b"HTTP/1.1 200"):
        error = await reader.read(int(headers.get("content-length", 0)) or 2000)
        raise RuntimeError(f"the server answered {status.decode().strip()}: {error.decode(errors='replace')}")
    if headers.get("transfer-encoding") != "chunked":
        raise RuntimeError(f"expected a chunked event stream, got headers {headers}")
    times: list[float] = []
    finished: float | None = None
    chunks, buffer = 0, b""
    for _ in range(4 * request.output_len + 16):  # each token comes in at most one event; and the closing ones
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()  # the empty trailer
            break
        data = await reader.readexactly(size + 2)
        now = time.perf_counter()
        *events, buffer = (buffer + data[:-2]).split(b"\n\n")
        for event in events:
            payload = event.removeprefix(b"data: ")
            if payload == b"[DONE]":
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RuntimeError(f"the stream ended with an error: {chunk['error']}")
            choice = chunk["choices"][0]
            new = len(choice.get("token_ids") or ())
            times += [now] * new
            chunks += new > 0
            if choice["finish_reason"] is not None:
                finished = now
    else:
        raise RuntimeError(f"more chunks than {request.output_len} tokens can need")
    if len(times) != request.output_len or finished is None:
        raise RuntimeError(f"asked for {request.output_len} tokens (ignore_eos), got {len(times)}, finish_reason "
                           f"{'seen' if finished is not None else 'missing'}")
    timing = RequestTiming(sent, times[0], tuple(times), finished, len(request.prompt_token_ids), len(times))
    return Streamed(timing, chunks)


async def closed_loop(host: str, port: int, requests: list[WorkloadRequest], indices: list[int], clients: int,
                      timeout_s: float) -> dict[int, Streamed]:
    """``clients`` users, one connection each, send ``requests[indices]`` in order, each its next
    one when its last finished; all of it within ``timeout_s`` (else TimeoutError)."""
    pending = deque(indices)
    done: dict[int, Streamed] = {}

    async def user() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while pending:
                i = pending.popleft()
                done[i] = await stream_completion(reader, writer, f"{host}:{port}", requests[i])
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(user() for _ in range(min(clients, len(indices))))), timeout_s)
    return done


def through_server(server: ServeProcess, requests: list[WorkloadRequest], warmup: int, clients: int,
                   timeout_s: float) -> tuple[ServingMetrics, dict]:
    """The warm-up requests, then the measured ones, as ``run_bench`` runs them (closed loop,
    ``clients`` users); the measured ones' metrics, and how many events carried their tokens."""
    asyncio.run(closed_loop(server.host, server.port, requests, list(range(warmup)), clients, timeout_s))
    done = asyncio.run(closed_loop(server.host, server.port, requests, list(range(warmup, len(requests))), clients,
                                   timeout_s))
    timings = [s.timing for s in done.values()]
    window = (min(t.arrival for t in timings), max(t.finished for t in timings))
    chunks = sum(s.chunks for s in done.values())
    extra = {"chunks": chunks, "tokens_per_chunk": sum(t.output_tokens for t in timings) / chunks}
    return compute_metrics(timings, len(requests) - warmup - len(timings), window, None), extra


def through_endpoint(server: ServeProcess, workload: Workload, requests: list[WorkloadRequest], warmup: int,
                     clients: int, timeout_s: float) -> tuple[ServingMetrics, dict]:
    """The same requests through `tunekv bench --endpoint`'s client (tunekv/measure/endpoint.py:
    aiohttp, a connection per user), closed loop: what a user of that command would measure."""
    from tunekv.measure.endpoint import open_target, run_endpoint

    target = open_target(f"http://{server.host}:{server.port}", None, "completions", None, None)
    result, report = run_endpoint(target, BenchPlan(workload, requests, 0, warmup, None), Load(concurrency=clients),
                                  timeout_s, deadline=time.perf_counter() + timeout_s)
    if result.cut or result.metrics.failed:
        raise RuntimeError(f"the endpoint run failed {result.metrics.failed} requests: {report.errors}")
    return result.metrics, {"client_lag_p99_ms": report.lag_p99_ms}


def in_process(engine: LLMEngine, workload: Workload, requests: list[WorkloadRequest], warmup: int, clients: int,
               timeout_s: float) -> tuple[ServingMetrics, dict]:
    """The same requests through `tunekv bench`'s closed-loop driver on the engine in this process."""
    result = run_bench(engine, BenchPlan(workload, requests, 0, warmup, None), Load(concurrency=clients),
                       deadline=engine.clock.now() + timeout_s)
    if result.cut:
        raise TimeoutError(f"the in-process run did not finish in {timeout_s:.0f} s")
    return result.metrics, {}


def busy_cpu_seconds() -> float | None:
    """CPU seconds the machine has been busy since boot, all cores, steal included (Linux
    /proc/stat; None elsewhere)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def wait_idle(limit_s: float, share: float = 0.8, window_s: float = 2.0) -> float | None:
    """Wait, at most ``limit_s``, until the machine was at least ``share`` idle over ``window_s``;
    the idle share last seen (None where it cannot be read)."""
    deadline = time.monotonic() + limit_s
    cores = os.cpu_count() or 1
    while True:
        before, t = busy_cpu_seconds(), time.monotonic()
        time.sleep(window_s)
        after = busy_cpu_seconds()
        if before is None or after is None:
            return None
        idle = 1 - (after - before) / (cores * (time.monotonic() - t))
        if idle >= share or time.monotonic() >= deadline:
            return idle


def measured_side(run: Callable[[], tuple[ServingMetrics, dict]], server_pid: int) -> tuple[ServingMetrics, dict]:
    """``run()``, and the CPU seconds spent while it ran (warm-up included, on both sides): this
    process (the in-process engine, or the clients), the server process, and the share of the
    machine's cores everything else kept busy (other processes, other VMs' steal)."""
    wall, own, served, busy = time.monotonic(), time.process_time(), cpu_seconds(server_pid), busy_cpu_seconds()
    metrics, extra = run()
    wall, own = time.monotonic() - wall, time.process_time() - own
    served_after, busy_after = cpu_seconds(server_pid), busy_cpu_seconds()
    served = None if served is None or served_after is None else served_after - served
    extra.update(wall_s=wall, bench_cpu_s=own, server_cpu_s=served)
    if busy is not None and busy_after is not None and served is not None:
        extra["others_busy"] = max(0.0, busy_after - busy - own - served) / ((os.cpu_count() or 1) * wall)
    return metrics, extra


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarize(rounds: list[dict]) -> dict:
    """A level's figures over its rounds: medians of each side, of the per-round ratios, and of
    the per-round differences (server minus in-process) of TTFT and ITL p50 and p99; the CPU the
    server and the clients used per CPU second of the in-process run; the largest share of the
    machine other work kept busy during a side."""
    out: dict = {
        "in_process_tok_s": _median([r["in_process"]["output_throughput_tok_s"] for r in rounds]),
        "server_tok_s": _median([r["server"]["output_throughput_tok_s"] for r in rounds]),
        "ratio": _median([r["server"]["output_throughput_tok_s"] / r["in_process"]["output_throughput_tok_s"]
                          for r in rounds]),
    }
    for metric in ("ttft_ms", "itl_ms"):
        for q in ("p50", "p99"):
            out[f"{metric[:-3]}_added_{q}_ms"] = _median([r["server"][metric][q] - r["in_process"][metric][q]
                                                          for r in rounds])
            out[f"{metric[:-3]}_in_process_{q}_ms"] = _median([r["in_process"][metric][q] for r in rounds])
    # The same server measured by `tunekv bench --endpoint`'s client instead of this script's raw one.
    out["endpoint_tok_s"] = _median([r["endpoint"]["output_throughput_tok_s"] for r in rounds])
    out["endpoint_ratio"] = _median([r["endpoint"]["output_throughput_tok_s"]
                                     / r["in_process"]["output_throughput_tok_s"] for r in rounds])
    for metric in ("ttft_ms", "itl_ms"):
        for q in ("p50", "p99"):
            out[f"endpoint_{metric[:-3]}_added_{q}_ms"] = _median(
                [r["endpoint"][metric][q] - r["in_process"][metric][q] for r in rounds])
    out["tokens_per_chunk"] = _median([r["server_extra"]["tokens_per_chunk"] for r in rounds])
    mine = [r["in_process_extra"]["bench_cpu_s"] for r in rounds]
    if all(r["server_extra"]["server_cpu_s"] is not None for r in rounds):
        out["server_cpu_x"] = _median([r["server_extra"]["server_cpu_s"] / m for r, m in zip(rounds, mine)])
    out["client_cpu_x"] = _median([r["server_extra"]["bench_cpu_s"] / m for r, m in zip(rounds, mine)])
    others = [max(r[side].get("others_busy", math.nan) for side in ("in_process_extra", "server_extra"))
              for r in rounds]
    out["others_busy_max"] = max(others, default=math.nan)
    return out


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[dict[str, str]]:
    """torch's CPU threads in this process set to ``threads`` until the block ends, and yields the
    environment that gives a subprocess as many (None: torch's defaults, the environment as is)."""
    before, env = torch.get_num_threads(), dict(os.environ)
    if threads is not None:
        torch.set_num_threads(threads)
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        yield env
    finally:
        torch.set_num_threads(before)


def compare_model(model: str, setup: Setup, clients: list[int], rounds: int, num_requests: int | None = None,
                  device: str = "auto", threads: int | None = None, timeout_s: float = 300.0,
                  wait_idle_s: float = 0.0, log: Callable[[str], None] = print) -> dict:
    """One model: the engine here and `tunekv serve` with the same settings, each level run both
    ways in each round. ``threads``: torch's CPU threads on both sides (None: torch's default);
    ``wait_idle_s``: before each side, wait up to this long for the machine to be 80% idle.
    Returns the settings, every round's metrics and each level's summary."""
    with torch_threads(threads) as env:
        out = _compare(model, setup, clients, rounds, num_requests, device, env, timeout_s, wait_idle_s, log)
    out["torch_threads"] = threads
    return out


def _compare(model: str, setup: Setup, clients: list[int], rounds: int, num_requests: int | None, device: str,
             env: dict[str, str], timeout_s: float, wait_idle_s: float, log: Callable[[str], None]) -> dict:
    fields = engine_fields(model, setup, max(clients), device)
    workload = setup.workload(f"serve-overhead-{model}")
    t0 = time.monotonic()
    engine = LLMEngine(EngineConfig(**fields))
    load_s = time.monotonic() - t0
    vocab = engine.model_config.hf_config.vocab_size
    plans = {}
    for n in clients:
        measured = num_requests or setup.measured(n)
        warmup = warmup_requests(measured)
        plans[n] = (warmup, workload.requests(n, vocab, num_requests=warmup + measured))
    out: dict = {"engine_fields": fields, "workload": dataclasses.asdict(setup),
                 "in_process_config": config_line(engine.config), "levels": {}}
    try:
        t0 = time.monotonic()
        with ServeProcess(serve_flags(fields), env) as server:
            out.update(server_config=server.config_line(), engine_load_s=load_s,
                       server_start_s=time.monotonic() - t0)
            out["same_config"] = out["server_config"] == out["in_process_config"]
            if not out["same_config"]:
                log(f"  note: the server's settings differ:\n    {out['server_config']}\n"
                    f"    {out['in_process_config']}")
            assert server.proc is not None
            levels: dict[int, list[dict]] = {n: [] for n in clients}
            for r in range(rounds):
                for n in clients:
                    warmup, requests = plans[n]
                    sides, idle = {}, {}
                    order = ("in_process", "server", "endpoint")
                    order = order if r % 2 == 0 else order[::-1]
                    for side in order:
                        if wait_idle_s > 0:
                            idle[side] = wait_idle(wait_idle_s)
                        if side == "server":
                            run = functools.partial(through_server, server, requests, warmup, n, timeout_s)
                        elif side == "endpoint":
                            run = functools.partial(through_endpoint, server, workload, requests, warmup, n,
                                                    timeout_s)
                        else:
                            run = functools.partial(in_process, engine, workload, requests, warmup, n, timeout_s)
                        sides[side] = measured_side(run, server.proc.pid)
                    (mine, mine_extra), (served, served_extra) = sides["in_process"], sides["server"]
                    endpoint, endpoint_extra = sides["endpoint"]
                    levels[n].append({"round": r, "order": list(order), "requests": len(requests) - warmup,
                                      "warmup": warmup, "idle_before": idle,
                                      "in_process": mine.to_json(), "server": served.to_json(),
                                      "endpoint": endpoint.to_json(), "in_process_extra": mine_extra,
                                      "server_extra": served_extra, "endpoint_extra": endpoint_extra})
                    log(f"  {model} {n:>3} clients, round {r + 1}/{rounds}: in-process "
                        f"{mine.output_throughput_tok_s:8.1f} tok/s, server {served.output_throughput_tok_s:8.1f} "
                        f"tok/s ({served.output_throughput_tok_s / mine.output_throughput_tok_s:.2f}x)")
    finally:
        engine.shutdown()
    for n, runs in levels.items():
        out["levels"][str(n)] = {"summary": summarize(runs), "rounds": runs}
    return out


def print_table(results: dict[str, dict]) -> None:
    print(f"\n{'model':<14}{'clients':>8}{'in-proc tok/s':>15}{'server tok/s':>14}{'ratio':>7}"
          f"{'TTFT +ms p50':>14}{'p99':>9}{'ITL +ms p50':>13}{'p99':>9}{'server CPU':>12}{'others':>8}"
          f"{'--endpoint':>12}{'TTFT +p50':>11}{'ITL +p99':>10}")
    for model, result in results.items():
        for n, level in result["levels"].items():
            s = level["summary"]
            print(f"{model:<14}{n:>8}{s['in_process_tok_s']:>15.1f}{s['server_tok_s']:>14.1f}{s['ratio']:>7.2f}"
                  f"{s['ttft_added_p50_ms']:>14.2f}{s['ttft_added_p99_ms']:>9.2f}{s['itl_added_p50_ms']:>13.2f}"
                  f"{s['itl_added_p99_ms']:>9.2f}{s.get('server_cpu_x', math.nan):>11.2f}x"
                  f"{s['others_busy_max']:>8.0%}{s['endpoint_ratio']:>12.2f}{s['endpoint_ttft_added_p50_ms']:>11.2f}"
                  f"{s['endpoint_itl_added_p99_ms']:>10.2f}")


def versions() -> dict:
    """The versions behind the figures, and the HTTP parser uvicorn picks here ("auto": httptools
    when installed, else h11). The event loop is asyncio's whatever is installed: `tunekv serve`
    calls ``asyncio.run`` itself, so uvicorn's loop choice (uvloop) does not apply."""
    out = {"tunekv": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in (*SERVE_PACKAGES, "h11", "httptools"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["uvicorn_http"] = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return out


def device_name() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


NOTES = ("client and server run on the same machine: on a CPU-only box they share its cores with the engine "
         "(torch_threads sets the engine's math threads on both sides; the side not measured is idle, not stopped); "
         "prefix caching off on both sides; token-id prompts, no tokenizer work; the server's figures are the "
         "clients' (request sent to chunk received); *_cpu_s: CPU seconds over a side, warm-up included (the "
         "in-process side's also run_bench's fixed costs: a full garbage collection and four tiny warm-up requests, "
         "~0.2 s with tiny-llama and ~1 s with smollm2-135m on a 2-core CPU, so server_cpu_x reads low on short "
         "sides); others_busy: "
         "the share of the machine's cores other work kept busy during a side (figures taken then are noisier)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated presets (default: tiny-llama,smollm2-135m on a CPU, "
                                          f"{GPU_MODEL} on a GPU)")
    parser.add_argument("--clients", default="1,16,64", help="comma-separated concurrent clients, one level each")
    parser.add_argument("--num-requests", type=int,
                        help="measured requests per level (default: per model, 2-4 per client; warm-up extra)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every level, both sides each time")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads on both sides (default 1 on a CPU-only box: one core does the math, "
                             "the others are left to the server's event loop and the clients; torch's default on a "
                             "GPU box)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                        help="before each side of each level, wait up to S seconds for the machine to be 80%% idle "
                             "(a shared box); the idle share seen goes into the JSON")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one side of one level may take")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/serve-overhead-<device>-<date>"
                                                 ".json; with --smoke serve-overhead-smoke.json in the temp directory)")
    parser.add_argument("--smoke", action="store_true", help="tiny-llama, 1 and 4 clients, a few short requests")
    args = parser.parse_args()
    missing = [name for name in SERVE_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"tunekv serve needs {', '.join(missing)}, not installed here", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    names = args.models or (GPU_MODEL if cuda else "tiny-llama,smollm2-135m")
    models = ["tiny-llama"] if args.smoke else [m.strip() for m in names.split(",") if m.strip()]
    try:
        clients = [1, 4] if args.smoke else sorted({int(c) for c in args.clients.split(",")})
    except ValueError:
        parser.error(f"--clients takes whole numbers separated by commas, got {args.clients!r}")
    rounds = 1 if args.smoke else args.rounds
    if min(clients) < 1 or rounds < 1 or any(v is not None and v < 1 for v in (args.num_requests, args.threads)):
        parser.error("--clients, --rounds, --num-requests and --threads must be >= 1")
    threads = args.threads if args.threads is not None or cuda else 1
    start = time.monotonic()
    results = {}
    for model in models:
        setup = SMOKE_SETUP if args.smoke else GPU_SETUP if cuda else CPU_SETUPS.get(model, CPU_SETUPS["smollm2-135m"])
        print(f"{model}: clients {clients}, {rounds} round(s), prompts {setup.prompt[0]}-{setup.prompt[1]} and "
              f"outputs {setup.output[0]}-{setup.output[1]} tokens", flush=True)
        results[model] = compare_model(model, setup, clients, rounds, args.num_requests, threads=threads,
                                       timeout_s=args.timeout, wait_idle_s=args.wait_idle,
                                       log=lambda line: print(line, flush=True))
    print_table(results)
    at_goal = {m: r["levels"][str(GOAL_CLIENTS)]["summary"]["ratio"] for m, r in results.items()
               if str(GOAL_CLIENTS) in r["levels"]}
    for model, ratio in at_goal.items():
        print(f"{model}: server/in-process tok/s at {GOAL_CLIENTS} clients {ratio:.2f} "
              f"({'meets' if ratio >= GOAL_RATIO else 'misses'} the goal >= {GOAL_RATIO:.2f})")
    seconds = time.monotonic() - start
    payload = {"machine": machine(), "versions": versions(), "notes": NOTES,
               "settings": {"models": models, "clients": clients, "rounds": rounds, "num_requests": args.num_requests,
                            "torch_threads": threads, "timeout_s": args.timeout, "wait_idle_s": args.wait_idle,
                            "smoke": args.smoke,
                            "goal": {"ratio": GOAL_RATIO, "clients": GOAL_CLIENTS}},
               "goal_met": {m: ratio >= GOAL_RATIO for m, ratio in at_goal.items()},
               "results": results, "seconds": seconds}
    out = args.out
    if out is None and args.smoke:  # a smoke run's figures are no result: kept out of bench/results
        out = Path(tempfile.gettempdir()) / "serve-overhead-smoke.json"
    path = write_result(f"serve-overhead-{device_name()}", payload, out)
    print(f"wrote {path} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
