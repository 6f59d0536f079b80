"""What an archive and an existing function must be before an aws-lambda deploy makes any API call:
built for aws-lambda, on a runtime and architecture Lambda runs, within Lambda's 250 MB unzipped limit;
an existing function must be a zip function of the same runtime and architecture."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fnpack.build.budget import human
from fnpack.errors import ArchiveError, BudgetError, ConflictError, UsageError
from fnpack.spec import RUNTIMES
from fnpack.targets.catalog import target_info

LAMBDA = target_info("aws-lambda")
LAMBDA_UNZIPPED = LAMBDA.max_unzipped
DIRECT_UPLOAD_ENV = "FNPACK_LAMBDA_DIRECT_UPLOAD_MAX"  # bytes; tests lower it to exercise the S3 path


def check_archive(archive: Path, manifest: dict[str, Any], unzipped: int) -> None:
    rebuild = "rebuild it with `fnpack build --target aws-lambda`"
    if manifest.get("target") != "aws-lambda":
        raise ArchiveError(f"{archive.name} was built for the {manifest.get('target')!r} target, not aws-lambda: its "
                           "packages may not load on Lambda", hint=rebuild)
    if manifest.get("runtime") not in RUNTIMES:
        raise ArchiveError(f"{archive.name} is for runtime {manifest.get('runtime')!r}; Lambda runs fnpack archives "
                           f"on {', '.join(RUNTIMES)}", hint=rebuild)
    if manifest.get("arch") not in ("x86_64", "arm64"):
        raise ArchiveError(f"{archive.name} is for architecture {manifest.get('arch')!r}; Lambda runs x86_64 and "
                           "arm64", hint=rebuild)
    if unzipped > LAMBDA_UNZIPPED:
        raise BudgetError(f"{archive.name} unpacks to {human(unzipped)}, over AWS Lambda's hard limit of "
                          f"{human(LAMBDA_UNZIPPED)} unzipped", hint="`fnpack inspect` shows what is large; slim "
                                                                    "the requirements or the model")


def check_compatible(name: str, config: dict[str, Any], runtime: str, arch: str) -> None:
    """An existing function must be a zip function of the archive's runtime and architecture."""
    problems = []
    if config.get("PackageType", "Zip") != "Zip":
        problems.append(f"it is a {config.get('PackageType')} function, fnpack deploys zip archives")
    if config.get("Runtime") != runtime:
        problems.append(f"its runtime is {config.get('Runtime')}, the archive's is {runtime}")
    existing_arch = (config.get("Architectures") or ["x86_64"])[0]
    if existing_arch != arch:
        problems.append(f"its architecture is {existing_arch}, the archive's is {arch}")
    if problems:
        raise ConflictError(f"the function {name} exists on AWS Lambda with other settings: " + "; ".join(problems),
                            hint="build for the function's runtime and arch (runtime:, arch: in fnpack.yaml), or "
                                 f"delete it first (fnpack delete {name} --target aws-lambda)")


def direct_upload_max() -> int:
    """The largest archive sent in the API call itself; larger ones go through S3."""
    text = os.environ.get(DIRECT_UPLOAD_ENV)
    if not text:
        return int(LAMBDA.direct_upload or 0)
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{DIRECT_UPLOAD_ENV}={text!r} is not a whole number") from None
