"""The HTTP server of every fnpack server: uvicorn's httptools protocol, with bounds on what a client holds.

As it comes, uvicorn keeps a connection that sends nothing forever, buffers a request head of
any size (httptools collects each header whole before handing it over), and past the file
descriptor limit every accept fails, for real clients too. Here:

- a request head must be complete FNPACK_HEADER_TIMEOUT seconds (default 10) after the
  connection opens, or after its first byte on a kept-alive connection; else the connection closes;
- a head over MAX_HEAD bytes is answered 431 and the connection closes; at most one read past the
  cap is ever buffered;
- a body must keep coming: at least BODY_PROGRESS bytes every FNPACK_BODY_TIMEOUT seconds (default
  10) until it is complete, else the connection closes (a body trickled a byte at a time would
  hold the connection, and the request, for ever); likewise a client must keep reading: an answer
  it has not taken for that long closes the connection (pipelined requests it never reads would
  keep the connection busy, never evicted);
- over FNPACK_MAX_CONNECTIONS open connections (default: from RLIMIT_NOFILE, whose soft limit is
  raised to the hard one first) the connection idle longest (no request in progress) is closed;
  a new connection is refused only when every other one is busy.

Per request this is a few attribute updates: each connection has one timer, armed again only
when it fires during a head.
"""

from __future__ import annotations

import asyncio
import os
import resource
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from fnpack.errors import StartError

MAX_HEAD = 64 * 1024  # request line and headers, in bytes
BODY_PROGRESS = 64 * 1024  # bytes of body a client must send per body timeout (6.4 kB/s at the default)
LINGER_S = 2.0  # how long a refused connection is read (and dropped) after its answer
_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 36\r\nconnection: close\r\n\r\nRequest header fields are too large.")


@dataclass(frozen=True)
class Limits:
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 1 << 16
    max_head: int = MAX_HEAD


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one (the default soft 1024 is far below
    what a server needs); the soft limit then in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. macOS refuses RLIM_INFINITY for the soft limit
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def limits_from_env(nofile: int, env: Mapping[str, str] = os.environ) -> Limits:
    # Half the descriptors: each client connection of the gateway may hold a worker connection
    # too, and files, pipes and the registry need some. Below that, accept never fails on EMFILE.
    default_max = max(16, (nofile - 64) // 2)
    return Limits(header_timeout=_env_number(env, "FNPACK_HEADER_TIMEOUT", 10.0, float),
                  body_timeout=_env_number(env, "FNPACK_BODY_TIMEOUT", 10.0, float),
                  max_connections=_env_number(env, "FNPACK_MAX_CONNECTIONS", default_max, int))


def _env_number(env: Mapping[str, str], name: str, default: Any, kind: type) -> Any:
    text = env.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise StartError(f"{name}={text!r} is not a positive number", hint=f"unset {name} for its default")
    return value


# Per server: its connections with no request in progress, longest idle first (a dict keeps
# insertion order: a connection that finishes a request goes to the end).
_IDLE: weakref.WeakKeyDictionary[ServerState, dict[BoundedHttpProtocol, None]] = weakref.WeakKeyDictionary()


class BoundedHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[Limits] = Limits()

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._idle = _IDLE.setdefault(server_state, {})
        self._head_since: float | None = None  # when the head being read began; None: none is
        self._head_bytes = 0  # bytes received since then
        self._heads = 0  # heads read whole on this connection
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_bytes = -1  # body bytes since the last check; -1: no body is being read
        self._body_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle[self] = None
        self._head_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._check_head)
        if len(self.connections) > self.limits.max_connections:
            # The longest idle goes; when that is this new connection, every other one is busy.
            next(iter(self._idle))._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._idle.pop(self, None)
        for timer in (self._head_timer, self._body_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = self._write_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_since is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head:
                return self._receive_past_cap(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_since is None:  # a request on a kept-alive connection: its head is timed from here
            self._head_since = self.loop.time()
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.limits.header_timeout, self._check_head)

    def on_headers_complete(self) -> None:
        self._head_since = None
        self._head_bytes = 0
        self._heads += 1
        self._idle.pop(self, None)  # busy until its response is complete
        self.start_request()
        self._body_bytes = 0
        if self._body_timer is not None:  # one left by the request before: each body gets its full time
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._check_body)

    def start_request(self) -> None:
        """A request head is complete: hand the request to its handler (uvicorn's: the ASGI app)."""
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_bytes = -1
        super().on_message_complete()

    def pause_writing(self) -> None:  # the client does not read what it is sent
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.body_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _check_body(self) -> None:
        self._body_timer = None
        if self._body_bytes < 0 or self.transport.is_closing():
            return  # complete: the next head arms it again
        if self._body_bytes < BODY_PROGRESS and not self.flow.read_paused:  # paused: the app is the slow one
            return self._close()
        self._body_bytes = 0
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._check_body)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle again, unless closing or a pipelined request has started.
        if self.cycle.response_complete and not self.transport.is_closing():
            self._idle[self] = None

    def _check_head(self) -> None:
        self._head_timer = None  # none while no head is read: on_message_begin arms it again
        if self._head_since is None or self.transport.is_closing():
            return
        left = self._head_since + self.limits.header_timeout - self.loop.time()
        if left > 0:
            self._head_timer = self.loop.call_later(left, self._check_head)
        else:
            self._close()

    def _receive_past_cap(self, data: bytes) -> None:
        # Parse up to the cap only: a head that is not complete there is too large, whatever follows.
        fits = len(data) - (self._head_bytes - self.limits.max_head)
        heads = self._heads
        super().data_received(data[:fits])
        if self.transport.is_closing():  # e.g. a 400 for a malformed request
            return
        if self._heads == heads:
            return self._refuse_head()
        super().data_received(data[fits:])

    def _refuse_head(self) -> None:
        self._idle.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an answer to an earlier request is being written: no room for one more
            return
        self.transport.write(_431)
        # Closing with unread bytes sends a reset, which can destroy the answer before the client
        # reads it; the client may well be still sending. So: stop writing, drop what comes, then close.
        self.transport.set_protocol(_Drain(self))
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def _close(self) -> None:
        self._idle.pop(self, None)  # at once: the next eviction must pick another connection
        self.transport.close()


class _Drain(asyncio.Protocol):
    """What a refused connection becomes: reads and drops for LINGER_S, or until the client closes."""

    def __init__(self, owner: BoundedHttpProtocol) -> None:
        self.owner = owner
        self.timer = owner.loop.call_later(LINGER_S, owner.transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.owner.connections.discard(self.owner)  # counted until now: it held a descriptor


def make_config(app: Any, protocol: type[BoundedHttpProtocol] = BoundedHttpProtocol, **options: Any) -> uvicorn.Config:
    """The uvicorn Config of the project's servers; `protocol` (BoundedHttpProtocol or a subclass)
    speaks HTTP; `options` add to or override uvicorn's settings.

    No access log, proxy-headers middleware or Server/Date headers: the functions read none of
    them, and each costs work on every request.
    """
    limits = limits_from_env(raise_nofile_limit())
    # A class per config: the limits are read once, at start, not per connection.
    protocol = type(protocol.__name__, (protocol,), {"limits": limits})
    settings: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "on",
                                "proxy_headers": False, "server_header": False, "date_header": False,
                                "http": protocol, "loop": "auto", **options}
    return uvicorn.Config(app, **settings)
