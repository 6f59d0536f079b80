"""The local target's settings: where the platform is and how to prove who may change it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import field_validator

from fnpack.targets.settings import TargetSettings, setting

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_STATE_DIR = ".fnpack"


class LocalSettings(TargetSettings):
    target: ClassVar[str] = "local"

    url: str = setting(DEFAULT_URL, env="FNPACK_URL", description="The platform's address.")
    state_dir: Path = setting(Path(DEFAULT_STATE_DIR), env="FNPACK_STATE_DIR",
                              description="The platform's state folder, whose `token` file authorises changes.")
    token: str | None = setting(env="FNPACK_TOKEN", description="The control token (default: STATE_DIR/token).")
    invoke_token: str | None = setting(env="FNPACK_INVOKE_TOKEN",
                                       description="Bearer token for invocations, when the platform requires one.")

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:8080)")
        return url.rstrip("/")

    @field_validator("token", "invoke_token")
    @classmethod
    def _strip(cls, token: str | None) -> str | None:
        return token.strip() if token is not None else None
