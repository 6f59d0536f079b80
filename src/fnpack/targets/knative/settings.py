"""The knative target's settings: one model for the spec's `knative:` section, the flags and the
FNPACK_KNATIVE_* variables (see `targets.settings` for the order; the kubeconfig itself is read as kubectl
reads it, `kubeconfig.load_connection`). The whole spec is copied into the archive's manifest: no secrets
in `environment` (name a Secret in `storage_secret` instead)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from fnpack.errors import UsageError
from fnpack.targets.settings import TargetSettings, setting

# Used with fullmatch() only. A namespace, Secret or service account name is a DNS-1123 label.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
IMAGE = re.compile(r"[^\s]{1,512}")
STORAGE_SCHEMES = ("s3://", "http://", "https://", "pvc://")
# Knative sets these in every container and refuses them in a revision's environment.
KNATIVE_RESERVED_ENV = frozenset({"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"})
DEFAULT_IMAGE = "ghcr.io/fnpack/runtime:{runtime}-cpu"
DEFAULT_GPU_IMAGE = "ghcr.io/fnpack/runtime:{runtime}-cuda13"
# Where the cluster is, who deploys and this machine's folders: never from a spec (an exec plugin in a
# kubeconfig runs code), only from flags, variables and contexts.
MACHINE_ONLY = frozenset({"kubeconfig", "kube_context", "storage_path"})
DEFAULT_PROGRESS_DEADLINE = 600  # Knative's own default, seconds
GPU_PROGRESS_DEADLINE = 1800  # a pod may wait for a GPU node to be provisioned (kserve#1247)


def check_http_url(url: str | None) -> str | None:
    if url is not None and (not url.startswith(("http://", "https://")) or any(ch.isspace() for ch in url)):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    return url.rstrip("/") if url else url


def check_kube_name(name: str | None) -> str | None:
    if name is not None and not DNS_LABEL.fullmatch(name):
        raise ValueError(f"{name!r} is not a Kubernetes name (lower-case letters, digits and '-', at most 63)")
    return name


def check_image(image: str | None) -> str | None:
    if image is not None and not IMAGE.fullmatch(image):
        raise ValueError(f"{image!r} is not an image reference (e.g. registry.local/fnpack/runtime:python3.11-cpu)")
    return image


def check_environment(environment: dict[str, str], reserved: frozenset[str], platform: str) -> dict[str, str]:
    """A function's own variables: names, none that fnpack (FNPACK_*) or the platform sets itself."""
    for key in environment:
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not an environment variable name (letters, digits, '_')")
        if key in reserved or key.startswith("FNPACK_"):
            raise ValueError(f"{key!r} is set by {platform} or fnpack itself; pick another name")
    return environment


def refuse_machine_settings(section: Mapping[str, Any], machine: frozenset[str], target: str) -> None:
    """A spec (a cloned repository, an archive) must not pick this machine's cluster, gateway or credentials."""
    local = sorted(k for k in machine if section.get(k) is not None)
    if local:
        raise UsageError(f"{target}.{local[0]} in fnpack.yaml is a setting of the machine that deploys, not of the "
                         "function", hint=f"pass --{local[0].replace('_', '-')}, set its FNPACK_ variable, or keep "
                                          "it in a context (fnpack context set)")


class KnativeSettings(TargetSettings):
    """The knative target's settings. Flags and FNPACK_KNATIVE_* variables override each key; the
    cluster, its credentials and the default namespace come from the kubeconfig (KUBECONFIG, its
    current context) or, in a pod, the service account."""

    target: ClassVar[str] = "knative"

    kubeconfig: Path | None = setting(env="FNPACK_KUBECONFIG",
                                      description="The kubeconfig file (default: KUBECONFIG, ~/.kube/config).")
    kube_context: str | None = setting(env="FNPACK_KUBE_CONTEXT",
                                       description="The kubeconfig context (default: its current-context).")
    namespace: str | None = setting(env="FNPACK_KNATIVE_NAMESPACE",
                                    description="The namespace (default: the context's, else default).")
    storage: str | None = setting(env="FNPACK_KNATIVE_STORAGE",
                                  description="Model storage for archives: s3://BUCKET[/PREFIX] (S3 or MinIO, "
                                              "AWS_ENDPOINT_URL), http(s)://BASE (GET and PUT) or "
                                              "pvc://CLAIM[/PATH] (with storage_path).")
    storage_path: Path | None = setting(env="FNPACK_KNATIVE_STORAGE_PATH",
                                        description="pvc:// storage: where this machine sees the claim's files.")
    storage_endpoint: str | None = setting(env="FNPACK_KNATIVE_STORAGE_ENDPOINT",
                                           description="s3:// storage: the endpoint URL pods use (default: "
                                                       "AWS_ENDPOINT_URL of the deploying machine, if set).")
    storage_secret: str | None = setting(env="FNPACK_KNATIVE_STORAGE_SECRET",
                                         description="A Secret whose keys become the pods' environment "
                                                     "(AWS_ACCESS_KEY_ID, ...): the storage credentials.")
    image: str | None = setting(env="FNPACK_KNATIVE_IMAGE",
                                description=f"The runtime image (default: {DEFAULT_IMAGE}; "
                                            f"{DEFAULT_GPU_IMAGE} for a GPU function).")
    ingress: str | None = setting(env="FNPACK_KNATIVE_INGRESS",
                                  description="http(s)://HOST[:PORT] of the cluster's ingress for invocations, "
                                              "sent with the route's Host header (default: the route's URL).")
    service_account: str | None = setting(env="FNPACK_KNATIVE_SERVICE_ACCOUNT",
                                          description="The pods' service account (default: the namespace's).")
    progress_deadline: int | None = setting(env="FNPACK_KNATIVE_PROGRESS_DEADLINE", ge=30, le=86400,
                                            description=f"Seconds a revision may take to become ready "
                                                        f"(default {DEFAULT_PROGRESS_DEADLINE}; "
                                                        f"{GPU_PROGRESS_DEADLINE} with a GPU).")
    environment: dict[str, str] = Field(default_factory=dict, description="Environment variables of the function.")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> KnativeSettings:
        section = cls.section(spec, "knative")
        refuse_machine_settings(section, MACHINE_ONLY, "knative")  # an exec plugin in a kubeconfig runs code
        return cls.layer(section, "fnpack.yaml")

    def image_for(self, runtime: str, gpu: bool) -> str:
        return self.image or (DEFAULT_GPU_IMAGE if gpu else DEFAULT_IMAGE).format(runtime=runtime)

    def deadline_for(self, gpu: bool) -> int:
        return self.progress_deadline or (GPU_PROGRESS_DEADLINE if gpu else DEFAULT_PROGRESS_DEADLINE)

    @field_validator("namespace", "storage_secret", "service_account")
    @classmethod
    def _dns_label(cls, name: str | None) -> str | None:
        return check_kube_name(name)

    @field_validator("storage")
    @classmethod
    def _storage(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        if not uri.startswith(STORAGE_SCHEMES) or len(uri.split("://", 1)[1].strip("/")) == 0:
            raise ValueError(f"{uri!r} is not model storage: expected s3://BUCKET[/PREFIX], http(s)://HOST/PATH or "
                             "pvc://CLAIM[/PATH]")
        if any(ch.isspace() or ord(ch) < 32 for ch in uri):
            raise ValueError(f"{uri!r} contains spaces or control characters")
        scheme, _, rest = uri.partition("://")
        where, _, path = rest.partition("/")
        if "@" in where:  # it would be in every revision's arguments, plans and YAML
            raise ValueError(f"{scheme}://{where.rsplit('@', 1)[1]}/...: no credentials in the storage URI; give "
                             "them to boto3 (AWS_* variables) and to the pods through storage_secret")
        parts = path.rstrip("/").split("/") if path.rstrip("/") else []
        if ".." in parts or "" in parts:
            raise ValueError(f"{uri!r}: a storage path has no '..' or empty parts")
        if scheme == "pvc" and not DNS_LABEL.fullmatch(where):
            raise ValueError(f"{where!r} is not a PersistentVolumeClaim name (pvc://CLAIM/PATH)")
        return uri.rstrip("/")

    @field_validator("storage_endpoint", "ingress")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        return check_http_url(url)

    @field_validator("image")
    @classmethod
    def _image(cls, image: str | None) -> str | None:
        return check_image(image)

    @field_validator("environment")
    @classmethod
    def _env_names(cls, environment: dict[str, str]) -> dict[str, str]:
        return check_environment(environment, KNATIVE_RESERVED_ENV, "Knative")
