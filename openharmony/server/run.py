"""Running the app on uvicorn as `openharmony serve` does: the listening socket, the connection
timeouts, and what the signals do.

* The socket is bound by `listen` before uvicorn starts: a busy port is one error line
  (an `OpenHarmonyError`), not uvicorn's three and a false "serving" line before them.
* Timeouts (slowloris): a connection must send a request's complete headers within
  `HEADER_TIMEOUT_SECONDS` of opening (or of its previous response), else it is closed;
  uvicorn has no such timeout, so `TimedH11Protocol` adds it. An idle keep-alive connection
  is closed after `KEEP_ALIVE_SECONDS`. Request bodies are bounded by size (limits.py).
* SIGTERM or Ctrl-C: the engine ends every turn at once (the streams end with an error event
  saying so, then `[DONE]`), the connections close, the generation thread and the render
  workers stop; open connections get `GRACE_SECONDS` before they are cut. A second Ctrl-C
  stops waiting for them. `serve` then returns the signal, for the command's exit status.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from typing import Callable

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import OpenHarmonyError

HEADER_TIMEOUT_SECONDS = 10
KEEP_ALIVE_SECONDS = 5
GRACE_SECONDS = 5


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port); OpenHarmonyError when it cannot be (a busy port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as error:
        raise OpenHarmonyError(f"cannot listen on {host}:{port}: "
                               f"{error.strerror or error}") from None
    return sock


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection that has not sent a request's
    complete headers within the header timeout."""

    header_timeout = HEADER_TIMEOUT_SECONDS

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._header_timer is not None:
            self._header_timer.cancel()  # the headers are in
            self._header_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def connection_lost(self, exc) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


class Server(uvicorn.Server):
    """uvicorn's server: `on_signal` runs at the first SIGTERM or Ctrl-C; `on_ready` once it
    serves; the app's shutdown runs even after a forced exit; signals are not re-raised at
    the end (`signal` says which one stopped it)."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None] | None = None,
                 on_ready: Callable[[], None] | None = None):
        super().__init__(config)
        self.on_signal, self.on_ready = on_signal, on_ready
        self.signal: int | None = None

    def handle_exit(self, sig: int, frame) -> None:
        first = self.signal is None
        self.signal = self.signal or sig
        super().handle_exit(sig, frame)
        if first and self.on_signal is not None:
            self.on_signal()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()

    async def shutdown(self, sockets=None) -> None:
        await super().shutdown(sockets=sockets)
        if self.force_exit:  # uvicorn skips the app's shutdown then: workers must still end
            await self.lifespan.shutdown()

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def uvicorn_server(app, *, header_timeout: float = HEADER_TIMEOUT_SECONDS,
                   keep_alive: float = KEEP_ALIVE_SECONDS, grace: float = GRACE_SECONDS,
                   on_signal: Callable[[], None] | None = None,
                   on_ready: Callable[[], None] | None = None) -> Server:
    """The server for `app` with these timeouts; uvicorn's own logging at warnings only."""
    protocol = type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": header_timeout})
    config = uvicorn.Config(app, http=protocol, timeout_keep_alive=keep_alive,
                            timeout_graceful_shutdown=grace, log_level="warning")
    return Server(config, on_signal=on_signal, on_ready=on_ready)


def serve(app, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> int | None:
    """Serve `app` (from `create_app`) on `sock` until SIGTERM or Ctrl-C; the signal that
    stopped it."""
    server = uvicorn_server(app, on_signal=app.shut_down, on_ready=on_ready)
    server.run(sockets=[sock])
    return server.signal
