"""A stand-in OpenAI-compatible server in the test's own process: /v1/models, and POST
/v1/completions answered by a function the test gives, on 127.0.0.1 and a free port."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "tiny-llama"   # a preset: the bench takes its vocabulary without --tokenizer
MODELS = {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 2048}]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeServer

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: bytes | dict, content_type: str = "application/json",
              length: int | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.record(self, None)
        if self.path == "/v1/models":
            self.reply(200, MODELS)
        else:
            self.reply(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        n = self.server.record(self, body)
        if self.path not in ("/v1/completions", "/v1/chat/completions"):
            self.reply(404, {"error": {"message": "not found"}})
        else:
            self.server.answer(self, body, n)


class FakeServer(ThreadingHTTPServer):
    """``with FakeServer(answer) as fake:`` serves /v1/models, and POST /v1/completions by
    ``answer(handler, body, n)`` (n: how many POSTs came before this one; the bench's one-token
    probe is n = 0), on 127.0.0.1 in a background thread; ``fake.seen`` holds (path,
    Authorization header) of every request."""

    daemon_threads = True

    def __init__(self, answer: Callable[[Handler, dict, int], None]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.answer = answer
        self.seen: list[tuple[str, str | None]] = []
        self.posts = 0
        self.lock = threading.Lock()
        self.release = threading.Event()   # stalled answers end when the test ends
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, handler: Handler, body: dict | None) -> int:
        with self.lock:
            self.seen.append((handler.path, handler.headers.get("Authorization")))
            if body is None:
                return -1
            self.posts += 1
            return self.posts - 1

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()
        self.thread.join(10)


def sse(chunks: list[bytes | dict], done: bool = True) -> bytes:
    lines = [b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n" for c in chunks]
    return b"".join(lines) + (b"data: [DONE]\n\n" if done else b"")


def good_chunks(body: dict) -> list[bytes | dict]:
    n = body["max_tokens"]
    return [*({"choices": [{"index": 0, "text": "x"}]} for _ in range(n)),
            {"choices": [], "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": n}}]


def stream(handler: Handler, body: dict, n: int) -> None:
    """A well-formed answer: the probe's JSON, or the asked tokens one chunk each, usage, [DONE]."""
    if not body.get("stream"):
        handler.reply(200, {"choices": [{"index": 0, "text": "x"}]})
    else:
        handler.reply(200, sse(good_chunks(body)), "text/event-stream")
