"""Key servers on loopback for the JWT tests: one that serves JWK Sets and counts requests, one that
accepts connections and never answers (a blackholed `jwks_url`)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class JwksServer:
    """Serves `routes` (path -> JSON document) and counts GETs per path in `hits`."""

    base: str = ""
    routes: dict[str, bytes] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve(self, path: str, document: dict[str, Any]) -> str:
        self.routes[path] = json.dumps(document).encode()
        return self.base + path

    def count(self, path: str) -> int:
        with self.lock:
            return self.hits.get(path, 0)


@contextmanager
def jwks_server() -> Iterator[JwksServer]:
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.hits[self.path] = state.hits.get(self.path, 0) + 1
            body = state.routes.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@dataclass
class Blackhole:
    """A socket that accepts every connection, reads nothing and never answers; counts the connections."""

    url: str
    accepted: int = 0


@contextmanager
def blackhole() -> Iterator[Blackhole]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.05)
    hole = Blackhole(url=f"http://127.0.0.1:{listener.getsockname()[1]}/.well-known/jwks.json")
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            hole.accepted += 1
            held.append(connection)

    thread = threading.Thread(target=accept, name="blackhole", daemon=True)
    thread.start()
    try:
        yield hole
    finally:
        stop.set()
        thread.join(timeout=5)
        for connection in held:
            connection.close()
        listener.close()
