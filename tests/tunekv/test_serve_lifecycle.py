"""`tunekv serve`'s life: /health before the engine is ready, a config file from `tunekv search`,
bad flags and a port in use, SIGTERM under load (graceful, then cut at --shutdown-timeout)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import pytest

from tests.tunekv.run_cli import refused, tunekv
from tests.tunekv.serve_process import ServeProcess, get, metrics, post, wait_for
from tunekv.engine import EngineConfig, LLMEngine, SamplingParams
from tunekv.serve import AsyncEngine, ServedModel, ServerMetrics, bind, build_app, serve

pytestmark = pytest.mark.slow
SMALL = ("--model", "tiny-llama", "--max-model-len", "256", "--num-kv-blocks", "256")


def test_health_is_503_until_the_engine_has_loaded_then_200():
    release = threading.Event()

    def build() -> LLMEngine:
        assert release.wait(60), "the test releases the build"
        return LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=64, num_kv_blocks=16))

    metrics_ = ServerMetrics("tiny")
    engine = AsyncEngine(build, metrics_)
    app = build_app(ServedModel("tiny", "tiny-llama", 64, 32000, None), engine, metrics_)
    sock = bind("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    servers: list = []
    thread = threading.Thread(target=serve, args=(app, sock, 5), kwargs={"on_started": servers.append}, daemon=True)
    thread.start()
    try:
        status, body = wait_for(lambda: (lambda r: r if r[0] else None)(get(url + "/health")))
        assert status == 503 and json.loads(body)["error"]["message"] == "the engine is loading"
        status, answer = post(url + "/v1/completions", {"prompt": [1, 2], "max_tokens": 2})
        assert status == 503 and "GET /health answers 200 once it is" in answer["error"]["message"]
        release.set()
        wait_for(lambda: get(url + "/health")[0] == 200, timeout=60)
        assert post(url + "/v1/completions", {"prompt": [1, 2], "max_tokens": 2})[0] == 200
    finally:
        release.set()
        wait_for(lambda: servers, timeout=10)[0].should_exit = True
        thread.join(30)
    assert not thread.is_alive(), "the server stopped"


def test_serves_the_config_file_search_writes_unchanged(tmp_path):
    config = tmp_path / "tunekv.yaml"
    config.write_text("# tunekv 0.1.0: best config of study s (trial 3)\nmodel: tiny-llama\ndtype: auto\nseed: 0\n"
                      "block_size: 32\nmax_model_len: 512\nmax_num_seqs: 16\nmax_num_batched_tokens: 512\n"
                      "gpu_memory_utilization: 0.9\ntensor_parallel_size: 1\nenable_chunked_prefill: true\n"
                      "enable_prefix_caching: false\nkv_policy: paged\ntuned_for:\n  gpu: cpu\n  trial: 3\n")
    with ServeProcess("--config", str(config), "--served-model-name", "tuned", "alias") as server:
        assert "block_size=32" in server.stdout() and "max_num_seqs=16" in server.stdout()
        status, answer = post(server.url + "/v1/completions", {"model": "tuned", "prompt": [1, 2], "max_tokens": 3})
        assert status == 200 and answer["model"] == "tuned" and answer["usage"]["completion_tokens"] >= 1
        models = json.loads(get(server.url + "/v1/models")[1])["data"]
        assert [m["id"] for m in models] == ["tuned", "alias"] and models[1]["max_model_len"] == 512
        # any of the names is served; responses carry the first, as vLLM's do
        status, answer = post(server.url + "/v1/completions", {"model": "alias", "prompt": [1, 2], "max_tokens": 3})
        assert status == 200 and answer["model"] == "tuned"
        status, answer = post(server.url + "/v1/completions", {"model": "other", "prompt": [1, 2], "max_tokens": 3})
        assert status == 404 and "serves `tuned`, `alias`" in answer["error"]["message"]
        # a preset has no tokenizer: the bench finds its vocabulary from what /v1/models says it was loaded from
        bench = tunekv("bench", "--endpoint", server.url, "--served-model", "alias", "--num-requests", "4",
                       "--concurrency", "2", "--warmup", "0", timeout=300)
        assert bench.returncode == 0, bench.stderr[-2000:]
        assert server.terminate() == 0


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must be from 0 to 65535, got 70000"),
    (["--shutdown-timeout", "-1"], "--shutdown-timeout must be from 0 to"),
    (["--block-size", "0"], "block_size must be an integer >= 1"),
    (["--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' is not an address or a name"),
    (["--served-model-name", "ok", ""], "--served-model-name takes names of 1 to 256 characters"),
    (["--max-model-len", "4096"], "max_model_len"),
    (["--seed", str(10**23)], "seed must be an integer from -2^63 to 2^64 - 1"),
])
def test_a_bad_flag_is_one_sentence_and_exit_2(tmp_path, args, message):
    refused("serve", "--model", "tiny-llama", "--port", "0", *args, cwd=tmp_path, message=message, timeout=120)


def test_an_engine_that_cannot_start_is_one_sentence_and_exit_2():
    result = tunekv("serve", "--model", "tiny-llama", "--port", "0", "--num-kv-blocks", "4", "--max-model-len", "256",
                    timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: the KV pool (4 blocks of 16 = 64 tokens) cannot "
                                                              "hold one max_model_len (256) request")


def test_a_port_in_use_is_one_sentence_and_exit_1():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = tunekv("serve", "--model", "tiny-llama", "--port", str(port), timeout=120)
    assert result.returncode == 1, result.stderr
    expected = f"error: port {port} on 127.0.0.1 is in use; pick another with --port"
    assert result.stderr.strip().splitlines() == [expected]


def _stream_in_thread(url: str, max_tokens: int, results: list) -> threading.Thread:
    def run() -> None:
        import http.client
        from urllib.parse import urlparse

        where = urlparse(url)
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=120)
        try:
            conn.request("POST", "/v1/completions", json.dumps({"prompt": [3, 4, 5], "max_tokens": max_tokens,
                                                                "ignore_eos": True, "stream": True}),
                         {"Content-Type": "application/json"})
            body = conn.getresponse().read().decode()
            chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
            reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
            results.append((sum(len(c["choices"][0]["token_ids"]) for c in chunks), reasons,
                            body.endswith("data: [DONE]\n\n")))
        except (OSError, http.client.HTTPException):
            results.append((None, [], False))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigterm_lets_requests_in_flight_finish_then_exits_0():
    with ServeProcess(*SMALL, "--shutdown-timeout", "60") as server:
        results: list = []
        threads = [_stream_in_thread(server.url, 48, results) for _ in range(8)]
        wait_for(lambda: metrics(server.url)["tunekv:num_requests_running"] >= 1)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(90) == 0
        for thread in threads:
            thread.join(30)
        assert results == [(48, ["length"], True)] * 8, "every request in flight finished whole"
        assert "Traceback" not in server.stderr()


def test_sigterm_cuts_what_is_still_running_at_the_shutdown_timeout_and_exits_0():
    with ServeProcess("--model", "tiny-llama", "--max-model-len", "2048", "--num-kv-blocks", "1024",
                      "--shutdown-timeout", "1") as server:
        results: list = []
        threads = [_stream_in_thread(server.url, 2000, results) for _ in range(4)]
        wait_for(lambda: metrics(server.url)["tunekv:num_requests_running"] == 4)
        assert server.proc is not None
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        assert time.monotonic() - sent < 20, "the shutdown waited about --shutdown-timeout, not for the requests"
        _ended_aborted(server, threads, results, 4)


def _ended_aborted(server: ServeProcess, threads: list[threading.Thread], results: list, n: int) -> None:
    """Each of the ``n`` streams ended with finish_reason abort and [DONE], and nothing logged a traceback."""
    for thread in threads:
        thread.join(30)
    assert len(results) == n, results
    for tokens, reasons, done in results:
        assert tokens < 2000 and reasons == ["abort"] and done, "the stream ended, aborted, not cut"
    assert "Traceback" not in server.stderr(), server.stderr()


def _accepts(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_second_ctrl_c_aborts_what_runs_at_once_and_every_stream_still_ends_cleanly():
    with ServeProcess("--model", "tiny-llama", "--max-model-len", "2048", "--num-kv-blocks", "1024") as server:
        results: list = []
        threads = [_stream_in_thread(server.url, 2000, results) for _ in range(2)]
        wait_for(lambda: metrics(server.url)["tunekv:num_requests_running"] == 2)
        assert server.proc is not None
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        wait_for(lambda: not _accepts(server.url))   # the first was handled (two at once are one to Python)
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(60) == 0
        assert time.monotonic() - sent < 20, "the second Ctrl-C did not cut the 30 s wait short"
        _ended_aborted(server, threads, results, 2)


def test_a_tensor_parallel_config_serves_the_same_tokens():
    prompt = [1, 5, 9, 200, 31]
    reference = LLMEngine(EngineConfig(model="tiny-llama", device="cpu", max_model_len=256, num_kv_blocks=256))
    expected = reference.generate([prompt], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))[0]
    with ServeProcess(*SMALL, "--tensor-parallel-size", "2") as server:
        status, answer = post(server.url + "/v1/completions", {"prompt": prompt, "max_tokens": 10, "temperature": 0,
                                                               "ignore_eos": True})
        assert status == 200 and answer["choices"][0]["token_ids"] == expected.output_token_ids
        assert server.terminate() == 0, server.stderr()
