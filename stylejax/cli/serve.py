"""``stylize.py ... --serve [PORT]``: watch a run in a browser.

A page at ``http://127.0.0.1:PORT/`` shows the latest image, the loss curve (losses.png) and
the progress (epoch k of N, loss, it/s). It asks for ``state.json`` every second and, when the
state has moved on, swaps the images' ``src`` (a ``?v=`` query defeats the browser's cache), so
it updates without reloading. After the run the page shows the final image and "done" until
Ctrl-C, which then ends the command with exit status 0 and its files intact.

Four fixed routes, each answered from memory: the page (package data, ``serve_page.html``),
the state as JSON, the latest image as PNG and the loss curve as PNG. No URL ever names a
file on disk, so there is no path to traverse. The server binds 127.0.0.1 unless
``--serve-host`` says otherwise; bound to a loopback address it answers only requests whose
``Host`` is a loopback name (a web page elsewhere cannot read it by DNS rebinding).

Why the standard library's `http.server.ThreadingHTTPServer`: it is maintained with Python
itself and adds no dependency, and what we need of a server is four GET routes for one local
viewer. A framework (aiohttp, Flask, FastAPI with uvicorn) would bring an event loop or a WSGI
stack, and a dependency for everyone or an optional extra to install, to do the same; Python's
documentation warns that ``http.server`` is not for production, and it is not used as such:
one user, on localhost, for the length of a run. The server runs in a daemon thread of the
command's own process; the epoch loop hands it each epoch's image and curve (`Watch.epoch`),
under a lock.
"""

from __future__ import annotations

import errno
import json
import math
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import urlsplit

import stylejax.images as imageio
from stylejax.errors import StylejaxError

DEFAULT_PORT = 8765
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _finite(x):
    """``x`` as a float, or None where JSON has no number for it (NaN, inf)."""
    return float(x) if x is not None and math.isfinite(x) else None


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        watch = self.server.watch
        try:
            host = urlsplit("//" + self.headers.get("Host", "")).hostname
            path = urlsplit(self.path).path
        except ValueError:  # e.g. an unclosed "[" of an IPv6 address
            self.send_error(400)
            return
        if watch.loopback and host not in LOOPBACK_NAMES:
            self.send_error(403, "Open this page by its loopback address.")
            return
        route = watch.route(path)
        if route is None:
            self.send_error(404)
            return
        kind, body = route
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # the progress bar has the terminal
        pass


class _Server(ThreadingHTTPServer):
    def server_bind(self):
        # HTTPServer's own looks up the host's DNS name, which can hang on a machine offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        # A browser that closed the page mid-answer is no news; anything else is printed.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Watch:
    """The page's server and what it shows. Binds ``host``:``port`` at once (0: a free port)
    and serves from a daemon thread until `close`; a port that cannot be bound raises
    StylejaxError with one sentence."""

    def __init__(self, port: int = DEFAULT_PORT, host: str = "127.0.0.1"):
        self._lock = threading.Lock()
        self._state = {"status": "starting", "version": 0, "epoch": 0, "total": 0,
                       "loss": None, "rate": None, "size": None, "scale": 1, "scales": 1,
                       "losses": []}
        self._image = self._curve = b""
        self._page = resources.files("stylejax.cli").joinpath("serve_page.html").read_bytes()
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as e:
            raise StylejaxError(_bind_error(e, host, port)) from None
        self._server.watch = self
        self.loopback = host in LOOPBACK_NAMES or host.startswith("127.")
        self.url = f"http://{host}:{self._server.server_port}/"
        threading.Thread(target=self._server.serve_forever, name="stylejax-serve",
                         daemon=True).start()

    def route(self, path: str):
        """``(content type, body)`` for a GET of ``path``, or None (404)."""
        with self._lock:
            if path in ("/", "/index.html"):
                return "text/html; charset=utf-8", self._page
            if path == "/state.json":
                return "application/json", json.dumps(self._state).encode()
            if path == "/image.png" and self._image:
                return "image/png", self._image
            if path == "/losses.png" and self._curve:
                return "image/png", self._curve
        return None

    def _update(self, image=None, curve=None, **state):
        with self._lock:
            self._state.update(state, version=self._state["version"] + 1)
            self._image = self._image if image is None else image
            self._curve = self._curve if curve is None else curve

    def start(self, epoch: int, total: int, losses, curve: bytes) -> None:
        """The loop begins at ``epoch`` (> 0 when resumed) of ``total``."""
        self._update(curve=curve, status="running", epoch=epoch, total=total,
                     losses=[_finite(v) for v in losses])

    def epoch(self, step, rate: float, losses, curve: bytes) -> None:
        """After each epoch: ``step`` a `stylejax.run.Epoch`, ``rate`` iterations a second,
        ``losses`` every epoch's so far and ``curve`` losses.png's bytes."""
        self._update(image=imageio.encode_png(step.image), curve=curve, epoch=step.epoch,
                     loss=_finite(step.loss), rate=rate, size=list(step.size),
                     scale=step.scale + 1, scales=step.scales,
                     losses=[_finite(v) for v in losses])

    def finish(self, image) -> None:
        """The run is done; ``image`` is its final image."""
        self._update(image=imageio.encode_png(image), status="done")

    def linger(self) -> None:
        """Serves on until Ctrl-C or SIGTERM, which return normally."""
        print(f"done: the result is at {self.url}; serving until Ctrl-C", file=sys.stderr,
              flush=True)
        # Whatever this process inherited (a shell's background jobs ignore SIGINT), both
        # signals end the wait.
        old = {s: signal.signal(s, signal.default_int_handler)
               for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _bind_error(e: OSError, host: str, port: int) -> str:
    if e.errno == errno.EADDRINUSE:
        return (f"Port {port} on {host} is in use: choose another with --serve PORT "
                "(0 picks a free one).")
    if e.errno == errno.EACCES:
        return (f"No permission to serve on port {port} (ports below 1024 need root): "
                "choose one from 1024 to 65535 with --serve PORT.")
    return (f"Cannot serve on {host}:{port} ({e.strerror or e}): check --serve-host and "
            "--serve PORT.")
