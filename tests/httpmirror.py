"""A tiny HTTP mirror on 127.0.0.1 for download and onboarding tests.

Each route serves one payload with Range support and can misbehave on purpose: answer an
error, ignore Range, cut the body off, stall, answer slowly, or hold the body at a byte
offset until the test releases it (a download in progress that a test can kill at leisure).
Every request is recorded as (path, Range header or None).
"""

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional


@dataclass
class Route:
    payload: bytes = b""
    status: Optional[int] = None  # answer this error instead of the file
    ranges: bool = True  # honour Range requests
    drops: int = 0  # this many responses are cut off ...
    drop_after: int = 0  # ... after this many body bytes
    stall: float = 0.0  # sleep this long after drop_after bytes (a hung server), then close
    delay: float = 0.0  # sleep before sending headers (a slow server)
    bad_range: bool = False  # answer a Range request with a Content-Range that starts at 0
    hold_at: Optional[int] = None  # send the payload up to this offset, then wait for Mirror.release


class Mirror:
    def __init__(self):
        self.routes = {}
        self.requests = []
        self.stop = threading.Event()
        self.release = threading.Event()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                mirror.requests.append((self.path, self.headers.get("Range")))
                route = mirror.routes.get(self.path)
                if route is None or route.status:
                    self.send_error(route.status if route else 404)
                    return
                if route.delay:
                    mirror.stop.wait(route.delay)
                data, start = route.payload, 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match and route.ranges:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    first = 0 if route.bad_range else start
                    self.send_header("Content-Range", f"bytes {first}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self._body(route, body, start)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (or was killed): that is the point of some tests

            def _body(self, route, body, start):
                if route.drops > 0:
                    route.drops -= 1
                    self.wfile.write(body[: route.drop_after])
                    self.wfile.flush()
                    if route.stall:
                        mirror.stop.wait(route.stall)
                    self.close_connection = True
                    return
                if route.hold_at is not None and start < route.hold_at:
                    self.wfile.write(body[: route.hold_at - start])
                    self.wfile.flush()
                    mirror.release.wait(120)
                    body = body[route.hold_at - start:]
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def close(self):
        self.stop.set()
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
