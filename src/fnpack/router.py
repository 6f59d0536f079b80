"""An alias's router: `python -m fnpack.worker` with FNPACK_ROUTE in its environment (and no archive).

OpenFaaS Community Edition cannot split traffic between functions, so fnpack deploys one small function per
alias, from the same runtime image as the versions, that forwards each request to one version's function:

    FNPACK_ROUTE='{"function": "iris", "alias": "live", "primary": 1, "canary": 2, "weight": 0.1,
                   "upstream": "http://gateway.openfaas:8080/function/{function}-v{version}"}'

`canary` and `weight` are optional (0 without a canary); `upstream` is a template with `{function}` and
`{version}` (`{version}` is required: without it every version would be the same URL). Unknown keys are
refused: a router that ignored a field it does not know would route otherwise than the one who wrote it meant.

Per request: the version is picked by smooth weighted round robin (after n requests the canary has had
round(n * weight) of them, give or take one, at every point: fnpack.versions.WeightedRouter, as the local
platform picks); the request (method, the path after the function's root, the query string,
the headers minus hop-by-hop ones and Host, the body) goes to `upstream.format(...) + path`; the answer comes
back as the upstream sent it (status, headers minus hop-by-hop ones, the body streamed, never decoded), with
`X-Fnpack-Version: N` and `X-Fnpack-Alias: ALIAS` (in place of any the upstream sent). A path with a `.` or
`..` segment (literal or percent-encoded) is refused, 400: it would climb out of the version's URL.

- GET/HEAD `/_/health` and `/healthz` answer 200 at once with the route as FNPACK_ROUTE gave it: the router is
  ready as soon as it can route (it does not probe the versions: their own readiness is the gateway's business,
  and a router that went unready with a version would take the alias down with it).
- An upstream that cannot be reached, fails before its answer's head or times out: 502, JSON
  `{"error": "upstream_unreachable", "message": ..., "version": N}`; the router keeps serving. One that fails
  in the middle of its body: the client's connection is closed (the head is sent already).
- A body over FNPACK_ROUTE_MAX_BODY bytes (default 64 MiB): 413 `payload_too_large`, nothing forwarded (the
  body is buffered whole before it is forwarded: the upstream gets a content-length, never a partial body).
- FNPACK_ROUTE_TIMEOUT (seconds, default 300) bounds each upstream read, write and the wait for a pooled
  connection; connecting gets at most 10 s of it (a connect error is retried once: nothing was sent).
- SIGTERM: uvicorn stops accepting, closes idle connections and lets in-flight requests finish (make_config
  sets no graceful-shutdown timeout), so a rolling update of the router loses no request.

Imports: httpx, the standard library and fnpack.versions, which needs nothing else (the runtime image has
neither pydantic nor numpy).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes

import httpx

from fnpack.errors import UsageError
from fnpack.versions import AliasState, WeightedRouter

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
log = logging.getLogger("fnpack.router")

DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_BODY = 64 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
MAX_CONNECTIONS = 1024  # to the upstream (the gateway): as many requests in flight at once
KEEPALIVE_EXPIRY = 4.0  # below the usual idle timeouts of servers (uvicorn's 5 s), so the upstream never
# closes a connection the pool is about to reuse
FIELDS = {"function", "alias", "primary", "canary", "weight", "upstream"}
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS label, as function and alias names are
_EXAMPLE = ('{"function": "iris", "alias": "live", "primary": 1, "canary": 2, "weight": 0.1, '
            '"upstream": "http://gateway.openfaas:8080/function/{function}-v{version}"}')

# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the message's: never forwarded either way,
# nor any header the `Connection` field names. Host and content-length are each hop's own (httpx sets both
# for the upstream; uvicorn frames the answer from the upstream's content-length, which is kept for answers:
# their bodies are forwarded byte for byte). `Expect: 100-continue` is answered by uvicorn itself.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
                        b"proxy-connection", b"proxy-authorization", b"proxy-authenticate", b"expect"})
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length"}
_HEALTH = frozenset({"/_/health", "/healthz"})
_SAFE = "/%:@!$&'()*+,;=-._~?"  # what a path or query keeps as it is (RFC 3986 pchar, '/', '?', '%')


@dataclass(frozen=True)
class Route:
    function: str
    alias: str
    primary: int
    canary: int | None
    weight: float
    upstream: str
    given: dict[str, Any]  # FNPACK_ROUTE as parsed: what the health check answers

    def url(self, version: int) -> str:
        return self.upstream.format(function=self.function, version=version)


def parse_route(text: str) -> Route:
    """FNPACK_ROUTE's JSON, checked: a UsageError (exit 2) that says what is wrong otherwise."""
    hint = f"FNPACK_ROUTE is a JSON object such as {_EXAMPLE} (canary and weight optional)"
    try:
        given = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"FNPACK_ROUTE is not valid JSON: {exc}", hint=hint) from None
    if not isinstance(given, dict):
        raise UsageError(f"FNPACK_ROUTE is a JSON {type(given).__name__}, not an object", hint=hint)
    missing = sorted({"function", "alias", "primary", "upstream"} - given.keys())
    if missing:
        raise UsageError(f"FNPACK_ROUTE lacks {', '.join(missing)}", hint=hint)
    unknown = sorted(given.keys() - FIELDS)
    if unknown:
        raise UsageError(f"FNPACK_ROUTE has unknown field(s) {', '.join(map(repr, unknown))}",
                         hint=f"the fields are {', '.join(sorted(FIELDS))}")
    function, alias, upstream = given["function"], given["alias"], given["upstream"]
    for field, value in (("function", function), ("alias", alias)):
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise UsageError(f"FNPACK_ROUTE's {field} {value!r} is not a name (a lower-case DNS label)", hint=hint)
    primary = _version(given, "primary")
    canary = _version(given, "canary") if given.get("canary") is not None else None
    weight = given.get("weight", 0)
    if weight is None:
        weight = 0
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise UsageError(f"FNPACK_ROUTE's weight {weight!r} is not a number in [0, 1]",
                         hint="the canary's share of the requests, e.g. 0.1")
    if canary is None and weight:
        raise UsageError(f"FNPACK_ROUTE has a weight ({weight}) but no canary", hint="add \"canary\": VERSION")
    if canary == primary:
        raise UsageError(f"FNPACK_ROUTE's canary is its primary version ({primary})",
                         hint="a canary splits traffic between two different versions")
    if not isinstance(upstream, str) or not upstream.startswith(("http://", "https://")):
        raise UsageError(f"FNPACK_ROUTE's upstream {upstream!r} is not an http:// or https:// URL template",
                         hint=hint)
    if "{version}" not in upstream:
        raise UsageError(f"FNPACK_ROUTE's upstream {upstream!r} has no {{version}}: every version would be "
                         "the same URL", hint=hint)
    try:
        example = upstream.format(function=function, version=primary)
        httpx.URL(example)
    except (KeyError, IndexError, ValueError, httpx.InvalidURL) as exc:
        raise UsageError(f"FNPACK_ROUTE's upstream {upstream!r} is not a URL template: {type(exc).__name__}: {exc}",
                         hint="the only placeholders are {function} and {version}") from None
    return Route(function, alias, primary, canary, float(weight), upstream.rstrip("/"), given)


def _version(given: Mapping[str, Any], field: str) -> int:
    value = given[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"FNPACK_ROUTE's {field} {value!r} is not a version number (an integer from 1)")
    return value


def _env_number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{name}={text!r} is not a positive number", hint=f"unset {name} for its default")
    return value


class _Disconnected(Exception):
    pass


class RouterApp:
    """The raw ASGI app (no framework: it is on every request's path)."""

    def __init__(self, route: Route, env: Mapping[str, str] = os.environ) -> None:
        self.route = route
        self.timeout = _env_number(env, "FNPACK_ROUTE_TIMEOUT", DEFAULT_TIMEOUT)
        self.max_body = int(_env_number(env, "FNPACK_ROUTE_MAX_BODY", DEFAULT_MAX_BODY))
        self.picker = WeightedRouter(AliasState(route.primary, route.canary,
                                                route.weight if route.canary is not None else 0.0))
        self.bases = {v: route.url(v) for v in (route.primary, route.canary) if v is not None}
        self.tags = {v: [(b"x-fnpack-version", str(v).encode()), (b"x-fnpack-alias", route.alias.encode())]
                     for v in self.bases}
        self.health = json.dumps(route.given).encode()
        self.timeout_extension = httpx.Timeout(self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout)).as_dict()
        self.pool: httpx.AsyncHTTPTransport | None = None

    def _pool(self) -> httpx.AsyncHTTPTransport:
        """httpx's connection pool (keep-alive, up to MAX_CONNECTIONS), used directly rather than through an
        AsyncClient: the client's layers are all things a proxy must not do (add default headers such as
        Accept-Encoding, keep the upstream's cookies and send them with later callers' requests, follow
        redirects, read proxies from the environment) and cost time on every request (its cookie jar alone
        a tenth where the upstream sets cookies)."""
        _no_sniffio()
        limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS,
                              keepalive_expiry=KEEPALIVE_EXPIRY)
        # TCP_NODELAY: httpcore writes a request's head and body apart, and Nagle's algorithm would hold the
        # body until the head's ACK, which the upstream delays (40 ms a request on Linux).
        return httpx.AsyncHTTPTransport(limits=limits, retries=1,
                                        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.pool = self.pool or self._pool()
                log.info("routing %s:%s to %s", self.route.function, self.route.alias, self._describe())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pool is not None:
                    await self.pool.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _describe(self) -> str:
        r = self.route
        primary = r.url(r.primary)
        return primary if r.canary is None else f"{primary} and {r.weight:.4g} of requests to {r.url(r.canary)}"

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if scope["path"] in _HEALTH and method in ("GET", "HEAD"):
            return await _answer(send, 200, self.health)
        try:
            body = await self._body(scope, receive)
        except _Disconnected:
            return
        if body is None:
            return await _error(send, 413, "payload_too_large", f"the body is over the router's limit of "
                                f"{self.max_body} bytes (FNPACK_ROUTE_MAX_BODY)")
        path = _upstream_path(scope.get("raw_path") or scope["path"].encode())
        if path is None:
            return await _error(send, 400, "bad_request", "the path has a '.' or '..' segment: the router forwards "
                                "only below its versions' own URLs")
        query = scope.get("query_string")
        if query:
            path += "?" + (query.decode("ascii") if query.isascii() else quote_from_bytes(query, safe=_SAFE))
        version = self.picker.pick()
        url = self.bases[version] + path
        headers = scope["headers"]
        skip = _NOT_FORWARDED
        for name, value in headers:
            if name == b"connection":
                skip = skip | {token.strip().lower() for token in value.split(b",")}
        forwarded = [(name, value) for name, value in headers if name not in skip]
        if self.pool is None:  # served without lifespan events
            self.pool = self._pool()
        try:
            request = httpx.Request(method, url, headers=forwarded, content=body or None,
                                    extensions={"timeout": self.timeout_extension})
            response = await self.pool.handle_async_request(request)
        except httpx.TimeoutException as exc:
            return await self._unreachable(send, version, url, f"no answer within {self.timeout:g} s "
                                           f"(FNPACK_ROUTE_TIMEOUT): {type(exc).__name__}")
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            return await self._unreachable(send, version, url, f"{type(exc).__name__}: {exc}")
        try:
            answer = [(name.lower(), value) for name, value in response.headers.raw]
            skip = HOP_BY_HOP | {b"x-fnpack-version", b"x-fnpack-alias"}
            for name, value in answer:
                if name == b"connection":
                    skip = skip | {token.strip().lower() for token in value.split(b",")}
            answer = [(name, value) for name, value in answer if name not in skip]
            answer += self.tags[version]
            stream = response.stream.__aiter__()  # as it came: never decoded
            try:  # the first chunk before the head: an upstream failing now still gets its 502
                first = await stream.__anext__()
            except StopAsyncIteration:
                first = None
            except httpx.HTTPError as exc:
                return await self._unreachable(send, version, url, f"the answer broke off: {type(exc).__name__}")
            await send({"type": "http.response.start", "status": response.status_code, "headers": answer})
            if first is None:
                return await send({"type": "http.response.body", "body": b""})
            try:
                async for chunk in stream:
                    await send({"type": "http.response.body", "body": first, "more_body": True})
                    first = chunk
            except httpx.HTTPError as exc:
                log.warning("v%d's answer to %s %s broke off: %s: %s", version, method, url, type(exc).__name__, exc)
                return  # uvicorn closes the connection: the client sees a truncated answer, never a false whole
            await send({"type": "http.response.body", "body": first})
        finally:
            await response.aclose()

    async def _unreachable(self, send: Send, version: int, url: str, why: str) -> None:
        log.warning("v%d unreachable at %s: %s", version, url, why)
        await _error(send, 502, "upstream_unreachable", f"version {version} of {self.route.function} "
                     f"({url}) could not be reached: {why}", self.tags[version], version=version)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The request's body; None when it is over the limit (announced or counted). One over the limit is
        still read to its end, and dropped: answered before, the client (still sending) could miss its 413 in
        a connection reset. The server's body timeout keeps a client from trickling it for ever."""
        over = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                over = value.isdigit() and int(value) > self.max_body
                break
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk and not over:
                size += len(chunk)
                if size > self.max_body:
                    over, chunks = True, []
                else:
                    chunks.append(chunk)
            if not message.get("more_body"):
                if over:
                    return None
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _no_sniffio() -> None:
    """httpcore asks sniffio which async library runs, twice a request (its locks and events); where sniffio is
    not installed (the runtime image), each ask is an import that fails after searching all of sys.path again,
    a fifth of the router's time. Recorded as missing once, the ask fails at once (httpcore then assumes
    asyncio, which it is)."""
    import importlib.util

    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def _upstream_path(raw: bytes) -> str | None:
    """The request's path (as it came, percent-encoding kept) as it goes on after the version's URL; None if it
    has a dot segment, literal or percent-encoded: httpx resolves those (RFC 3986), and /../../system/functions
    after the version's /function/NAME-vN would be the gateway's own API, called from inside the cluster."""
    if b"." in raw or b"%" in raw:
        for segment in raw.lower().replace(b"%2e", b".").split(b"/"):
            if segment == b"." or segment == b"..":
                return None
    if raw.isascii() and b"#" not in raw:
        return raw.decode("ascii")
    return quote_from_bytes(raw, safe=_SAFE)  # a fragment mark or raw UTF-8: percent-encoded, never re-read


async def _answer(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(extra or ())]})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, error: str, message: str, extra: list[tuple[bytes, bytes]] | None = None,
                 **fields: Any) -> None:
    await _answer(send, status, json.dumps({"error": error, "message": message, **fields}).encode(), extra)


def create_router(text: str, env: Mapping[str, str] = os.environ) -> RouterApp:
    """The ASGI app for FNPACK_ROUTE's text; UsageError (exit 2) for a route or a setting that is not valid."""
    return RouterApp(parse_route(text), env)
