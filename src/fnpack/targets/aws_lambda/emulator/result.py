"""What one invocation gives back, in Lambda's terms: `InvokeResult`, Lambda's error objects and its
payload limit. Shared by every module of the emulator (the Runtime API, `LocalLambda`, the Function URL)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

MAX_PAYLOAD = 6 * 1024 * 1024  # Lambda's limit for synchronous requests and responses

Status = Literal["ok", "error", "init_error"]


@dataclass(frozen=True)
class InvokeResult:
    """status: "ok" (payload: the function's answer), "error" (payload: Lambda's error object with
    errorType and errorMessage) or "init_error" (payload: the same, from the init phase).
    duration_s: the handler's run, as Lambda bills it; the cold start is not included."""

    status: Status
    payload: Any
    duration_s: float
    request_id: str

    @property
    def error_type(self) -> str | None:
        return self.payload.get("errorType") if self.status != "ok" and isinstance(self.payload, dict) else None

    @property
    def error_message(self) -> str | None:
        return self.payload.get("errorMessage") if self.status != "ok" and isinstance(self.payload, dict) else None


def lambda_error(error_type: str, message: str) -> dict[str, Any]:
    """Lambda's error object: what an invocation that failed answers."""
    return {"errorType": error_type, "errorMessage": message}
