"""`tunekv serve --api-key`: the OpenAI routes need a bearer token (through the `openai` client and
plain HTTP over 127.0.0.1); probes and metrics stay open; the key is never printed; tunekv's own
load tester sends it; a search's private servers never inherit one."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from email.message import Message

import openai
import pytest

from tests.tunekv.run_cli import refused, tunekv
from tests.tunekv.serve_process import ServeProcess, get
from tunekv.measure.launch import ServerCommand, launch

pytestmark = pytest.mark.slow

KEY, OTHER = "sk-tunekv-test-0123456789", "second-key"
SMALL = ("--model", "tiny-llama", "--max-model-len", "256", "--num-kv-blocks", "256")


@pytest.fixture(scope="module")
def server():
    with ServeProcess(*SMALL, "--api-key", KEY, "--api-key", OTHER) as s:
        yield s
    assert s.proc is not None and s.proc.returncode == 0, s.stderr()
    assert KEY not in s.stdout() + s.stderr() and OTHER not in s.stdout() + s.stderr(), "a key was printed"


def complete(url: str, key: str, stream: bool = False) -> list[int]:
    api = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
    if stream:
        chunks = api.completions.create(model="tiny-llama", prompt=[1, 2, 3], max_tokens=4, stream=True,
                                        extra_body={"ignore_eos": True})
        return [t for c in chunks for t in c.choices[0].token_ids]
    out = api.completions.create(model="tiny-llama", prompt=[1, 2, 3], max_tokens=4, extra_body={"ignore_eos": True})
    return out.choices[0].token_ids


def unauthenticated(url: str, headers: dict[str, str]) -> tuple[int, dict, Message]:
    """(status, JSON body, headers: looked up case-insensitively) of a GET with ``headers``."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def test_either_key_serves_streamed_and_not(server):
    assert len(complete(server.url, KEY)) == 4 and len(complete(server.url, OTHER, stream=True)) == 4
    assert "/v1 needs an API key" in server.stdout()


def test_a_wrong_key_is_openais_401_and_never_echoed(server):
    with pytest.raises(openai.AuthenticationError) as caught:
        complete(server.url, "sk-wrong")
    error = caught.value.body
    assert caught.value.status_code == 401 and error["code"] == "invalid_api_key", error
    assert error["message"] == "incorrect API key" and "sk-wrong" not in json.dumps(error)


@pytest.mark.parametrize("headers", [{}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY},
                                     {"Authorization": "Bearer"}])
def test_no_bearer_token_is_a_401_that_says_how_to_send_one(server, headers):
    status, body, response_headers = unauthenticated(server.url + "/v1/models", headers)
    assert status == 401 and response_headers.get("WWW-Authenticate") == "Bearer"
    assert body["error"]["type"] == "AuthenticationError" and "Authorization: Bearer KEY" in body["error"]["message"]


def test_health_version_and_metrics_stay_open(server):
    for path in ("/health", "/version", "/metrics"):
        assert get(server.url + path)[0] == 200, path
    assert get(server.url + "/v1/models")[0] == 401


def test_tunekv_bench_sends_the_key(server, tmp_path):
    workload = tmp_path / "small.yaml"
    workload.write_text("num_requests: 4\nprompt_len: 8\noutput_len: 4\n")
    bench = ("bench", "--endpoint", server.url, "--workload", str(workload), "--concurrency", "2", "--warmup", "0")
    sent = tunekv(*bench, "--api-key", KEY, "--json", str(tmp_path / "r.json"), timeout=300)
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["completed"] == 4
    assert KEY not in sent.stdout + sent.stderr
    refused_run = tunekv(*bench, timeout=300)
    assert refused_run.returncode != 0 and "refused the API key (HTTP 401)" in refused_run.stderr


def test_the_key_from_the_environment(tmp_path):
    with ServeProcess(*SMALL, env={"TUNEKV_API_KEY": KEY}) as server:
        assert get(server.url + "/v1/models")[0] == 401
        assert len(complete(server.url, KEY)) == 4


@pytest.mark.parametrize("args, env, message", [
    (["--api-key", ""], {}, "--api-key is empty"),
    (["--api-key", "two words"], {}, "--api-key takes printable ASCII without spaces"),
    (["--api-key", "k" * 5000], {}, "--api-key takes at most 4,096 characters"),
    ([], {"TUNEKV_API_KEY": "tab\tinside"}, "$TUNEKV_API_KEY takes printable ASCII without spaces"),
])
def test_a_key_no_client_could_send_is_refused(tmp_path, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    done = refused("serve", *SMALL, "--port", "0", *args, cwd=tmp_path, message=message, timeout=120)
    assert "k" * 100 not in done.stderr and "inside" not in done.stderr


def test_a_launched_server_does_not_inherit_an_api_key(tmp_path, monkeypatch):
    """A key exported for the user's own vLLM or tunekv serve would lock the search, which sends
    none, out of the servers it launches."""
    monkeypatch.setenv("VLLM_API_KEY", "from-the-shell")
    monkeypatch.setenv("TUNEKV_API_KEY", "from-the-shell")
    monkeypatch.setenv("OPENAI_API_KEY", "client-side")
    script = ("import os, runpy; print('keys:', os.environ.get('VLLM_API_KEY'), os.environ.get('TUNEKV_API_KEY'), "
              "os.environ.get('OPENAI_API_KEY'), flush=True); runpy.run_module('tunekv', run_name='__main__')")
    command = ServerCommand("tunekv serve", lambda port: [sys.executable, "-c", script, "serve", *SMALL,
                                                          "--host", "127.0.0.1", "--port", str(port)])
    server = launch(command, tmp_path / "s.log", 180, lambda: False)
    try:
        assert get(server.url + "/v1/models")[0] == 200, "the launched server needs no key"
    finally:
        server.stop(grace_s=10)
    assert "keys: None None client-side" in (tmp_path / "s.log").read_text()
