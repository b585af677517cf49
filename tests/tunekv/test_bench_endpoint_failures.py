"""`tunekv bench --endpoint` when the server fails: nothing listening, a name that does not
resolve, HTTP errors, malformed or broken streams, a request that never ends, a server killed
mid-run; and the API key and a URL's password never shown. Fake servers run in this process, on
127.0.0.1 and a free port; the bench runs as a user runs it, in a subprocess."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.tunekv.fake_openai import FakeServer, Handler, good_chunks, sse, stream
from tests.tunekv.run_cli import refused, tunekv
from tests.tunekv.serve_process import ServeProcess, metrics, wait_for

WORKLOAD = "description: tiny\nnum_requests: 6\nprompt_len: 8\noutput_len: 4\narrival: {offline: true}\n"
NO_KEY = {"OPENAI_API_KEY": ""}   # the tests' own environment may hold one
TIMEOUT_S = 60


@pytest.fixture
def workload(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(WORKLOAD)
    return str(path)


def bench(url: str, workload: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return tunekv("bench", "--endpoint", url, "--workload", workload, *args, env={**NO_KEY, **(env or {})},
                  timeout=TIMEOUT_S)


def one_line(done: subprocess.CompletedProcess, code: int = 1) -> str:
    """The run ended with ``code`` and one line on stderr, no traceback: that line."""
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("host, shown", [
    ("127.0.0.1:{port}", "http://127.0.0.1:{port}/v1"),
    ("bench-user:s3cret-pw@127.0.0.1:{port}", "http://127.0.0.1:{port}/v1"),
    ("tunekv-no-such-host.invalid:8000", "http://tunekv-no-such-host.invalid:8000/v1"),
], ids=["refused", "refused-with-credentials", "dns"])
def test_nothing_answering_is_one_sentence_naming_the_url_before_any_load(workload, tmp_path, host, shown):
    port = free_port()
    out = tmp_path / "r.json"
    done = bench(f"http://{host.format(port=port)}", workload, "--json", str(out))
    line = one_line(done)
    assert line.startswith(f"error: nothing answers at {shown.format(port=port)} ("), line
    assert "s3cret" not in done.stdout + done.stderr
    assert not done.stdout.strip() and not out.exists(), "no load, no result"


def test_a_server_answering_500_to_everything_fails_every_request_with_its_message_and_exits_1(workload, tmp_path):
    def broken(handler: Handler, body: dict, n: int) -> None:
        handler.reply(500, {"error": {"message": "the model is on fire", "type": "InternalServerError"}})

    out = tmp_path / "r.json"
    with FakeServer(broken) as fake:
        done = bench(fake.url, workload, "--json", str(out))
    line = one_line(done)
    assert line == (f"error: every request to {fake.url}/v1 failed; first error: HTTP 500: the model is on fire; "
                    f"the result is in {out}")
    data = json.loads(out.read_text())
    assert data["metrics"]["completed"] == 0 and data["metrics"]["failed"] == 6
    assert data["client"]["errors"] == ["HTTP 500: the model is on fire"] and not data["cut"]
    assert "6 requests failed; first reason: HTTP 500: the model is on fire" in done.stdout


def test_a_search_of_a_deployment_that_fails_every_request_says_so_and_exits_1(workload, tmp_path):
    """Not "no config met the SLO, loosen it": the server's own error, as bench says it."""
    def broken(handler: Handler, body: dict, n: int) -> None:
        handler.reply(500, {"error": {"message": "the model is on fire", "type": "InternalServerError"}})

    with FakeServer(broken) as fake:
        done = tunekv("search", "--endpoint", fake.url, "--workload", workload, "--budget", "60s", "--out",
                      str(tmp_path / "out"), env=NO_KEY, timeout=TIMEOUT_S)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == ("error: every request of the measured trials failed; trial 0 completed no request: every "
                    "request failed at 1 user; first error: HTTP 500: the model is on fire"), last


def test_some_http_errors_are_failed_requests_counted_and_shown_and_the_run_goes_on(workload, tmp_path):
    def flaky(handler: Handler, body: dict, n: int) -> None:
        if n % 2:
            handler.reply(503, b"overloaded, try later", "text/plain")
        else:
            stream(handler, body, n)

    out = tmp_path / "r.json"
    with FakeServer(flaky) as fake:
        done = bench(fake.url, workload, "--json", str(out))
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert (data["metrics"]["completed"], data["metrics"]["failed"]) == (3, 3)
    assert data["client"]["errors"] == ["HTTP 503: overloaded, try later"] and not data["cut"]
    assert "3 requests failed; first reason: HTTP 503: overloaded, try later" in done.stdout


def test_the_same_server_given_twice_is_refused_before_any_request(workload, tmp_path):
    with FakeServer(stream) as fake:
        refused("bench", "--endpoint", fake.url, "--endpoint", fake.url + "/v1/", "--workload", workload,
                cwd=tmp_path, message=f"--endpoint {fake.url}/v1 is given twice")
        assert fake.seen == [], "nothing was sent"


def test_a_request_that_never_ends_fails_at_the_request_timeout(workload, tmp_path):
    def stalls(handler: Handler, body: dict, n: int) -> None:
        if n % 2 == 0:
            return stream(handler, body, n)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.wfile.write(sse(good_chunks(body)[:1], done=False))
        handler.wfile.flush()
        handler.server.release.wait(TIMEOUT_S)

    out = tmp_path / "r.json"
    with FakeServer(stalls) as fake:
        start = time.monotonic()
        done = bench(fake.url, workload, "--request-timeout", "1", "--json", str(out))
        took = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert (data["metrics"]["completed"], data["metrics"]["failed"]) == (3, 3)
    assert data["client"]["errors"] == ["not finished within 1 s (--request-timeout), though streaming"]
    assert took < TIMEOUT_S / 2
    # The window spans the failed requests too: the run lasted as long as the timed-out ones, and
    # its throughput is over that span, not over the instant the three answers took.
    metrics = data["metrics"]
    assert metrics["duration_s"] >= 1.0, metrics["duration_s"]
    assert metrics["request_throughput"] == pytest.approx(3 / metrics["duration_s"], rel=0.01)
    assert (metrics["total_input_tokens"], metrics["total_output_tokens"]) == (3 * 8, 3 * 4)


MALFORMED = {
    "not-json": (lambda body: sse([*good_chunks(body)[:2], b"{'text': oops"]),
                 "a malformed stream: a data: line is not JSON: \"{'text': oops\""),
    "not-an-object": (lambda body: sse([b"[1, 2]"]), "a malformed stream: a chunk is list, not an object: '[1, 2]'"),
    "choices-not-a-list": (lambda body: sse([{"choices": "x"}]),
                           "a malformed stream: a chunk's choices are not a list of objects"),
    "no-done": (lambda body: sse(good_chunks(body), done=False), "the stream ended before data: [DONE]"),
    "error-event": (lambda body: sse([{"error": {"message": "out of KV cache", "code": 507}}], done=False),
                    "the server reported: out of KV cache"),
    "no-token": (lambda body: sse([{"choices": [{"index": 0, "text": ""}]}]), "the stream ended without any token"),
}


@pytest.mark.parametrize("kind", [*MALFORMED, "cut-mid-body"])
def test_a_malformed_or_broken_stream_is_a_failed_request_with_a_clear_message(workload, tmp_path, kind):
    def answer(handler: Handler, body: dict, n: int) -> None:
        if not body.get("stream"):
            return stream(handler, body, n)
        if kind == "cut-mid-body":  # promises more than it sends, then the connection closes
            handler.reply(200, sse(good_chunks(body)[:2], done=False), "text/event-stream", length=100000)
            handler.close_connection = True
            return
        handler.reply(200, MALFORMED[kind][0](body), "text/event-stream")

    out = tmp_path / "r.json"
    with FakeServer(answer) as fake:
        done = bench(fake.url, workload, "--json", str(out))
    line = one_line(done)
    expected = "the connection broke: Response payload is not completed" if kind == "cut-mid-body" \
        else MALFORMED[kind][1]
    assert line.startswith(f"error: every request to {fake.url}/v1 failed; first error: {expected}"), line
    data = json.loads(out.read_text())
    assert data["metrics"]["completed"] == 0 and data["metrics"]["failed"] == 6
    assert data["client"]["errors"][0].startswith(expected)


@pytest.mark.parametrize("source", ["flag", "environment"])
def test_the_api_key_is_sent_but_never_shown_even_when_the_server_echoes_it(workload, tmp_path, source):
    key = "sk-test-9f8e7d6c5b4a"

    def echoes(handler: Handler, body: dict, n: int) -> None:
        handler.reply(500, {"error": {"message": f"upstream refused {handler.headers.get('Authorization')}"}})

    out = tmp_path / "r.json"
    args, env = (["--api-key", key], {}) if source == "flag" else ([], {"OPENAI_API_KEY": key})
    with FakeServer(echoes) as fake:
        done = bench(fake.url, workload, "--json", str(out), *args, env=env)
    line = one_line(done)
    assert "first error: HTTP 500: upstream refused Bearer ***" in line, line
    assert {auth for _, auth in fake.seen} == {f"Bearer {key}"}
    assert key not in done.stdout + done.stderr + out.read_text()


def test_a_url_with_credentials_sends_them_and_never_shows_them(workload, tmp_path):
    out = tmp_path / "r.json"
    with FakeServer(stream) as fake:
        port = fake.server_address[1]
        done = bench(f"http://bench-user:s3cret-pw@127.0.0.1:{port}", workload, "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    basic = "Basic " + base64.b64encode(b"bench-user:s3cret-pw").decode()
    assert {auth for _, auth in fake.seen} == {basic} and sum(p == "/v1/completions" for p, _ in fake.seen) == 7
    text = done.stdout + done.stderr + out.read_text()
    assert "s3cret" not in text and "bench-user" not in text
    assert json.loads(out.read_text())["target"]["url"] == f"http://127.0.0.1:{port}/v1"
    assert f"endpoint http://127.0.0.1:{port}/v1" in done.stdout


def test_a_url_with_credentials_and_an_api_key_is_refused_without_showing_either(workload, tmp_path):
    done = refused("bench", "--endpoint", "http://bench-user:s3cret-pw@127.0.0.1:9", "--api-key", "sk-abcdef",
                   "--workload", workload, cwd=tmp_path, message="carries a user and password and an API key")
    assert "s3cret" not in done.stderr and "sk-abcdef" not in done.stderr


def test_a_bad_url_with_credentials_is_refused_without_showing_them(tmp_path):
    done = refused("bench", "--endpoint", "ftp://bench-user:s3cret-pw@example.com/", cwd=tmp_path,
                   message="--endpoint takes an http(s) URL")
    assert "s3cret" not in done.stderr and "ftp://***@example.com/" in done.stderr


@pytest.mark.parametrize("flag, value", [("--max-num-seqs", "64"), ("--enable-prefix-caching", None),
                                         ("--gpu-memory-utilization", "0.8")])
def test_an_engine_setting_is_refused_with_an_endpoint_not_ignored(workload, tmp_path, flag, value):
    refused("bench", "--endpoint", "http://127.0.0.1:9", "--workload", workload, flag, *([value] if value else []),
            cwd=tmp_path, message=f"{flag} is an engine setting for tunekv's own engine")


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions/", "/v1/models"])
def test_a_routes_url_is_refused_naming_the_servers_root(tmp_path, route):
    refused("bench", "--endpoint", f"http://user:s3cret-pw@127.0.0.1:8000{route}", cwd=tmp_path,
            message="--endpoint names a server, not one of its routes: give 'http://127.0.0.1:8000/v1'")


@pytest.mark.parametrize("command", ["bench", "search"])
@pytest.mark.parametrize("url, reason", [
    ("http://127.0.0.1:99999", "Port out of range"),
    ("http://127.0.0.1:abc", "Port could not be cast"),
    ("http://user:s3cret-pw@[::1", "Invalid IPv6 URL"),
])
def test_a_url_with_a_bad_port_or_address_is_one_sentence(tmp_path, command, url, reason):
    args = ["--budget", "70s", "--out", str(tmp_path / "out")] if command == "search" else []
    done = refused(command, "--endpoint", url, *args, cwd=tmp_path, message="is not a valid URL")
    assert reason in done.stderr and "s3cret" not in done.stderr


LONG = "description: long answers\nprompt_len: 16\noutput_len: 400\n"


@pytest.mark.slow
def test_a_server_killed_mid_run_ends_the_run_with_what_was_measured_and_exit_1(tmp_path):
    """A real `tunekv serve`, SIGKILLed once some measured requests have finished and others run:
    the bench prints and writes the partial result (cut, ended_early), then one sentence, exit 1."""
    path, out = tmp_path / "long.yaml", tmp_path / "r.json"
    path.write_text(LONG)
    finished = "tunekv:request_success_total{finished_reason=length}"
    with ServeProcess("--model", "tiny-llama", "--max-model-len", "1024", "--num-kv-blocks", "256") as server:
        before = metrics(server.url)[finished] + 1   # the bench's one-token probe
        proc = subprocess.Popen([sys.executable, "-m", "tunekv", "bench", "--endpoint", server.url, "--workload",
                                 str(path), "--concurrency", "4", "--num-requests", "20", "--warmup", "0", "--json",
                                 str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", **NO_KEY})
        try:
            def some_done_some_running() -> bool:
                m = metrics(server.url)
                return m[finished] >= before + 2 and m["tunekv:num_requests_running"] >= 1

            wait_for(some_done_some_running, timeout=120, interval=0.1)
            assert server.proc is not None
            server.proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            stdout, stderr = proc.communicate(timeout=60)
            took = time.monotonic() - killed
        finally:
            proc.kill()
            proc.wait()
    line = one_line(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    assert line.startswith(f"error: {server.url}/v1 stopped answering mid-run: the server stopped taking "
                           "connections"), line
    assert line.endswith(f"measured requests completed) is in {out}"), line
    data = json.loads(out.read_text())
    assert data["cut"] and "stopped taking connections" in data["client"]["ended_early"]
    m = data["metrics"]
    assert m["completed"] >= 1 and m["failed"] >= 1 and m["completed"] + m["failed"] == 20
    assert f"({m['completed']} of 20 measured requests completed)" in line
    assert "ended early: the server stopped taking connections" in stdout
    assert took < 60


def test_reasoning_and_tool_call_chunks_are_output_tokens(smollm2_dir, tmp_path):
    """A reasoning model streams its thinking (vLLM's delta.reasoning, SGLang's
    reasoning_content) and tool calls before the answer: TTFT is its first token of any kind, and
    each chunk is a token with its own arrival time."""
    def answer(handler: Handler, body: dict, n: int) -> None:
        delta = [{"role": "assistant", "content": ""}, {"reasoning": "a"}, {"reasoning_content": "b"},
                 {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}]
        first = sse([{"choices": [{"index": 0, "delta": d}]} for d in delta], done=False)
        rest = sse([{"choices": [{"index": 0, "delta": {"content": "c"}, "finish_reason": "length"}]},
                    {"choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 4}}])
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Content-Length", str(len(first) + len(rest)))
        handler.end_headers()
        handler.wfile.write(first)
        handler.wfile.flush()
        handler.server.release.wait(1.0)   # the answer comes a second after the thinking
        handler.wfile.write(rest)

    out = tmp_path / "r.json"
    workload = tmp_path / "w.yaml"
    workload.write_text("num_requests: 2\nprompt_len: 8\noutput_len: 4\n")
    with FakeServer(answer) as fake:
        done = bench(fake.url, str(workload), "--api", "chat", "--tokenizer", str(smollm2_dir), "--concurrency", "1",
                     "--warmup", "0", "--json", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["completed"] == 2 and metrics["ttft_ms"]["p99"] < 500, metrics["ttft_ms"]
    assert metrics["e2e_ms"]["p50"] >= 1000 and metrics["itl_ms"]["p99"] >= 900, metrics["itl_ms"]
