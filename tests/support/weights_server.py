"""An HTTP server on 127.0.0.1 that serves weights files the tests make, and a Hugging Face hub's resolve API.

    server.files["/w.safetensors"] = data     # GET /w.safetensors
    server.cut.add("/w.safetensors")          # announce the whole length, send half, close the connection
    server.hub[("org/repo", "model.safetensors")] = data   # HEAD/GET /org/repo/resolve/<rev>/model.safetensors
    server.hits["/w.safetensors"]             # GET requests answered with a body
    server.redirects["/old"] = "https://..."  # 302 to that location
    server.endless.add("/w.bin")              # no Content-Length: the file's bytes over and over, until cut off
    server.expire["/a.mp4"] = 1               # the first GET answered, every later one 404 (a URL that expired)

The query string of a request is ignored (presigned-style URLs), and a `Range: bytes=a-b` request gets a 206
with those bytes (fsspec's HTTP reader asks for blocks).
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import threading
import time

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class WeightsServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hub: dict[tuple[str, str], bytes] = {}
        self.hub_etag: dict[tuple[str, str], str] = {}  # overrides the sha256 etag (a lying hub)
        self.cut: set[str] = set()
        self.delay_s = 0.0  # per 64 KiB chunk: keeps a download in flight while other processes start
        self.hits: collections.Counter[str] = collections.Counter()
        self.redirects: dict[str, str] = {}
        self.endless: set[str] = set()
        self.expire: dict[str, int] = {}  # path → GET requests answered before every later one gets a 404
        self.requests: list[str] = []  # every request line's path, query string included
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                server.requests.append(self.path)
                path = self.path.split("?", 1)[0]
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data, headers = server._lookup(path)
                if data is not None and path in server.endless:
                    self._endless(data, body)
                    return
                if body and path in server.expire:
                    server.expire[path] -= 1
                    if server.expire[path] < 0:
                        data = None
                if data is None:
                    self.send_response(404)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                span = self._range(len(data))
                if span is not None:
                    data = data[span[0]:span[1] + 1]
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {span[0]}-{span[1]}/{span[2]}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not body:
                    return
                server.hits[path] += 1
                if path in server.cut:
                    self.wfile.write(data[:len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for start in range(0, len(data), 1 << 16):
                    self.wfile.write(data[start:start + (1 << 16)])
                    time.sleep(server.delay_s)

            def _range(self, size: int) -> tuple[int, int, int] | None:
                header = self.headers.get("Range", "")
                if not header.startswith("bytes=") or "," in header:
                    return None
                first, _, last = header.removeprefix("bytes=").partition("-")
                start = int(first) if first else max(size - int(last), 0)
                end = min(int(last) if first and last else size - 1, size - 1)
                return (start, end, size) if start <= end else None

            def _endless(self, data: bytes, body: bool):
                self.send_response(200)
                self.end_headers()
                if not body:
                    return
                server.hits[self.path.split("?", 1)[0]] += 1
                try:
                    while True:
                        self.wfile.write(data)
                        time.sleep(server.delay_s)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _lookup(self, path: str) -> tuple[bytes | None, dict[str, str]]:
        if "/resolve/" in path:
            repo, _, rest = path.strip("/").partition("/resolve/")
            _, _, filename = rest.partition("/")
            key = (repo, filename)
            if key not in self.hub:
                return None, {"X-Error-Code": "EntryNotFound"}
            data = self.hub[key]
            etag = self.hub_etag.get(key, hashlib.sha256(data).hexdigest())
            return data, {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'}
        return self.files.get(path), {}

    def __enter__(self) -> WeightsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
