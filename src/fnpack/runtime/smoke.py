"""Run sample requests through an unpacked archive's handler, as `fnpack build` does after zipping.

Started as `python -I -S` with the archive root as the working folder, so it
sees only what the archive holds. Usage: smoke.py SAMPLES_JSON RESULTS_JSON [--lambda]
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import sys
import traceback
from typing import Any


def main(argv: list[str]) -> int:
    samples_path, results_path, *flags = argv
    samples = json.loads(open(samples_path, encoding="utf-8").read())
    with open("fnpack.json", encoding="utf-8") as f:
        handlers = json.load(f)["handlers"]
    try:
        module = importlib.import_module(handlers["asgi"].partition(":")[0])
    except BaseException:  # user code, a missing package, a bad model: report it, don't crash
        _write(results_path, {"import_error": traceback.format_exc(limit=-3)})
        return 0
    results = []
    for sample in samples:
        result = {"http": _invoke_http(module.app, sample)}
        if "--lambda" in flags:
            result["lambda_url"] = _invoke_lambda_url(module.handler, sample)
            result["lambda_direct"] = _invoke_lambda_direct(module.handler, sample)
        results.append(result)
    _write(results_path, {"results": results})
    return 0


def _invoke_http(app: Any, request: Any) -> dict[str, Any]:
    body = json.dumps(request).encode()
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/invoke", "raw_path": b"/invoke", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": status, "body": json.loads(payload)}


def _invoke_lambda_url(handler: Any, request: Any) -> dict[str, Any]:
    """A Lambda Function URL event (payload format 2.0) through Mangum."""
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": "/invoke", "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "smoke.lambda-url.local"},
        "requestContext": {"http": {"method": "POST", "path": "/invoke", "protocol": "HTTP/1.1",
                                    "sourceIp": "127.0.0.1", "userAgent": "fnpack-smoke"},
                           "routeKey": "$default", "stage": "$default", "requestId": "smoke"},
        "body": base64.b64encode(json.dumps(request).encode()).decode(), "isBase64Encoded": True,
    }
    try:
        response = handler(event, None)
        body = response.get("body", "")
        if response.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        return {"status": response["statusCode"], "body": json.loads(body)}
    except Exception:
        return {"status": 500, "body": {"message": traceback.format_exc(limit=-3)}}


def _invoke_lambda_direct(handler: Any, request: Any) -> dict[str, Any]:
    try:
        return {"status": 200, "body": handler(request, None)}
    except Exception as exc:
        return {"status": 500, "body": {"type": type(exc).__name__, "message": str(exc)}}


def _write(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, default=str)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
