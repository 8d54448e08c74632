"""An HTTP server on 127.0.0.1 that serves weights files the tests make, and a Hugging Face hub's resolve API.

    server.files["/w.safetensors"] = data     # GET /w.safetensors
    server.cut.add("/w.safetensors")          # announce the whole length, send half, close the connection
    server.hub[("org/repo", "model.safetensors")] = data   # HEAD/GET /org/repo/resolve/<rev>/model.safetensors
    server.hits["/w.safetensors"]             # GET requests answered with a body
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
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                path = self.path.split("?", 1)[0]
                data, headers = server._lookup(path)
                if data is None:
                    self.send_response(404)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
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
