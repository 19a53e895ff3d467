"""A real HTTP server on 127.0.0.1 serving a release folder, with HTTP Range support and
injectable faults (status 500, a connection dropped mid-file, corrupted bytes, the right file
followed by junk, a replaced body)."""
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


class LocalServer:
    """An HTTP server on a free port of 127.0.0.1, serving from a thread inside `with`."""

    def _listen(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class ReleaseServer(LocalServer):
    def __init__(self, root):
        self.root = Path(root).resolve()
        # url path -> list of "500" | "drop" | "corrupt" | "junk" | bytes (served instead of the
        # file), consumed in order
        self.faults = {}
        self.requests = []    # (url path, Range header or None)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = unquote(self.path.split("?")[0])
                server.requests.append((path, self.headers.get("Range")))
                target = (server.root / path.lstrip("/")).resolve()
                if server.root not in target.parents or not target.is_file():
                    self.send_error(404)
                    return
                faults = server.faults.get(path) or []
                fault = faults.pop(0) if faults else None
                if fault == "500":
                    self.send_error(500)
                    return
                data = fault if isinstance(fault, bytes) else target.read_bytes()
                if fault == "junk":   # the right file, then 8 MB more
                    data += bytes(8 << 20)
                if fault == "corrupt":
                    data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes="):-1])
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "drop":   # promise everything, send half, hang up
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self._listen(Handler)
