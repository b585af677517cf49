"""`tunekv serve`: the engine as an OpenAI-compatible HTTP server with Prometheus metrics."""

from tunekv.serve.app import ServedModel, build_app
from tunekv.serve.async_engine import AsyncEngine, EngineDead
from tunekv.serve.metrics import ServerMetrics
from tunekv.serve.protocol import APIError
from tunekv.serve.server import Server, bind, serve

__all__ = ["APIError", "AsyncEngine", "EngineDead", "ServedModel", "Server", "ServerMetrics", "bind", "build_app",
           "serve"]
