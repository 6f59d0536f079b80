"""Functions made for tests: an echo model (its answer is its input, so each client can check it got
*its* answer) and a probe whose user code does what the request asks (read a file, write one, read
the environment, allocate memory, sleep), as a hostile function would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from conftest import fnpack

# The probe runs in the feature extractor (user code, in the worker) and hands its result to the
# scorer through a thread-local: without batching, both run in one thread for one request.
PROBE = '''
import json, os, threading, time

_last = threading.local()


def _do(probe):
    op, arg = probe["op"], probe.get("arg")
    try:
        if op == "read":
            with open(arg, "rb") as f:
                return {"ok": True, "bytes": len(f.read(1 << 20))}
        if op == "write":
            with open(arg, "ab") as f:
                f.write(b"# written by another function\\n")
            return {"ok": True}
        if op == "put":  # arg: [path, text], folders made as needed
            os.makedirs(os.path.dirname(arg[0]), exist_ok=True)
            with open(arg[0], "w") as f:
                f.write(arg[1])
            return {"ok": True}
        if op == "control":  # a line on the channel to the gateway, as a hostile worker would forge one
            os.write(int(os.environ["FNPACK_CONTROL_FD"]), (arg + "\\n").encode())
            return {"ok": True}
        if op == "kill-zygote":
            os.kill(os.getppid(), 9)
            return {"ok": True}
        if op == "listdir":
            return {"ok": True, "entries": sorted(os.listdir(arg))}
        if op == "env":
            return {"ok": True, "env": dict(os.environ)}
        if op == "whoami":
            return {"ok": True, "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                    "cwd": os.getcwd(), "pid": os.getpid()}
        if op == "sleep":
            time.sleep(float(arg))
            return {"ok": True}
        if op == "spin":
            end = time.monotonic() + float(arg)
            while time.monotonic() < end:
                pass
            return {"ok": True}
        if op == "allocate":
            block = bytearray(int(arg) << 20)
            for i in range(0, len(block), 4096):  # touch every page: resident, not only reserved
                block[i] = 1
            return {"ok": True, "mib": int(arg)}
        return {"ok": False, "error": f"unknown op {op}"}
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__, "errno": exc.errno}


def extract(request):
    _last.result = _do(request["probe"]) if "probe" in request else None
    return {"x": request.get("x", [[0.0]])}


def score(outputs):
    return {"y": outputs["y"].tolist(), "probe": getattr(_last, "result", None)}
'''


def echo_model(path: Path) -> None:
    """An ONNX Identity: float32 [batch, n] in, the same out."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "echo",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def build_probe(folder: Path, name: str, out: Path, spec: dict[str, Any] | None = None) -> dict:
    """Build a probe function named `name` (echo model + PROBE code); the build's JSON report."""
    folder.mkdir(parents=True)
    echo_model(folder / "model.onnx")
    (folder / "probe.py").write_text(PROBE)
    (folder / "fnpack.yaml").write_text(yaml.safe_dump({
        "name": name, "model": "model.onnx", "features": "probe:extract", "score": "probe:score",
        "samples": [{"data": {"x": [[1.5, 2.5]]}, "expect": {"y": [[1.5, 2.5]]}}], **(spec or {})}))
    result = fnpack("build", str(folder), "--out", str(out), "--json")
    assert result.code == 0, result.stderr + result.stdout
    return result.json()
