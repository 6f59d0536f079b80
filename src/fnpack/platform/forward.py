"""HTTP/1.1 to a worker over its Unix socket: one request at a time per kept-alive connection.

Hand-written on asyncio streams with httptools' response parser instead of an HTTP
client library: forwarding is on every request's path, and a general-purpose
client (connection-pool bookkeeping, timeouts objects, header models) costs more
than the worker's own work on a small model.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
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


class _Parser:
    """httptools callbacks collecting one final response.

    Interim 1xx responses (RFC 9110 15.2) are read and dropped: taking one for the answer would
    leave the real answer on the connection, for the next request to receive. Any byte after the
    final response is a protocol error: the connection is then not reused.
    """

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.complete = False
        self.keep_alive = False

    def on_message_begin(self) -> None:
        if self.complete:  # a second message after the final one: never reuse this connection
            self.keep_alive = False
            return
        self.headers, self.chunks = [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.complete:  # a stray message after the answer (on_message_begin retired the connection)
            return
        self.status = self.parser.get_status_code()
        # Only valid here: httptools answers False once the message is complete, which
        # would close (and reopen) the worker connection on every request.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # interim: the final response follows on the same connection
            return
        self.complete = True


class Connection:
    """One kept-alive HTTP/1.1 connection to a worker's Unix socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str) -> Connection:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        return cls(reader, writer)

    def peer_pid(self) -> int:
        """The pid of the process at the other end (SO_PEERCRED), 0 if unknown."""
        sock = self.writer.get_extra_info("socket")
        try:
            pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        except (OSError, AttributeError, struct.error):
            return 0
        return pid

    @property
    def usable(self) -> bool:
        # Unread bytes on an idle connection answer no request of ours: never send another on it.
        return not self.writer.is_closing() and not self.reader.at_eof() and \
            not self.reader._buffer  # type: ignore[attr-defined]

    async def request(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes) -> Response:
        if _UNSAFE_TARGET.search(target):  # a space, CR or LF would end the request line early
            raise ValueError(f"refusing to send the request target {target[:100]!r}")
        head = [method, b" ", target, b" HTTP/1.1\r\nhost: worker\r\ncontent-length: ",
                str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.writer.write(b"".join(head) + body)
        parsed = _Parser()
        parser = parsed.parser
        received = False
        while not parsed.complete:
            try:
                data = await self.reader.read(1 << 16)
            except ConnectionError as exc:
                raise UpstreamClosed(f"connection reset ({exc})", received) from None
            if not data:
                raise UpstreamClosed("connection closed", received)
            received = True
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise UpstreamClosed(f"malformed response ({exc})", True) from None
        # Bytes already buffered past the answer belong to no request: the connection is out of step.
        keep_alive = parsed.keep_alive and not self.reader._buffer  # type: ignore[attr-defined]
        return Response(parsed.status, parsed.headers, b"".join(parsed.chunks), keep_alive)

    def close(self) -> None:
        self.writer.close()
