"""A stand-in server for the launch tests: it answers /health (after --ready-after seconds) and
/version, or prints a failure and exits, or ignores SIGTERM, or starts a child in its process group.

    python tests/tunekv/fake_server.py --port N [--ready-after S] [--fail TEXT --exit-code C]
                                       [--ignore-term] [--pid-file F] [--child-pid-file F]
                                       [--port-taken-once MARKER]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--never-ready", action="store_true")
    parser.add_argument("--fail", help="print this and exit")
    parser.add_argument("--exit-code", type=int, default=1)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--child-pid-file")
    parser.add_argument("--pid-file")
    parser.add_argument("--port-taken-once", help="a marker file: the first start (no marker yet) finds its port taken")
    args = parser.parse_args()
    print(f"fake server starting on port {args.port}", flush=True)
    if args.pid_file:
        Path(args.pid_file).write_text(str(os.getpid()))
    if args.port_taken_once and not Path(args.port_taken_once).exists():
        Path(args.port_taken_once).write_text("taken once")
        print("OSError: [Errno 98] Address already in use", flush=True)
        return 1
    if args.fail:
        print("loading weights\n" + args.fail, flush=True)
        return args.exit_code
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.child_pid_file:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(args.child_pid_file).write_text(str(child.pid))
    ready_at = time.monotonic() + args.ready_after

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/health":
                ok = not args.never_ready and time.monotonic() >= ready_at
                self.reply(200 if ok else 503, b"")
            elif self.path == "/version":
                self.reply(200, json.dumps({"version": "9.8.7"}).encode())
            else:
                self.reply(404, b"")

        def reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
