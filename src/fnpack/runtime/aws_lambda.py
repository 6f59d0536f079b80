"""AWS Lambda entry: HTTP events go through Mangum to the ASGI app; other events are the request itself."""

from __future__ import annotations

import asyncio
from typing import Any

from fnpack.runtime.function import Function

_HTTP_EVENT_KEYS = ("requestContext", "httpMethod", "routeKey")


class LambdaHandler:
    def __init__(self, function: Function, app: Any) -> None:
        self.function = function
        self.app = app
        self._mangum: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, event: Any, context: Any) -> Any:
        if isinstance(event, dict) and any(key in event for key in _HTTP_EVENT_KEYS):
            if self._mangum is None:
                from mangum import Mangum  # only Lambda archives bundle it

                # lifespan off: Mangum would run it on every invocation, and the model is loaded at import.
                self._mangum = Mangum(self.app, lifespan="off")
                self._loop = asyncio.new_event_loop()
            # Mangum calls asyncio.get_event_loop(), which fails once asyncio.run() has cleared the
            # thread's loop (and always on Python 3.14): give it one loop of ours, reused per call.
            asyncio.set_event_loop(self._loop)
            return self._mangum(event, context)
        return self.function(event)  # a direct Invoke: errors surface as Lambda function errors
