"""Running the app: the listening socket, uvicorn, and the signals that end it.

The socket is bound before anything loads, so a port in use is one sentence at once. SIGTERM or
SIGINT stops the server accepting; requests in flight get up to ``shutdown_timeout`` seconds to
finish, the rest are aborted (their streams end with finish_reason ``abort``), and ``serve``
returns normally, so the process exits 0. A second signal aborts them at once, as the deadline
would; a third Ctrl-C forces the exit."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from tunekv import __version__
from tunekv.errors import BadInput, RunFailure

__all__ = ["Server", "bind", "serve"]

BACKSTOP_S = 10   # after on_deadline, what uvicorn waits for before cancelling the handlers


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: any free port); BadInput for a host that
    does not resolve, RunFailure for a port in use or not allowed."""
    if not 0 <= port <= 65535:
        raise BadInput(f"--port must be from 0 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        raise BadInput(f"--host {host!r} is not an address or a name this machine resolves") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise RunFailure(f"port {port} on {host} is in use; pick another with --port") from None
        if exc.errno == errno.EACCES:
            raise RunFailure(f"port {port} on {host} needs privileges this user lacks; pick one above 1023") from None
        raise RunFailure(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class Server(uvicorn.Server):
    """uvicorn's server with its signal handling changed: the first SIGTERM or SIGINT starts the
    graceful shutdown and, ``shutdown_timeout`` seconds later, calls ``on_deadline`` (which aborts
    what still runs, so those streams end with finish_reason ``abort`` rather than a cut
    connection); a second signal calls ``on_deadline`` at once; a third SIGINT forces the exit
    (uvicorn cancels the handlers mid-response). A signal it shut down for is not raised again
    afterwards (uvicorn re-raises it, and the process would die of it), so a stop exits 0."""

    def __init__(self, config: uvicorn.Config, shutdown_timeout: int,
                 on_deadline: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.shutdown_timeout = shutdown_timeout
        self.on_deadline = on_deadline
        self.loop: asyncio.AbstractEventLoop | None = None
        self.signals = 0

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 2 and self.on_deadline is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.on_deadline)
            return
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first and self.on_deadline is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.call_later, self.shutdown_timeout, self.on_deadline)


def serve(app: Starlette, sock: socket.socket, shutdown_timeout: int,
          on_started: Callable[[Server], None] | None = None,
          on_deadline: Callable[[], None] | None = None) -> Server:
    """Serve ``app`` on ``sock`` until a signal (or ``server.should_exit``); returns the server.
    uvicorn's own graceful timeout is a backstop a little after ``on_deadline``."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=shutdown_timeout + BACKSTOP_S, timeout_keep_alive=30,
                            server_header=False, headers=[("server", f"tunekv/{__version__}")])
    server = Server(config, shutdown_timeout, on_deadline)

    async def main() -> None:
        server.loop = asyncio.get_running_loop()
        if on_started is not None:
            on_started(server)
        await server.serve(sockets=[sock])

    asyncio.run(main())
    return server
