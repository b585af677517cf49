"""`tunekv serve --api-key`: a bearer token on the OpenAI routes, as vLLM checks it.

Only paths under ``/v1`` need the key (``/health``, ``/version`` and ``/metrics`` stay open for
probes and Prometheus), and CORS preflights (OPTIONS) pass. A request without one of the keys gets
401 with OpenAI's error object; the key is compared in constant time and never echoed."""

from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tunekv.errors import BadInput
from tunekv.serve.protocol import APIError, error_body

__all__ = ["API_KEY_ENV", "RequireApiKey", "check_api_keys"]

API_KEY_ENV = "TUNEKV_API_KEY"   # the key when --api-key is not given (vLLM's is VLLM_API_KEY)
MAX_KEY_CHARS = 4096


class RequireApiKey:
    """ASGI middleware: ``Authorization: Bearer KEY`` with one of ``keys`` on ``/v1`` paths."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        assert keys, "a server that needs a key has at least one"
        self.app = app
        self.digests = [hashlib.sha256(key.encode()).digest() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not _under_v1(scope["path"]):
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.holds(token.strip()):
            await self.app(scope, receive, send)
            return
        message = ("incorrect API key" if scheme.lower() == "bearer" and token.strip()
                   else "this server needs an API key: send it as 'Authorization: Bearer KEY'")
        response = JSONResponse(error_body(APIError(message, status=401, type="AuthenticationError",
                                                    code="invalid_api_key")),
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)

    def holds(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode()).digest()
        return any([hmac.compare_digest(digest, known) for known in self.digests])   # every key, every time


def _under_v1(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


def check_api_keys(keys: list[str], source: str = "--api-key") -> tuple[str, ...]:
    """The keys a server requires (``--api-key``, repeatable, or ``$TUNEKV_API_KEY``: ``source``
    names it); BadInput with one sentence for an empty one, one with spaces or control characters
    (no client could send it in a header), or one over 4,096 characters. The message never shows
    the key."""
    for key in keys:
        if not key:
            raise BadInput(f"{source} is empty; give the token clients send, or leave it out")
        if len(key) > MAX_KEY_CHARS:
            raise BadInput(f"{source} takes at most {MAX_KEY_CHARS:,} characters")
        if any(ch.isspace() or not ch.isprintable() or not ch.isascii() for ch in key):
            raise BadInput(f"{source} takes printable ASCII without spaces (it travels in an HTTP header)")
    return tuple(keys)
