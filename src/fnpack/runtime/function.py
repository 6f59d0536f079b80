"""A function loaded from an unpacked archive: features -> onnxruntime -> score."""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

MANIFEST = "fnpack.json"
log = logging.getLogger("fnpack.runtime")

NUMPY_DTYPES = {
    "bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "float16": np.float16, "float32": np.float32, "float64": np.float64, "string": np.object_,
}


class RequestError(ValueError):
    """The request does not fit the function: a 4xx, not a crash."""


class Function:
    """Loads the manifest, the model and the user's code once; then answers requests."""

    def __init__(self, root: Path | str) -> None:
        started = time.perf_counter()
        self.root = Path(root)
        self.manifest: dict[str, Any] = json.loads((self.root / MANIFEST).read_text(encoding="utf-8"))
        spec = self.manifest["spec"]
        self.spec = spec
        self.name: str = spec["name"]
        if str(self.root) not in sys.path:  # user modules sit at the archive root
            sys.path.insert(0, str(self.root))
        self.session = ort.InferenceSession(str(self.root / spec["model"]), providers=_providers(spec))
        self.inputs: dict[str, dict[str, Any]] = {i["name"]: i for i in self.manifest["model"]["inputs"]}
        self.outputs: dict[str, dict[str, Any]] = {o["name"]: o for o in self.manifest["model"]["outputs"]}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.extract = _load_callable(spec.get("features"))
        self.score = _load_callable(spec.get("score"))
        # Records can share one model call when every input's first dimension is the batch.
        self.batchable = all(i["shape"] and i["shape"][0] == -1 for i in self.inputs.values())
        self.timeout: float = spec.get("resources", {}).get("timeout", 30)
        self.load_seconds = time.perf_counter() - started

    def __call__(self, request: Any) -> Any:
        return self.finish(self.run(self.prepare(request)))

    def prepare(self, request: Any) -> dict[str, np.ndarray]:
        """The extractor's model inputs for one record, checked against the model's inputs."""
        try:
            feeds = self.extract(request) if self.extract else request
        except (ValueError, KeyError, TypeError) as exc:  # the extractor's way to say "bad request"
            raise RequestError(f"{type(exc).__name__}: {exc}") from exc
        return self.check_feeds(feeds)

    def finish(self, outputs: dict[str, np.ndarray]) -> Any:
        return self.score(outputs) if self.score else {k: v.tolist() for k, v in outputs.items()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feeds)))

    def call_many(self, requests: list[Any]) -> list[Any]:
        """Answers (or the exception, per record) for many records, in one model call when possible."""
        results: list[Any] = [None] * len(requests)
        prepared: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                prepared.append((i, self.prepare(request)))
            except Exception as exc:  # one bad record fails only itself
                results[i] = exc
        for i, outputs in self._run_prepared(prepared):
            try:
                results[i] = outputs if isinstance(outputs, Exception) else self.finish(outputs)
            except Exception as exc:
                results[i] = exc
        return results

    def _run_prepared(self, prepared: list[tuple[int, dict[str, np.ndarray]]]) -> list[tuple[int, Any]]:
        if len(prepared) > 1 and self.batchable:
            sizes = [len(next(iter(feeds.values()))) for _, feeds in prepared]
            try:
                joined = {name: np.concatenate([feeds[name] for _, feeds in prepared]) for name in self.inputs}
                outputs = self.run(joined)
            except Exception:
                outputs = None  # e.g. a ragged dimension: fall back to one call per record
            if outputs is not None and all(len(v) == sum(sizes) for v in outputs.values()):
                offsets = np.cumsum([0, *sizes])
                return [(i, {k: v[offsets[n]:offsets[n + 1]] for k, v in outputs.items()})
                        for n, (i, _) in enumerate(prepared)]
        answers = []
        for i, feeds in prepared:
            try:
                answers.append((i, self.run(feeds)))
            except Exception as exc:
                answers.append((i, exc))
        return answers

    def check_feeds(self, feeds: Any) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            if len(self.inputs) != 1:
                raise RequestError(f"expected an object with the inputs {sorted(self.inputs)}")
            feeds = {next(iter(self.inputs)): feeds}
        missing = sorted(set(self.inputs) - set(feeds))
        extra = sorted(set(feeds) - set(self.inputs))
        if missing or extra:
            raise RequestError(f"inputs do not match the model: missing {missing}, unexpected {extra}; "
                               f"expected {sorted(self.inputs)}")
        return {name: as_tensor(name, value, self.inputs[name]) for name, value in feeds.items()}


def as_tensor(name: str, value: Any, spec: dict[str, Any]) -> np.ndarray:
    dtype = NUMPY_DTYPES[spec["dtype"]]
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise RequestError(f"input {name!r}: cannot convert to {spec['dtype']}: {exc}") from None
    shape = spec["shape"]
    if array.ndim != len(shape) or any(d != -1 and d != n for d, n in zip(shape, array.shape)):
        raise RequestError(f"input {name!r}: expected shape {shape} (-1: any), got {list(array.shape)}")
    return array


def _load_callable(ref: str | None) -> Callable[[Any], Any] | None:
    if not ref:
        return None
    module_name, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _providers(spec: dict[str, Any]) -> list[str]:
    available = ort.get_available_providers()
    wants_gpu = spec.get("resources", {}).get("gpu", 0) > 0
    chosen = ["CUDAExecutionProvider", "CPUExecutionProvider"] if wants_gpu and \
        "CUDAExecutionProvider" in available else ["CPUExecutionProvider"]
    if wants_gpu and chosen[0] != "CUDAExecutionProvider":
        log.warning("the spec asks for a GPU but CUDAExecutionProvider is not available; using CPU")
    log.info("execution providers: %s", chosen)
    return chosen
