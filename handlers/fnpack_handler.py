"""The entry module at the root of every fnpack archive (named in fnpack.json).

`app` is the ASGI app for HTTP servers; `handler` is the AWS Lambda handler.
The model loads here, at import, because Lambda's init phase is the only
start-up hook that runs once (Mangum runs ASGI lifespan on every call). Neither
starts a thread or imports asyncio here: a server's app does at its start-up,
and the Lambda handler never needs to.
"""

from pathlib import Path

from fnpack.runtime.aws_lambda import LambdaHandler
from fnpack.runtime.function import Function
from fnpack.runtime.http import create_app

function = Function(Path(__file__).resolve().parent)
app = create_app(function)
handler = LambdaHandler(function)
