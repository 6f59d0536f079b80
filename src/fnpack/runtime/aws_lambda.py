"""AWS Lambda entry: HTTP events go to the ASGI app (Function URL and HTTP API 2.0 events directly, other
HTTP events through Mangum); other events are the request itself.

A direct Invoke whose event is a JSON array is a batch, as a JSON array sent to `/invoke` is: the
answer is an array in the same order, and a bad record fails the whole call naming its index (the
Lambda function error `/invoke`'s 422 or 500 is over HTTP).
"""

from __future__ import annotations

from typing import Any

from fnpack.runtime import lambda_url
from fnpack.runtime.function import Function, RequestError
from fnpack.runtime.http import create_app
from fnpack.runtime.logs import log

_HTTP_EVENT_KEYS = ("requestContext", "httpMethod", "routeKey")


class LambdaHandler:
    def __init__(self, function: Function) -> None:
        self.function = function
        # Its own app, inline: Lambda sends one event at a time and enforces the timeout itself.
        self.app = create_app(function, inline=True)
        self._mangum: Any = None
        self._loop: Any = None

    def __call__(self, event: Any, context: Any) -> Any:
        if isinstance(event, dict) and any(key in event for key in _HTTP_EVENT_KEYS):
            if lambda_url.is_url_event(event):
                return lambda_url.handle(self.app, event, context)
            import asyncio  # REST API and ALB events only: Mangum runs on asyncio

            if self._mangum is None:
                from mangum import Mangum  # only Lambda archives bundle it

                # lifespan off: Mangum would run it on every invocation, and the model is loaded at import.
                self._mangum = Mangum(self.app, lifespan="off")
                self._loop = asyncio.new_event_loop()
            # Mangum calls asyncio.get_event_loop(), which fails once asyncio.run() has cleared the
            # thread's loop (and always on Python 3.14): give it one loop of ours, reused per call.
            asyncio.set_event_loop(self._loop)
            return self._mangum(event, context)
        if isinstance(event, list):
            return self.batch(event)
        return self.function(event)  # a direct Invoke: errors surface as Lambda function errors

    def batch(self, records: list[Any]) -> list[Any]:
        """Answers for a JSON array of records, in one model call when possible (Function.call_many)."""
        results = self.function.call_many(records)
        for index, result in enumerate(results):
            if isinstance(result, RequestError):  # /invoke: a 422 "record N: ..."
                raise RequestError(f"record {index}: {result}") from result
            if isinstance(result, Exception):  # /invoke: a 500 naming the exception type
                log().error("record %d failed", index)
                raise result
        return results
