"""A front for a real server, as an ingress is: with a `token`, every request without `Authorization: Bearer <token>`
is answered 401 and never forwarded (bearer auth); the others are forwarded as they came and the upstream's answer
is returned as it went. It counts both, so a test sees whose requests carried the credentials. With `stall_when`,
the first request it matches is held unanswered (`stalled` is set), as a connection that hangs mid-run: a test can
kill the client there. The server behind it (a real `mlflow server`) is untouched: this is the network boundary."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
              "proxy-authenticate", "host", "content-length"}  # fmt: skip


class TokenProxy:
    def __init__(self, upstream: str, token: str | None = None,
                 stall_when: Callable[[str, str, bytes], bool] | None = None) -> None:  # fmt: skip
        target = urlsplit(upstream)
        self.token, self.counts, self.stall_when = token, Counter(), stall_when
        self.stalled, self._released = threading.Event(), threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # counted, not printed
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.stall_when and not proxy.stalled.is_set() and proxy.stall_when(self.command, self.path, body):
                    proxy.stalled.set()
                    proxy._released.wait()  # never answered: the client is killed meanwhile, or the front stops
                    self.close_connection = True
                    return
                if proxy.token is not None and self.headers.get("Authorization") != f"Bearer {proxy.token}":
                    proxy._count("refused")
                    self._answer(401, {"Content-Type": "application/json"},
                                 b'{"error_code": "UNAUTHENTICATED", "message": "bearer token required"}')
                    return
                proxy._count("forwarded")
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    kept = {k: v for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP}
                    self._answer(answer.status, kept, data)
                finally:
                    upstream.close()

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
