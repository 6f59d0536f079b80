"""Function URL and HTTP API events (payload format 2.0) served by the ASGI app without Mangum or asyncio.

A Lambda environment answers one event at a time, so the inline app (http.py) runs each request to
its end in the caller: its coroutine never waits, and one `send(None)` runs it. This is the path of
fnpack's own Function URLs, and Mangum's import with asyncio's (ssl, sockets, selectors, typing_extensions)
is the largest part of a cold start it can leave out. The scope and the result are Mangum's (HTTPGateway,
version 2.0), so an app sees the same request either way; other events (REST APIs, ALB) still go
through Mangum.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote

# Mangum's DEFAULT_TEXT_MIME_TYPES: an answer of these types goes as text, anything else base64-encoded.
TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml", "application/vnd.api+json",
              "application/vnd.oai.openapi")


def is_url_event(event: dict[str, Any]) -> bool:
    return event.get("version") == "2.0" and isinstance(event.get("requestContext"), dict) \
        and "http" in event["requestContext"]


def handle(app: Any, event: dict[str, Any], context: Any) -> dict[str, Any]:
    status, headers, body = run_inline(app, scope_of(event, context), body_of(event))
    return result_of(status, headers, body)


def scope_of(event: dict[str, Any], context: Any) -> dict[str, Any]:
    http = event["requestContext"]["http"]
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    if event.get("cookies"):
        headers["cookie"] = "; ".join(event["cookies"])
    host = headers.get("host", "mangum")
    name, _, port = host.partition(":")
    return {"type": "http", "method": http["method"], "http_version": "1.1",
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            "path": unquote(http["path"]) if http.get("path") else "/", "raw_path": None, "root_path": "",
            "scheme": headers.get("x-forwarded-proto", "https"),
            "query_string": (event.get("rawQueryString") or "").encode(),
            "server": (name, int(port or headers.get("x-forwarded-port", 80))), "client": (http.get("sourceIp"), 0),
            "asgi": {"version": "3.0", "spec_version": "2.0"}, "aws.event": event, "aws.context": context}


def body_of(event: dict[str, Any]) -> bytes:
    body = event.get("body") or b""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body.encode() if isinstance(body, str) else body


def run_inline(app: Any, scope: dict[str, Any], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run an inline ASGI app on one request; (status, headers, body)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    coroutine = app(scope, receive, send)
    try:
        coroutine.send(None)
    except StopIteration:
        pass
    else:  # it waits on something: an app that is not inline
        coroutine.close()
        raise RuntimeError("the app awaited an event loop; the Lambda handler needs create_app(..., inline=True)")
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], list(start.get("headers", ())), b"".join(
        m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def result_of(status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> dict[str, Any]:
    """The Lambda result for an answer, as Mangum writes it for payload 2.0."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for key, value in raw_headers:
        name, text = key.decode().lower(), value.decode()
        if name == "set-cookie":
            cookies.append(text)
        else:
            headers[name] = f"{headers[name]},{text}" if name in headers else text
    headers.setdefault("content-type", "application/json")
    text = _as_text(body, headers["content-type"])
    encoded = text is None
    if text is None:
        text = base64.b64encode(body).decode()
    result: dict[str, Any] = {"statusCode": status, "body": text, "headers": headers}
    if cookies:
        result["cookies"] = cookies
    result["isBase64Encoded"] = encoded
    return result


def _as_text(body: bytes, content_type: str) -> str | None:
    """The body as text when its type is a text type and it is UTF-8; None: it goes base64-encoded."""
    if not body:
        return ""
    if not any(kind in content_type for kind in TEXT_TYPES):
        return None
    try:
        return body.decode()
    except UnicodeDecodeError:
        return None
