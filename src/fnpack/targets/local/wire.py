"""HTTP/1.1 to the local platform's gateway on the standard library's http.client.

The CLI talks to the platform in one or two requests per command; httpx costs more to import and to set
up (its SSL context) than such a command takes. One keep-alive connection per thread (`fnpack invoke
--batch` calls from a thread pool); a kept connection the gateway has closed meanwhile is dropped before
it is used, so a request is only ever sent once. Failures are `WireError`s: `connect` says whether
anything was sent, which decides whether a caller may know the outcome.

`Transport`: the seam for tests, a function that answers a `Request` in process.
"""

from __future__ import annotations

import codecs
import json as jsonlib
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import urlencode, urlsplit

_BLOCK = 1 << 20  # bytes per write of an uploaded file
DEFAULT = -1.0  # a request's timeout when it names none: the client's (None waits forever)


@dataclass
class Request:
    method: str
    path: str  # with its query
    headers: dict[str, str]
    body: bytes | BinaryIO | None = None


@dataclass
class Response:
    status_code: int
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # names in lowercase
    reason_phrase: str = ""
    method: str = "GET"
    path: str = "/"

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)  # ValueError when it is not JSON


Transport = Callable[[Request], Response]


class WireError(Exception):
    """A request that failed: `connect` when nothing was sent (no connection), `timeout` when no answer came."""

    def __init__(self, message: str, connect: bool = False, timeout: bool = False) -> None:
        super().__init__(message)
        self.connect = connect
        self.timeout = timeout


class Client:
    def __init__(self, base_url: str, timeout: float, connect_timeout: float = 10.0,
                 transport: Transport | None = None) -> None:
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.transport = transport
        self._local = threading.local()
        self._all: list[Any] = []  # every thread's connection, closed by close()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()

    def request(self, method: str, path: str, *, headers: dict[str, str] | None = None, json: Any = None,
                content: bytes | BinaryIO | None = None, params: dict[str, str] | None = None,
                timeout: float | None = DEFAULT) -> Response:
        """Send one request and read the whole answer."""
        with self.stream(method, path, headers=headers, json=json, content=content, params=params,
                         timeout=timeout) as (response, chunks):
            response.content = b"".join(chunks)
        return response

    @contextmanager
    def stream(self, method: str, path: str, *, headers: dict[str, str] | None = None, json: Any = None,
               content: bytes | BinaryIO | None = None, params: dict[str, str] | None = None,
               timeout: float | None = DEFAULT) -> Iterator[tuple[Response, Iterator[bytes]]]:
        """(the answer's status and headers, its body in chunks as they come); `timeout` None: wait forever."""
        headers = dict(headers or {})
        if json is not None:
            content = jsonlib.dumps(json).encode()
            headers["Content-Type"] = "application/json"
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        if self.transport is not None:
            answer = self.transport(Request(method, target, headers, content))
            answer.method, answer.path = method, path
            yield answer, iter([answer.content])
            return
        connection = self._connection(self.timeout if timeout == DEFAULT else timeout)
        try:
            connection.request(method, target, body=content, headers=headers)
            raw = connection.getresponse()
            answer = Response(raw.status, b"", {k.lower(): v for k, v in raw.getheaders()}, raw.reason, method, path)
            yield answer, _chunks(raw)
            if raw.will_close or not raw.isclosed():  # not read to the end, or the gateway closes it
                self._drop(connection)
        except BaseException as exc:
            self._drop(connection)
            if isinstance(exc, TimeoutError):
                raise WireError("ReadTimeout", timeout=True) from None
            if isinstance(exc, (OSError, _http().HTTPException)):
                raise WireError(str(exc) or type(exc).__name__) from None
            raise

    def _connection(self, timeout: float | None) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is not None and connection.sock is not None and not _readable(connection.sock):
            connection.sock.settimeout(timeout)
            return connection
        if connection is not None:  # closed by the gateway while idle (or it sent what nobody asked for)
            self._drop(connection)
        http = _http()
        if self.https:
            import ssl

            connection = http.HTTPSConnection(self.host, self.port, timeout=self.connect_timeout,
                                              context=ssl.create_default_context(), blocksize=_BLOCK)
        else:
            connection = http.HTTPConnection(self.host, self.port, timeout=self.connect_timeout, blocksize=_BLOCK)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            timeout = isinstance(exc, TimeoutError)
            raise WireError("ConnectTimeout" if timeout else str(exc) or type(exc).__name__, connect=True,
                            timeout=timeout) from None
        connection.sock.settimeout(timeout)
        self._local.connection = connection
        with self._lock:
            self._all.append(connection)
        return connection

    def _drop(self, connection: Any) -> None:
        connection.close()
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        with self._lock:
            if connection in self._all:
                self._all.remove(connection)


def _http() -> Any:
    import http.client

    return http.client


def _readable(sock: Any) -> bool:
    """An idle kept-alive socket with something to read has been closed by the other side."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _chunks(raw: Any) -> Iterator[bytes]:
    while chunk := raw.read1(1 << 16):
        yield chunk
    raw.read()  # at the end: marks the answer read, so that the connection is kept for the next request


def decode(chunks: Iterator[bytes]) -> Iterator[str]:
    """UTF-8 text from chunks that may split a character."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    for chunk in chunks:
        if text := decoder.decode(chunk):
            yield text
    if tail := decoder.decode(b"", final=True):
        yield tail
