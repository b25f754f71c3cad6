"""A real local HTTP server standing in for Slack and for webhook receivers.

Each path has a script of answers consumed in order (status, headers, delay, or a hang
until released); when the script runs out it answers 200 "ok". Every request is recorded
with its raw body, headers, arrival time and the status it got (None while unanswered).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: hold the request until `Receiver.release()` (or this many seconds, if a number)
    hang: bool | float = False


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None
    answered_at: float | None = None

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.scripts: dict[str, list[Answer]] = {}
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                rec = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                with receiver._lock:
                    receiver.requests.append(rec)
                    script = receiver.scripts.get(self.path) or []
                    answer = script.pop(0) if script else Answer()
                if answer.hang is True:
                    receiver._release.wait(60)
                elif answer.hang:
                    time.sleep(float(answer.hang))
                try:
                    self.send_response(answer.status)
                    for k, v in answer.headers.items():
                        self.send_header(k, v)
                    payload = b"ok" if answer.status < 300 else b"error"
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    return  # the client went away (killed mid-request)
                rec.status, rec.answered_at = answer.status, time.time()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def script(self, path: str, *answers: Answer) -> None:
        with self._lock:
            self.scripts[path] = list(answers)

    def release(self) -> None:
        self._release.set()

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def delivered(self, path: str) -> list[Received]:
        """Requests on `path` that were answered 2xx."""
        return [r for r in self.at(path) if r.status is not None and 200 <= r.status < 300]

    def wait(self, cond: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = cond()
            if result:
                return result
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what or cond}: {self.requests!r}")
