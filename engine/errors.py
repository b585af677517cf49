"""What the engine refuses, by class. Each is a ValueError, so callers that catch ValueError keep
working; tunekv catches the classes."""

from __future__ import annotations

__all__ = ["ConfigError", "NoKVCacheMemory", "RequestRejected"]


class ConfigError(ValueError):
    """An engine config, model config or sampling parameter the engine cannot serve; the message
    names the field and what it accepts."""


class NoKVCacheMemory(ConfigError):
    """The config leaves no memory for the KV cache (or too little for one max-length request)."""


class RequestRejected(ValueError):
    """``add_request`` refused one request (empty prompt, ids out of range, too long for the
    model or the pool, a duplicate id); the engine goes on serving the others."""
