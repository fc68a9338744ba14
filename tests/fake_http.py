"""A real HTTP server on 127.0.0.1 (a thread in the test process) standing in for Label Studio or an
image host: ``routes(path, headers) -> (status, headers, body)``, where body is bytes or a callable
that streams into the socket; every request is recorded in ``seen``."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHTTPServer:
    """A tiny HTTP server standing in for Label Studio or an image host; records what it received."""

    def __init__(self, routes):
        self.routes, self.seen = routes, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.seen.append((self.path, self.headers.get("Authorization")))
                status, headers, body = owner.routes(self.path, self.headers)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if isinstance(body, bytes):
                    self.wfile.write(body)
                elif callable(body):  # streams until the client hangs up
                    try:
                        body(self.wfile)
                    except (BrokenPipeError, ConnectionResetError):
                        pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                owner.seen.append((self.path, json.loads(self.rfile.read(length) or b"{}")))
                status, headers, body = owner.routes(self.path, self.headers)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
