"""The local AWS Lambda emulator behind `fnpack run ARCHIVE --as lambda`: no Docker, AWS's own `awslambdaric`.

One module per job:
- `local`: `LocalLambda`, the function's lifecycle (start, invoke, wait_ready, logs, close);
- `environment`: `Runtime`, one execution environment (a Runtime API server and one awslambdaric process);
- `runtime_api`: Lambda's side of the Runtime API, on loopback;
- `tree`: the manifest's checks, the runtime's distributions, the read-only task root;
- `function_url`: Function URL events and responses (payload 2.0) and the front HTTP server, `serve_http`;
- `run`: `run_lambda`, the CLI's entry;
- `result`: `InvokeResult`, Lambda's error objects and payload limit, shared by all of them.

Standard library only (and `fnpack.archive`, `fnpack.errors`): never boto3 nor the deploy code.
"""

from fnpack.targets.aws_lambda.emulator.function_url import serve_http, url_event, url_response
from fnpack.targets.aws_lambda.emulator.local import INIT_TIMEOUT, LocalLambda
from fnpack.targets.aws_lambda.emulator.result import MAX_PAYLOAD, InvokeResult
from fnpack.targets.aws_lambda.emulator.run import run_lambda

__all__ = ["INIT_TIMEOUT", "MAX_PAYLOAD", "InvokeResult", "LocalLambda", "run_lambda", "serve_http", "url_event",
           "url_response"]
