"""What the engine refuses, by class. Each is a ValueError, so callers that catch ValueError keep
working; tunekv catches the classes."""

from __future__ import annotations

__all__ = ["ConfigError", "NoKVCacheMemory", "RequestRejected", "shorten"]

SHORTEN_AT = 60   # characters of user input a message echoes


class ConfigError(ValueError):
    """An engine config, model config or sampling parameter the engine cannot serve; the message
    names the field and what it accepts."""


class NoKVCacheMemory(ConfigError):
    """The config leaves no memory for the KV cache (or too little for one max-length request)."""


class RequestRejected(ValueError):
    """``add_request`` refused one request (empty prompt, ids out of range, too long for the
    model or the pool, a duplicate id); the engine goes on serving the others."""


def shorten(text: str, limit: int = SHORTEN_AT) -> str:
    """``text`` for a message: whole when it is short, else its first ``limit`` characters and
    "…" (a message echoes what the user typed, never all of a pasted file)."""
    return text if len(text) <= limit else text[:limit] + "…"
