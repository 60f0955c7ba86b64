"""Connection hygiene uvicorn does not give: a time limit on request headers, and a lingering close.

`cds serve` runs uvicorn with `GuardedHttpProtocol` (its httptools protocol plus these two):

- **Header timeout** (`CDS_HEADER_TIMEOUT_SECONDS`, 10 s): a connection must send a request's whole
  header block within this time of connecting (or of the request's first byte, on a kept-alive
  connection). Otherwise it gets a 408 and is closed: a client that opens connections and dribbles
  header bytes can no longer hold them open (uvicorn alone kept such a connection for minutes).
- **Lingering close**: when the server closes a connection whose request body has not all arrived (a
  413 answered from Content-Length, a 408 for a slow body, a client that asked for `Connection:
  close`), closing at once would make the kernel answer the bytes still coming with a TCP reset, and
  the reset destroys the answer before a client that writes its whole body first (Python's
  http.client, urllib, requests) reads it. Instead the write side is shut (the answer and a FIN go
  out), the rest of the body is read and dropped, and the connection is closed when the client closes
  its side, after LINGER_IDLE_SECONDS without data, or after LINGER_MAX_SECONDS in all (nginx's
  `lingering_close` does the same).

The body read timeout is enforced in the app (cds.api.middleware.BodyLimit), where it can answer a
readable 408 OperationOutcome.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Final, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cds.logs import log_event

logger = logging.getLogger("cds.api")

LINGER_IDLE_SECONDS: Final = 2.0
LINGER_MAX_SECONDS: Final = 30.0
HEADER_TIMEOUT_BODY: Final = (
    b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"timeout",'
    b'"diagnostics":"the request headers did not arrive in time (CDS_HEADER_TIMEOUT_SECONDS)"}]}'
)
HEADER_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"cache-control: no-store\r\nx-content-type-options: nosniff\r\n"
    b"content-length: " + str(len(HEADER_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + HEADER_TIMEOUT_BODY
)


@functools.cache
def header_timeout_seconds() -> float:
    """This worker's CDS_HEADER_TIMEOUT_SECONDS (workers get the settings as CDS_* variables)."""
    from cds.settings import Settings

    return Settings().header_timeout_seconds


class _LingeringTransport:
    """The connection's transport as uvicorn sees it: `close()` lingers while a request body is unread."""

    def __init__(self, transport: asyncio.Transport, protocol: GuardedHttpProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        if self._protocol.lingering or self._transport.is_closing():
            return
        if self._protocol.body_unread() and self._transport.can_write_eof():
            self._protocol.linger()
        else:
            self._transport.close()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a lingering close (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lingering = False
        self._raw: asyncio.Transport | None = None
        self._header_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._linger_until = 0.0

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        super().connection_made(cast(asyncio.Transport, _LingeringTransport(transport, self)))
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._restart_linger_timer()  # the rest of an unread body: dropped
            return
        super().data_received(data)

    def eof_received(self) -> None:
        if self.lingering:
            return  # the client is done sending; returning None lets asyncio close the transport
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # -- httptools parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:
            self._arm_header_timer()  # the next request on a kept-alive connection

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    # -- the guards

    def body_unread(self) -> bool:
        """Is the current request's body still arriving?"""
        return self.cycle is not None and bool(self.cycle.more_body)

    def linger(self) -> None:
        """Shut the write side (the answer goes out, then a FIN) and drop what still arrives, bounded."""
        assert self._raw is not None
        self.lingering = True
        self._raw.write_eof()
        self._raw.resume_reading()
        self._linger_until = self.loop.time() + LINGER_MAX_SECONDS
        self._restart_linger_timer()

    def _restart_linger_timer(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        delay = min(LINGER_IDLE_SECONDS, max(0.0, self._linger_until - self.loop.time()))
        self._linger_timer = self.loop.call_later(delay, self._close_now)

    def _close_now(self) -> None:
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(header_timeout_seconds(), self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self._raw is None or self._raw.is_closing() or self.lingering:
            return
        log_event(logger, "connection.header_timeout", level=logging.WARNING, status=408)
        self._raw.write(HEADER_TIMEOUT_RESPONSE)
        self._raw.close()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._linger_timer = None
