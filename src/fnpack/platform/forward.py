"""HTTP/1.1 to a worker over its Unix socket: one request at a time per kept-alive connection.

Hand-written as an asyncio protocol with httptools' response parser instead of an HTTP
client library: forwarding is on every request's path, and a general-purpose
client (connection-pool bookkeeping, timeouts objects, header models) costs more
than the worker's own work on a small model.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's: never forwarded either
# way, nor any header the `Connection` field names; nor `host` and `content-length`, which each hop
# sets for itself. The gateway reads the whole body before
# forwarding, so it frames the message itself (content-length) and answers `Expect` itself: a
# forwarded `Expect: 100-continue` makes the worker send an interim `100 Continue`.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
                        b"proxy-connection", b"proxy-authorization", b"proxy-authenticate", b"content-length",
                        b"host", b"expect"})


def end_to_end(headers: list[tuple[bytes, bytes]], skip: frozenset[bytes] = HOP_BY_HOP) -> list[tuple[bytes, bytes]]:
    """The headers that travel on to the next hop: none in `skip` (the hop-by-hop ones and more) and
    none the `Connection` field names. Names are lower-case (ASGI's and this module's parser's)."""
    for name, value in headers:
        if name == b"connection":
            skip = skip | {token.strip().lower() for token in value.split(b",")}
    return [(name, value) for name, value in headers if name not in skip]


_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")


class UpstreamClosed(Exception):
    """The worker closed the connection before a full response. `answered` is False when no
    byte of a response had arrived."""

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True


Done = Callable[[Response | UpstreamClosed], None]


class Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection to a worker's Unix socket, one exchange at a time.

    A protocol, not streams: `send` writes the request and the answer is parsed in the
    transport's callbacks, so a request costs no task and no stream buffer on the gateway's side.
    Interim 1xx responses (RFC 9110 15.2) are read and dropped: taking one for the answer would
    leave the real answer on the connection, for the next request to receive. Any byte after the
    final response, or on an idle connection, is a protocol error: the connection is then not reused.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._done: Done | None = None  # the exchange in progress: called once with its outcome
        self._stray = False  # bytes that answer no request arrived: never send another on this connection
        self._eof = False
        self._received = False
        self._complete = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.keep_alive = False

    @classmethod
    async def open(cls, path: str) -> Connection:
        _, conn = await asyncio.get_running_loop().create_unix_connection(cls, path)
        return conn

    def peer_pid(self) -> int:
        """The pid of the process at the other end (SO_PEERCRED), 0 if unknown."""
        sock = self.transport.get_extra_info("socket") if self.transport else None
        try:
            pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except (OSError, AttributeError, struct.error):
            return 0
        return pid

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and not self._eof and not self._stray

    def send(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes, done: Done) -> None:
        """Write one request; `done` gets the final Response, or UpstreamClosed, from the loop's callbacks."""
        if _UNSAFE_TARGET.search(target):  # a space, CR or LF would end the request line early
            raise ValueError(f"refusing to send the request target {target[:100]!r}")
        head = [method, b" ", target, b" HTTP/1.1\r\nhost: worker\r\ncontent-length: ",
                str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self._done, self._received, self._complete = done, False, False
        self.transport.write(b"".join(head) + body)  # type: ignore[union-attr]

    async def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> Response:
        """`send`, awaited."""
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()

        def done(result: Response | UpstreamClosed) -> None:
            if not answer.done():
                answer.set_exception(result) if isinstance(result, UpstreamClosed) else answer.set_result(result)

        self.send(method, target, headers, body, done)
        return await answer

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abandon(self) -> None:
        """Give up the exchange in progress without an outcome, and close."""
        self._done = None
        self._stray = True
        self.close()

    # --- the transport's callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._done is None:  # nothing was asked
            self._stray = True
            self.close()
            return
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            return self._finish(UpstreamClosed(f"malformed response ({exc})", True))
        if self._complete:  # only now: bytes after the answer in the same read retire the connection first
            self._finish(Response(self.status, self.headers, b"".join(self.chunks), self.keep_alive))

    def eof_received(self) -> bool:
        self._eof = True
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        if self._done is not None:
            why = f"connection reset ({exc})" if exc else "connection closed"
            self._finish(UpstreamClosed(why, self._received))

    def _finish(self, result: Response | UpstreamClosed) -> None:
        done, self._done = self._done, None
        if isinstance(result, UpstreamClosed):
            self._stray = True  # out of step for good
            self.close()
        if done is not None:
            done(result)

    # --- httptools' callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second message after the final one: never reuse this connection
            self.keep_alive = False
            self._stray = True
            return
        self.headers, self.chunks = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._complete:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._complete:  # a stray message after the answer (on_message_begin retired the connection)
            return
        self.status = self.parser.get_status_code()
        # Only valid here: httptools answers False once the message is complete, which
        # would close (and reopen) the worker connection on every request.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if not self._complete:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self._complete or 100 <= self.status < 200:  # interim: the final response follows on the same connection
            return
        self._complete = True
