"""A fault-injecting HTTP proxy on 127.0.0.1 in front of an S3 endpoint (moto), for tests.

    proxy = FaultProxy(upstream="http://127.0.0.1:5000").start()  # AWS_ENDPOINT_URL=proxy.endpoint
    proxy.set_plan(FaultPlan(seed=1, slow_down=0.05, reset=0.05, slow=0.05))

Each request draws its fate from `random.Random(f"{seed}:{n}")`, n counting the requests since the plan was
set, so a plan injects the same faults at the same request numbers every run (which request gets number n
depends on the order in which concurrent clients reach the proxy). Faults, as S3 and the network give them:
- slow_down: answered `503 SlowDown` (S3's throttling answer), the request not forwarded;
- reset: the TCP connection reset (RST), half of them before forwarding, half after S3 handled the request
  (a lost answer: the client cannot tell whether its write happened);
- slow: forwarded after `slow_s` seconds;
- deny: every request to one of these buckets answered `403 AccessDenied` (a permanent error);
- only: faults only for requests whose path (without its query) contains one of these strings, e.g. some
  videos' keys (the others are forwarded untouched and not counted as drawn).
`counts` tells how many of each were injected.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
             '<RequestId>proxy</RequestId></Error>')


@dataclass(frozen=True)
class FaultPlan:
    seed: int = 0
    slow_down: float = 0.0
    reset: float = 0.0
    slow: float = 0.0
    slow_s: float = 0.3
    deny: frozenset[str] = field(default_factory=frozenset)
    only: tuple[str, ...] = ()


class FaultProxy:
    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.plan = FaultPlan()
        self.counts = {"requests": 0, "slow_down": 0, "reset": 0, "slow": 0, "deny": 0}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def set_plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self.counts = dict.fromkeys(self.counts, 0)

    def start(self) -> FaultProxy:
        threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fate(self, bucket: str, path: str = "") -> str | None:
        with self._lock:
            plan, n = self.plan, self.counts["requests"]
            self.counts["requests"] += 1
            if plan.only and not any(piece in path.split("?", 1)[0] for piece in plan.only):
                return None
            if bucket in plan.deny:
                fate = "deny"
            else:
                draw = random.Random(f"{plan.seed}:{n}").random()
                fate = None
                for name in ("slow_down", "reset", "slow"):
                    rate = getattr(plan, name)
                    if draw < rate:
                        fate = name
                        if name == "reset":  # the first half of its share: before forwarding
                            fate = "reset_before" if draw < rate / 2 else "reset_after"
                        break
                    draw -= rate
            if fate:
                self.counts[fate.removesuffix("_before").removesuffix("_after")] += 1
            return fate


def _handler(proxy: FaultProxy):
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    chunk = self.rfile.read(size + 2)[:size]
                    if size == 0:
                        break
                    chunks.append(chunk)
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            head = self.command == "HEAD"  # its Content-Length is the object's, with no body
            for name, value in headers:
                if name.lower() not in HOP_BY_HOP and (head or name.lower() != "content-length"):
                    self.send_header(name, value)
            if not head:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._reply(status, ERROR_XML.format(code=code, message=message).encode(),
                        [("Content-Type", "application/xml")])

        def _reset(self) -> None:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _forward(self, body: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
            for attempt in range(2):  # a kept-alive upstream connection may have been closed meanwhile
                connection = getattr(local, "connection", None) or http.client.HTTPConnection(*proxy.upstream)
                local.connection = connection
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    connection.request(self.command, self.path, body=body if body else None, headers=headers)
                    response = connection.getresponse()
                    return response.status, response.read(), response.getheaders()
                except (http.client.HTTPException, OSError):
                    connection.close()
                    local.connection = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def _handle(self) -> None:
            body = self._body()
            bucket = self.path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
            fate = proxy.fate(bucket, self.path)
            if fate == "deny":
                return self._error(403, "AccessDenied", "Access Denied")
            if fate == "slow_down":
                return self._error(503, "SlowDown", "Please reduce your request rate.")
            if fate == "slow":
                time.sleep(proxy.plan.slow_s)
            if fate == "reset_before":
                return self._reset()
            status, data, headers = self._forward(body)
            if fate == "reset_after":
                return self._reset()  # S3 did the work; the answer is lost
            self._reply(status, data, headers)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler
