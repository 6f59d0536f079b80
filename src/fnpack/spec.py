"""The function spec, `fnpack.yaml`: a pydantic model, loading, and JSON Schema export."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ByteSize, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from fnpack.canary.policy import CanarySettings
from fnpack.errors import SpecError
from fnpack.targets.aws_lambda.settings import LambdaSettings
from fnpack.targets.catalog import TARGETS as DEPLOY_TARGETS
from fnpack.targets.knative.settings import KnativeSettings
from fnpack.targets.openfaas.settings import OpenFaaSSettings
from fnpack.versions import NAME_PATTERN

SPEC_FILE = "fnpack.yaml"
RUNTIMES = ("python3.11", "python3.12")
DTYPES = ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
          "float16", "float32", "float64", "string")
# Used with fullmatch() only: `$` also matches before a final newline. re.ASCII: `\d` and `\w` take any script.
CALLABLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TensorSpec(_Strict):
    """One model input as callers send it: the protocol metadata and the validation rule."""

    name: str = Field(min_length=1)
    dtype: Literal[DTYPES]  # type: ignore[valid-type]
    shape: list[int] = Field(description="Dimensions; -1 marks a dynamic one (the batch, usually).")

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if any(d < -1 or d == 0 for d in shape):
            raise ValueError(f"dimensions must be positive or -1 (dynamic), got {shape}")
        return shape


class Toleration(_Strict):
    """A Kubernetes toleration, as in a pod spec."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")


class Resources(_Strict):
    memory: int = Field(default=512, ge=128, le=10240, description="Memory in MB.")
    timeout: float = Field(default=30, gt=0, le=900, description="Request timeout in seconds.")
    cpu: float | None = Field(default=None, gt=0, le=256,
                              description="CPU cores per replica, requested and the limit (Knative, OpenFaaS).")
    gpu: int = Field(default=0, ge=0, le=16, description="GPUs per replica (Knative, OpenFaaS).")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)


class Scaling(_Strict):
    min: int = Field(default=0, ge=0, description="Replicas kept warm; 0 allows scale to zero.")
    max: int = Field(default=4, ge=1)
    target_concurrency: int = Field(default=8, ge=1, description="In-flight requests per replica.")
    idle_timeout: float = Field(default=300, ge=0, description="Seconds idle before scaling to zero.")

    @model_validator(mode="after")
    def _min_le_max(self) -> Scaling:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Batching(_Strict):
    max_batch_size: int = Field(default=32, ge=1)
    max_wait_ms: float = Field(default=5, ge=0)


class Sample(_Strict):
    """An example request run through the built archive; `expect` is matched as a subset."""

    data: Any = None
    file: str | None = Field(default=None, description="A JSON file, relative to fnpack.yaml.")
    expect: Any = None

    @model_validator(mode="after")
    def _one_source(self) -> Sample:
        if (self.data is None) == (self.file is None):
            raise ValueError("a sample needs exactly one of 'data' or 'file'")
        return self


class Budget(_Strict):
    """Size limits that override the target's defaults ("50MB", "200MiB" or bytes)."""

    zipped: ByteSize | None = None
    unzipped: ByteSize | None = None


class FunctionSpec(_Strict):
    """fnpack.yaml: one model function."""

    name: str = Field(description="Lower-case DNS label, at most 40 characters (a Lambda and Knative name).")
    model: str = Field(description="Path to the .onnx model, relative to fnpack.yaml.")
    features: str | None = Field(default=None, description="module:callable turning a request into model inputs.")
    score: str | None = Field(default=None, description="module:callable turning model outputs into an answer.")
    inputs: list[TensorSpec] | None = Field(default=None, description="Model inputs; read from the model if left out.")
    runtime: Literal[RUNTIMES] = "python3.11"  # type: ignore[valid-type]
    arch: Literal["x86_64", "arm64"] = "x86_64"
    requirements: list[str] = Field(default_factory=list, description="Extra packages (PEP 508).")
    include: list[str] = Field(default_factory=list, description="Globs of extra files to package.")
    exclude: list[str] = Field(default_factory=list, description="Globs of files to leave out.")
    resources: Resources = Field(default_factory=Resources)
    scaling: Scaling = Field(default_factory=Scaling)
    batching: Batching | None = None
    samples: list[Sample] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    target: Literal[DEPLOY_TARGETS] | None = Field(  # type: ignore[valid-type]
        default=None, description="Default target of deploy, invoke, alias, ... (--target and FNPACK_TARGET win).")
    aws_lambda: LambdaSettings = Field(default_factory=LambdaSettings,
                                          description="Settings of the aws-lambda target.")
    knative: KnativeSettings = Field(default_factory=KnativeSettings, description="Settings of the knative target.")
    openfaas: OpenFaaSSettings = Field(default_factory=OpenFaaSSettings, description="Settings of the openfaas target.")
    canary: CanarySettings = Field(default_factory=CanarySettings,
                                   description="Rollout defaults of `fnpack canary` and `fnpack deploy --canary`.")

    @field_validator("aws_lambda")
    @classmethod
    def _lambda_arch(cls, settings: LambdaSettings, info: ValidationInfo) -> LambdaSettings:
        arch = info.data.get("arch")
        if settings.arch is not None and arch is not None and settings.arch != arch:
            raise ValueError(f"arch {settings.arch} differs from the top-level arch ({arch}), which the archive is "
                             "built for; set `arch` alone")
        return settings

    @field_validator("knative", "openfaas", mode="before")
    @classmethod
    def _no_machine_settings(cls, section: Any, info: ValidationInfo) -> Any:
        """Where the cluster or gateway is and who deploys are the deploying machine's, never a spec's."""
        from fnpack.targets.knative.settings import MACHINE_ONLY as KNATIVE_MACHINE
        from fnpack.targets.openfaas.settings import MACHINE_ONLY as OPENFAAS_MACHINE

        machine = KNATIVE_MACHINE if info.field_name == "knative" else OPENFAAS_MACHINE
        local = sorted(k for k in machine if section.get(k) is not None) if isinstance(section, dict) else []
        if local:
            raise ValueError(f"{local[0]} is a setting of the machine that deploys, not of the function: pass "
                             f"--{local[0].replace('_', '-')} or keep it in a context")
        return section

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if len(name) > 40 or not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"{name!r} is not a lower-case DNS label of at most 40 characters "
                "(letters, digits and '-', starting with a letter, e.g. 'iris-classifier')"
            )
        return name

    @field_validator("model")
    @classmethod
    def _onnx_path(cls, model: str) -> str:
        if not model.endswith(".onnx"):
            raise ValueError(f"{model!r} is not an .onnx file")
        return _relative_path(model)

    @field_validator("features", "score")
    @classmethod
    def _callable_ref(cls, ref: str | None) -> str | None:
        if ref is not None and not CALLABLE_PATTERN.fullmatch(ref):
            raise ValueError(f"{ref!r} is not of the form 'module:callable' (e.g. 'features:extract')")
        return ref

    @field_validator("requirements")
    @classmethod
    def _pep508(cls, requirements: list[str]) -> list[str]:
        from packaging.requirements import InvalidRequirement, Requirement

        for line in requirements:
            try:
                Requirement(line)
            except InvalidRequirement as exc:
                raise ValueError(f"{line!r} is not a valid requirement: {exc}") from None
        return requirements

    @field_validator("include", "exclude")
    @classmethod
    def _relative_globs(cls, globs: list[str]) -> list[str]:
        return [_relative_path(g) for g in globs]

    @property
    def python_version(self) -> str:
        return self.runtime.removeprefix("python")


def _relative_path(path: str) -> str:
    if path.startswith("/") or ".." in Path(path).parts:
        raise ValueError(f"{path!r} must be a path inside the function folder")
    return path


@dataclass(frozen=True)
class Project:
    """A loaded spec and the folder it lives in."""

    root: Path
    spec: FunctionSpec

    @property
    def spec_path(self) -> Path:
        return self.root / SPEC_FILE


def load_project(path: Path | str = ".") -> Project:
    """Read and validate fnpack.yaml from a folder or a file path."""
    path = Path(path)
    spec_path = path / SPEC_FILE if path.is_dir() else path
    if not spec_path.is_file():
        raise SpecError(
            f"no {SPEC_FILE} found at {spec_path}",
            hint="run `fnpack init NAME` to create a function, or pass the folder that holds fnpack.yaml",
        )
    try:
        data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{spec_path} is not valid YAML{where}: {problem}",
                        hint="check indentation and quoting") from None
    except UnicodeDecodeError:
        raise SpecError(f"{spec_path} is not UTF-8 text") from None
    if not isinstance(data, dict):
        raise SpecError(f"{spec_path} must be a mapping of keys (name, model, ...), got {type(data).__name__}",
                        hint="start from `fnpack init NAME`; `fnpack schema` prints every key")
    return Project(root=spec_path.parent.resolve(), spec=parse_spec(data, source=str(spec_path)))


def parse_spec(data: dict[str, Any], source: str = SPEC_FILE) -> FunctionSpec:
    try:
        return FunctionSpec.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        raise SpecError(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems),
                        hint="`fnpack schema` prints every key with its type") from None


def _describe(err: Any) -> str:
    loc = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        parent = _model_at(err["loc"][:-1])
        key = str(err["loc"][-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        suggestion = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
        return f"{loc}: unknown key; {suggestion}"
    if err["type"] == "missing":
        return f"{loc}: required key is missing"
    if err["type"] == "value_error":  # our own validators already name the value
        return f"{loc}: {err['msg'].removeprefix('Value error, ')}"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})"


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that a validation location points into, to list its valid keys."""
    model: type[BaseModel] = FunctionSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        inner = _first_model(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found:
            return found
    return None


def json_schema() -> dict[str, Any]:
    schema = FunctionSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fnpack.yaml"
    return schema
