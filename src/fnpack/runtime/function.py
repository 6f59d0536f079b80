"""A function loaded from an unpacked archive: features -> onnxruntime -> score."""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from fnpack.runtime import logs

MANIFEST = "fnpack.json"

NUMPY_DTYPES = {
    "bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "float16": np.float16, "float32": np.float32, "float64": np.float64, "string": np.object_,
}


class RequestError(ValueError):
    """The request does not fit the function: a 4xx, not a crash."""


class BadRequest(RequestError):
    """The body is not JSON at all: a 400, where JSON that does not fit is a 422."""


class CallTimedOut(BaseException):
    """Raised inside a call that overran its timeout (watchdog.py; BaseException: `except Exception` in
    user code does not swallow it)."""


# onnxruntime's errors for inputs it refuses at run time. InvalidArgument is a feed of the wrong rank,
# size or type; Fail with one of these words is a kernel meeting shapes that do not fit (a symbolic
# dimension of the wrong size, two batch sizes); other failures are the model's own: a 500.
_ORT_INPUT_ERRORS = (InvalidArgument, Fail)
_SHAPE_WORDS = ("dimension", "shape", "broadcast", "rank")
_HUGE_EXPONENT = re.compile(rb"[0-9][eE]\+?[0-9]{3}")  # a number such as 1e999, which json reads as inf


def loads(body: bytes, what: str = "the body", finite: bool = True) -> Any:
    """A request's JSON. BadRequest when it is not JSON, or nests deeper than the parser's recursion
    limit (json.loads raises RecursionError). With `finite`, a RequestError naming where a NaN or an
    Infinity is: Python's json reads them (the literals, and 1e999), JSON has no such numbers, and
    the model would answer NaN for them."""
    found: list[str] = []

    def constant(literal: str) -> float:
        found.append(literal)
        return float(literal)

    try:
        value = json.loads(body, parse_constant=constant if finite else None)
    except RecursionError:
        raise BadRequest(f"{what} nests JSON arrays or objects too deeply to parse (the limit is "
                         f"about {sys.getrecursionlimit()} levels)") from None
    except ValueError as exc:  # includes UnicodeDecodeError
        raise BadRequest(f"{what} is not JSON: {exc}") from None
    if finite and (found or _HUGE_EXPONENT.search(body)):  # the walk only when there may be one
        where = _non_finite_at(value)
        if where is not None:
            raise RequestError(f"{where[0]} is {where[1]}, which is not a JSON number; "
                               "expected a finite number (or null for a missing value)")
    return value


def _non_finite_at(value: Any) -> tuple[str, str] | None:
    """Where the first NaN or Infinity is in parsed JSON, e.g. "'petal_length'" or "[2]['x']", and which."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:  # iterative: the document may nest as deep as the parser allows
        path, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return path or "the value", "NaN" if math.isnan(node) else "Infinity" if node > 0 else "-Infinity"
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        stack.extend(reversed([(f"{path}[{key!r}]" if path or not isinstance(key, str) else repr(key), child)
                               for key, child in items]))
    return None


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
        # What the session really runs on: onnxruntime falls back to the CPU when CUDA's libraries are missing.
        logs.info("execution providers: %s", self.session.get_providers())
        self.inputs: dict[str, dict[str, Any]] = {i["name"]: i for i in self.manifest["model"]["inputs"]}
        self.outputs: dict[str, dict[str, Any]] = {o["name"]: o for o in self.manifest["model"]["outputs"]}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.shared_dims = _shared_dims(self.session.get_inputs())
        self.extract = _load_callable(spec.get("features"))
        # An extractor that declares `takes_list = True` is called with a list of records and returns the
        # inputs of them all (first dimension: one row per record, in order): once per batch.
        self.extract_takes_list = bool(getattr(self.extract, "takes_list", False))
        self.score = _load_callable(spec.get("score"))
        # Records can share one model call when every input's first dimension is the batch.
        self.batchable = all(i["shape"] and i["shape"][0] == -1 for i in self.inputs.values())
        self.timeout: float = spec.get("resources", {}).get("timeout", 30)
        self.load_seconds = time.perf_counter() - started

    def __call__(self, request: Any) -> Any:
        return self.finish(self.run(self.prepare(request)))

    def prepare(self, request: Any) -> dict[str, np.ndarray]:
        """The extractor's model inputs for one record, checked against the model's inputs."""
        return self._listed_feeds([request]) if self.extract_takes_list else self.check_feeds(self._extract(request))

    def _listed_feeds(self, requests: list[Any]) -> dict[str, np.ndarray]:
        """A list-taking extractor's inputs for the records, checked: one row per record."""
        feeds = self.check_feeds(self._extract(requests))
        if any(len(array) != len(requests) for array in feeds.values()):
            got = ", ".join(f"{name!r} {len(array)}" for name, array in feeds.items())
            raise RequestError(f"the features function takes a list (takes_list) and must return one row per "
                               f"record: {len(requests)} record(s), got {got}")
        return feeds

    def _extract(self, request: Any) -> Any:
        try:
            return self.extract(request) if self.extract else request
        except (ValueError, KeyError, TypeError) as exc:  # the extractor's way to say "bad request"
            raise RequestError(f"{type(exc).__name__}: {exc}") from exc

    def finish(self, outputs: dict[str, np.ndarray]) -> Any:
        return self.score(outputs) if self.score else {k: v.tolist() for k, v in outputs.items()}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The model's outputs; a RequestError when the inputs' shapes do not fit the model."""
        for symbol, axes in self.shared_dims.items():  # what onnxruntime would only say as a kernel error
            sizes = [(name, feeds[name].shape[axis]) for name, axis in axes
                     if name in feeds and feeds[name].ndim > axis]
            if len({size for _, size in sizes}) > 1:
                got = ", ".join(f"{name!r} {size}" for name, size in sizes)
                raise RequestError(f"the inputs must agree on the dimension the model calls {symbol!r}; got {got}")
        try:
            return dict(zip(self.output_names, self.session.run(None, feeds)))
        except _ORT_INPUT_ERRORS as exc:
            message = str(exc).split("Status Message: ")[-1].split(" : ", 3)[-1]
            if isinstance(exc, Fail) and not any(word in message.lower() for word in _SHAPE_WORDS):
                raise
            shapes = ", ".join(f"{name!r} {list(array.shape)}" for name, array in feeds.items())
            raise RequestError(f"the model cannot run on inputs of shapes {shapes}: {message[:300]}; expected "
                               + ", ".join(f"{n!r} {i['shape']} (-1: any)" for n, i in self.inputs.items())) from None

    def call_many(self, requests: list[Any]) -> list[Any]:
        """Answers (or the exception, per record) for many records, in one model call when possible."""
        results: list[Any] = [None] * len(requests)
        answers = self._run_listed(requests) if self.extract_takes_list and len(requests) > 1 else None
        if answers is None:
            prepared: list[tuple[int, dict[str, np.ndarray]]] = []
            for i, request in enumerate(requests):
                try:
                    prepared.append((i, self.prepare(request)))
                except Exception as exc:  # one bad record fails only itself
                    results[i] = exc
            answers = self._run_prepared(prepared)
        for i, outputs in answers:
            try:
                results[i] = outputs if isinstance(outputs, Exception) else self.finish(outputs)
            except Exception as exc:
                results[i] = exc
        return results

    def _run_listed(self, requests: list[Any]) -> list[tuple[int, Any]] | None:
        """One extractor call and one model call for all the records; None when either fails (a bad record
        among them): then each goes on its own, so that it fails only itself."""
        try:
            feeds = self._listed_feeds(requests)
        except Exception:
            return None
        return self._run_split(feeds, [1] * len(requests), list(range(len(requests))))

    def _run_prepared(self, prepared: list[tuple[int, dict[str, np.ndarray]]]) -> list[tuple[int, Any]]:
        if len(prepared) > 1 and self.batchable:
            try:
                joined = {name: np.concatenate([feeds[name] for _, feeds in prepared]) for name in self.inputs}
            except Exception:
                joined = None  # e.g. a ragged dimension: fall back to one call per record
            split = None if joined is None else self._run_split(
                joined, [len(next(iter(feeds.values()))) for _, feeds in prepared], [i for i, _ in prepared])
            if split is not None:
                return split
        answers = []
        for i, feeds in prepared:
            try:
                answers.append((i, self.run(feeds)))
            except Exception as exc:
                answers.append((i, exc))
        return answers

    def _run_split(self, joined: dict[str, np.ndarray], sizes: list[int], indices: list[int]
                   ) -> list[tuple[int, Any]] | None:
        """One model call on joined inputs, its outputs split back into `sizes` rows per record; None when
        the call fails or an output does not have a row per input row."""
        try:
            outputs = self.run(joined)
        except Exception:
            return None
        if not all(len(v) == sum(sizes) for v in outputs.values()):
            return None
        offsets = np.cumsum([0, *sizes])
        return [(i, {k: v[offsets[n]:offsets[n + 1]] for k, v in outputs.items()}) for n, i in enumerate(indices)]

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


def _shared_dims(inputs: list[Any]) -> dict[str, list[tuple[str, int]]]:
    """Symbolic dimensions (e.g. "batch") that several inputs have: their sizes must be equal."""
    axes: dict[str, list[tuple[str, int]]] = {}
    for arg in inputs:
        for axis, dim in enumerate(arg.shape):
            if isinstance(dim, str) and dim:
                axes.setdefault(dim, []).append((arg.name, axis))
    return {symbol: found for symbol, found in axes.items() if len(found) > 1}


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
        logs.log().warning("the spec asks for a GPU but CUDAExecutionProvider is not available; using CPU")
    return chosen
