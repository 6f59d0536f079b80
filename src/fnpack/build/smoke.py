"""The smoke run: unpack the built archive with the safe reader and run every sample through its
handler in a fresh Python that sees only the archive (`-I -S`: no site-packages, no user folder)."""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fnpack.archive import open_archive
from fnpack.build.interpreters import find_python
from fnpack.build.profile import BuildProfile
from fnpack.errors import SmokeTestError

_RUNNER = "import sys; sys.path.insert(0, ''); from fnpack.runtime.smoke import main; sys.exit(main(sys.argv[1:]))"


def smoke_run(archive: Path, profile: BuildProfile, samples: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    """{"status": "passed"|"skipped", ...}; raises SmokeTestError with the function's own message."""
    python = find_python(profile.python_version)
    reason = profile.can_run_here() or (None if python else f"python{profile.python_version} is not installed here")
    if reason:
        return {"status": "skipped", "reason": f"not smoke-run: {reason}; the archive is untested"}
    with tempfile.TemporaryDirectory(prefix="fnpack-smoke-") as tmp:
        root = Path(tmp) / "archive"
        with open_archive(archive) as reader:
            reader.extract_all(root)
        (Path(tmp) / "samples.json").write_text(json.dumps([s["data"] for s in samples]))
        results_path = Path(tmp) / "results.json"
        command = [python, "-I", "-S", "-c", _RUNNER, str(Path(tmp) / "samples.json"), str(results_path)]
        if profile.target == "aws-lambda":
            command.append("--lambda")
        try:
            done = subprocess.run(command, cwd=root, capture_output=True, text=True,
                                  timeout=timeout * max(len(samples), 1) + 60)
        except subprocess.TimeoutExpired:
            raise SmokeTestError("the smoke run timed out", hint="a sample takes longer than `resources.timeout`")
        if not results_path.is_file():
            raise SmokeTestError(f"the archive's handler crashed before answering:\n{_tail(done.stderr)}")
        outcome = json.loads(results_path.read_text())
    if "import_error" in outcome:
        raise SmokeTestError(f"importing the archive's handler failed:\n{_tail(outcome['import_error'])}",
                             hint="a package the code imports may be missing from `requirements:`")
    for i, (sample, result) in enumerate(zip(samples, outcome["results"]), 1):
        for via, answer in result.items():
            _check(i, sample, via, answer)
    return {"status": "passed", "samples": len(samples)}


def _check(index: int, sample: dict[str, Any], via: str, answer: dict[str, Any]) -> None:
    label = f"sample {index}{' (' + sample['source'] + ')' if sample.get('source') else ''} via {via}"
    if answer["status"] != 200:
        body = answer["body"]
        message = body.get("message", body) if isinstance(body, dict) else body
        kind = f"{body.get('type')}: " if isinstance(body, dict) and body.get("type") else ""
        raise SmokeTestError(f"{label} failed with {answer['status']}: {kind}{message}",
                             hint="fix the function or the sample; the build writes no archive until samples pass")
    expect = sample.get("expect")
    if expect is not None and not subset(expect, answer["body"]):
        raise SmokeTestError(f"{label} answered {json.dumps(answer['body'])[:400]}, "
                             f"expected it to contain {json.dumps(expect)[:400]}",
                             hint="fix the function, or the sample's `expect:`")


def subset(expected: Any, actual: Any) -> bool:
    """`expected` matches `actual` when every key it names matches; numbers within 1e-4 relative."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(
            subset(e, a) for e, a in zip(expected, actual))
    if isinstance(expected, float) or isinstance(actual, float):
        return isinstance(actual, (int, float)) and not isinstance(actual, bool) and math.isclose(
            expected, actual, rel_tol=1e-4, abs_tol=1e-6)
    return expected == actual


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
