"""An HTTP server on 127.0.0.1 serving a folder's files with byte ranges (as object stores and CDNs do), for
tests of http(s) inputs; it answers 404 for a missing file and stops with the test.

    with FilesServer(folder) as server:
        server.url("clips/a.mp4")      # http://127.0.0.1:PORT/clips/a.mp4
        server.requests                # how many requests it answered
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class FilesServer:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        self.requests = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def __enter__(self) -> FilesServer:
        threading.Thread(target=self._server.serve_forever, name="files-server", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(server: FilesServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _serve(self, body: bool) -> None:
            server.requests += 1
            path = (server.folder / self.path.split("?", 1)[0].lstrip("/")).resolve()
            if server.folder not in path.parents or not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            match = _RANGE.match(self.headers.get("Range", ""))
            status, start, end = 200, 0, len(data)
            if match and (match[1] or match[2]):
                if match[1]:
                    start, end = int(match[1]), min(len(data), int(match[2]) + 1 if match[2] else len(data))
                else:
                    start = max(0, len(data) - int(match[2]))
                status = 206
            self.send_response(status)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if body:
                self.wfile.write(data[start:end])

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

    return Handler
