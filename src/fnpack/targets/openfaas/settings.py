"""The openfaas target's settings: one model for the spec's `openfaas:` section, the flags and the
FNPACK_OPENFAAS_* variables (see `targets.settings` for the order). The gateway and its credentials are
read as faas-cli keeps them too (`OPENFAAS_URL`, `faas-cli login`'s ~/.openfaas/config.yml) when nothing
else names them. The whole spec is copied into the archive's manifest: no secrets in it."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, field_validator

from fnpack.targets.knative.settings import (DEFAULT_GPU_IMAGE, DEFAULT_IMAGE, check_environment, check_http_url,
                                             check_image, check_kube_name, refuse_machine_settings)
from fnpack.targets.settings import TargetSettings, setting

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
DEFAULT_UPSTREAM = "http://gateway.openfaas:8080/function/{function}-v{version}"
# Where the secret named by storage_secret is mounted in a function (OpenFaaS mounts each secret as a file).
SECRETS_DIR = "/var/openfaas/secrets"
MACHINE_ONLY = frozenset({"gateway", "username", "password"})
OPENFAAS_RESERVED_ENV = frozenset({"PORT", "fprocess"})


class OpenFaaSSettings(TargetSettings):
    """The openfaas target's settings. Flags and FNPACK_OPENFAAS_* variables override each key; the
    gateway's URL and password default to faas-cli's (OPENFAAS_URL, `faas-cli login`)."""

    target: ClassVar[str] = "openfaas"

    gateway: str | None = setting(env="FNPACK_OPENFAAS_GATEWAY",
                                  description=f"The gateway's URL (default: OPENFAAS_URL, else {DEFAULT_GATEWAY}).")
    username: str | None = setting(env="FNPACK_OPENFAAS_USERNAME", description="Basic auth user (default: admin).")
    password: str | None = setting(env="FNPACK_OPENFAAS_PASSWORD",
                                   description="Basic auth password (default: faas-cli login's, for the gateway).")
    edition: Literal["ce", "pro"] | None = setting(env="FNPACK_OPENFAAS_EDITION",
                                                   description="ce (Community Edition, the default) or pro: what the "
                                                               "gateway honours (scale to zero, GPU profiles).")
    storage: str | None = setting(env="FNPACK_OPENFAAS_STORAGE",
                                  description="Model storage for archives and the shared alias history: "
                                              "s3://BUCKET[/PREFIX] (S3 or MinIO, AWS_ENDPOINT_URL).")
    storage_endpoint: str | None = setting(env="FNPACK_OPENFAAS_STORAGE_ENDPOINT",
                                           description="The S3 endpoint URL functions use (default: "
                                                       "AWS_ENDPOINT_URL of the deploying machine, if set).")
    storage_secret: str | None = setting(env="FNPACK_OPENFAAS_STORAGE_SECRET",
                                         description="An OpenFaaS secret holding an AWS credentials file, for "
                                                     "the functions to read model storage.")
    image: str | None = setting(env="FNPACK_OPENFAAS_IMAGE",
                                description=f"The runtime image (default: {DEFAULT_IMAGE}; {DEFAULT_GPU_IMAGE} "
                                            "with a GPU). OpenFaaS CE pulls only public images.")
    upstream: str | None = setting(env="FNPACK_OPENFAAS_UPSTREAM",
                                   description="How alias routers reach a version, a template with {function} and "
                                               f"{{version}} (default: {DEFAULT_UPSTREAM}).")
    namespace: str | None = setting(env="FNPACK_OPENFAAS_NAMESPACE",
                                    description="The functions' namespace (default: the gateway's, openfaas-fn).")
    environment: dict[str, str] = Field(default_factory=dict, description="Environment variables of the function.")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> OpenFaaSSettings:
        section = cls.section(spec, "openfaas")
        refuse_machine_settings(section, MACHINE_ONLY, "openfaas")  # the password must not go elsewhere
        return cls.layer(section, "fnpack.yaml")

    def gateway_url(self, environ: Mapping[str, str] | None = None) -> str:
        environ = os.environ if environ is None else environ
        return (self.gateway or environ.get("OPENFAAS_URL") or DEFAULT_GATEWAY).rstrip("/")

    def credentials(self, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
        """(user, password): the settings', else what `faas-cli login` saved for this gateway; None: none."""
        if self.password:
            return self.username or "admin", self.password
        saved = faas_cli_login(self.gateway_url(environ), environ)
        return (self.username or saved[0], saved[1]) if saved else None

    def image_for(self, runtime: str, gpu: bool) -> str:
        return self.image or (DEFAULT_GPU_IMAGE if gpu else DEFAULT_IMAGE).format(runtime=runtime)

    @field_validator("gateway", "storage_endpoint")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        return check_http_url(url)

    @field_validator("storage")
    @classmethod
    def _s3(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        bucket = uri.removeprefix("s3://").split("/", 1)[0]
        if not uri.startswith("s3://") or not bucket or any(ch.isspace() or ord(ch) < 32 for ch in uri) \
                or ".." in uri.split("/") or "@" in bucket:
            raise ValueError(f"{uri!r} is not S3 model storage: expected s3://BUCKET[/PREFIX] (OpenFaaS keeps the "
                             "shared alias history there, written with S3's compare-and-swap)")
        return uri.rstrip("/")

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, template: str | None) -> str | None:
        if template is not None and ("{version}" not in template or not template.startswith(("http://", "https://"))):
            raise ValueError(f"{template!r} is not an upstream template: an http(s) URL with {{function}} and "
                             "{version}, e.g. " + DEFAULT_UPSTREAM)
        return template

    @field_validator("namespace", "storage_secret")
    @classmethod
    def _dns_label(cls, name: str | None) -> str | None:
        return check_kube_name(name)

    @field_validator("image")
    @classmethod
    def _image(cls, image: str | None) -> str | None:
        return check_image(image)

    @field_validator("environment")
    @classmethod
    def _env_names(cls, environment: dict[str, str]) -> dict[str, str]:
        return check_environment(environment, OPENFAAS_RESERVED_ENV, "OpenFaaS")


def faas_cli_login(gateway: str, environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """The (user, password) `faas-cli login` saved for `gateway` in its config (OPENFAAS_CONFIG, else
    ~/.openfaas/config.yml: `auths: [{gateway, auth: basic, token: base64(user:password)}]`)."""
    environ = os.environ if environ is None else environ
    folder = Path(environ.get("OPENFAAS_CONFIG") or Path(environ.get("HOME") or Path.home()) / ".openfaas")
    try:
        data = yaml.safe_load((folder / "config.yml").read_text(encoding="utf-8")) or {}
        for entry in data.get("auths") or []:
            if str(entry.get("gateway", "")).rstrip("/") == gateway and entry.get("auth") == "basic":
                user, _, password = base64.b64decode(entry["token"]).decode().partition(":")
                return user, password
    except (OSError, ValueError, TypeError, AttributeError, KeyError, yaml.YAMLError):
        return None
    return None
