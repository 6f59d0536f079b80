"""The error model: every user mistake is one FnpackError with an exit code.

The CLI prints `error: <message>` and `hint: <hint>` and exits with the code;
it never shows a traceback for these. The codes are documented in the README.
"""

from __future__ import annotations


class FnpackError(Exception):
    """A user-facing error: what went wrong, what was expected, how to fix it."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, object]:
        return {"error": self.kind, "message": self.message, "hint": self.hint, "exit_code": self.exit_code}


class UsageError(FnpackError):
    """Bad command-line input: wrong combination of options, an argument that is not JSON."""

    exit_code = 2
    kind = "usage"


class AccessDeniedError(UsageError):
    """The platform (AWS, Kubernetes) refused an action to these credentials; `permission` names it (e.g.
    lambda:CreateFunction, patch services.serving.knative.dev)."""

    kind = "access-denied"

    def __init__(self, message: str, hint: str | None = None, permission: str = "") -> None:
        super().__init__(message, hint)
        self.permission = permission

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "permission": self.permission}


class SpecError(FnpackError):
    """fnpack.yaml is missing, malformed or invalid."""

    exit_code = 3
    kind = "spec"


class ModelError(FnpackError):
    """The model file is missing, not ONNX, or does not match the spec or the target runtime."""

    exit_code = 4
    kind = "model"


class UserCodeError(FnpackError):
    """The feature extractor or scorer cannot be imported."""

    exit_code = 5
    kind = "user-code"


class DependencyError(FnpackError):
    """A requirement cannot be resolved or has no wheel for the target platform."""

    exit_code = 6
    kind = "dependency"


class BudgetError(FnpackError):
    """The archive is over the target's size budget."""

    exit_code = 7
    kind = "size-budget"

    def __init__(self, message: str, hint: str | None = None, report: dict | None = None) -> None:
        super().__init__(message, hint)
        self.report = report or {}

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "report": self.report}


class SmokeTestError(FnpackError):
    """A sample request failed when the built archive was run."""

    exit_code = 8
    kind = "smoke-test"


class OutputError(FnpackError):
    """The output folder cannot be created or written."""

    exit_code = 9
    kind = "output"


class StateError(FnpackError):
    """The platform's state folder cannot be written: read-only, gone, or failing (HTTP 503)."""

    exit_code = 9  # like OutputError: a folder fnpack must write to cannot be written
    kind = "state-folder"


class StorageFullError(StateError):
    """The state folder's filesystem is out of space (HTTP 507)."""

    kind = "storage-full"


class ArchiveError(FnpackError):
    """An archive is unreadable, tampered with, or unsafe to unpack."""

    exit_code = 10
    kind = "archive"


class StartError(FnpackError):
    """A function could not start serving: its handler failed to import, or it needs another Python."""

    exit_code = 11
    kind = "start"


class NotFoundError(FnpackError):
    """An unknown function, version or alias."""

    exit_code = 12
    kind = "not-found"


class ConflictError(FnpackError):
    """A change that would break something in use: deleting a version an alias points to."""

    exit_code = 13
    kind = "conflict"
