"""The runtime images (runtimes/container/Dockerfile and Dockerfile.cuda) cannot be built here (no Docker
engine): what they run is tested instead. Their files agree with the pod spec fnpack generates (entrypoint,
port, user, cache folder), they install only pyproject's `worker` extra, and `python -m fnpack.worker`, given
only that extra's packages (no numpy, no onnxruntime: those come in the archive), started with the pod spec's
command, arguments and environment, fetches the archive from file://, http:// and S3 (moto_server) and answers
on the Knative route's path."""

from __future__ import annotations

import http.server
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import EXAMPLES
from servers import free_port, stop, wait_ready

from fnpack.targets.knative import manifests as m
from fnpack.targets.knative.settings import KnativeSettings

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "runtimes" / "container"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def instructions(name: str) -> list[tuple[str, str]]:
    """The Dockerfile's instructions (keyword, rest), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (IMAGES / name).read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


def final_stage(name: str) -> list[tuple[str, str]]:
    steps = instructions(name)
    last = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(pair.split("=", 1) for keyword, rest in stage if keyword == "ENV" for pair in rest.split())


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_image_runs_what_the_pod_spec_says(name):
    stage = final_stage(name)
    container = m.revision_template(function="f", number=1, sha256="ab" * 32, archive_uri="s3://b/k", spec={},
                                    runtime="python3.11", settings=KnativeSettings(), storage=m.PodStorage(),
                                    created_at="t", actor="a")["spec"]["containers"][0]
    (entrypoint,) = [rest for keyword, rest in stage if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == container["command"] == ["python", "-m", "fnpack.worker"]
    assert [rest for keyword, rest in stage if keyword == "EXPOSE"] == [str(m.PORT)]
    (user,) = [rest for keyword, rest in stage if keyword == "USER"]
    assert all(part.isdigit() and int(part) > 0 for part in user.split(":")), "runAsNonRoot needs a numeric uid"
    env = env_of(stage)
    assert env["FNPACK_CACHE_DIR"] == m.CACHE_DIR and env["HOME"] == "/tmp" and env["PORT"] == str(m.PORT)
    # The container platform of runtime.toml (Debian 12, glibc 2.36) in both stages.
    assert {rest for keyword, rest in instructions(name) if keyword == "FROM"} == {
        "python:${PYTHON}-slim-bookworm AS build", "python:${PYTHON}-slim-bookworm"}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_image_installs_fnpack_without_its_dependencies_and_the_worker_extra_only(name):
    runs = " ".join(rest for keyword, rest in final_stage(name) if keyword == "RUN")
    assert "--no-deps /tmp/dist/fnpack-" in runs and "-r /tmp/dist/worker.txt" in runs
    assert "optional-dependencies']['worker']" in (IMAGES / name).read_text()
    assert not re.search(r"\b(onnxruntime|numpy)\b", runs), "the archives vendor numpy and onnxruntime"


def test_the_worker_extra_is_a_subset_of_fnpacks_dependencies_without_the_cli_or_the_model_stack():
    dependencies = {canonicalize_name(Requirement(r).name): r for r in PYPROJECT["project"]["dependencies"]}
    worker = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["worker"]]
    for requirement in worker:
        assert str(requirement) == str(Requirement(dependencies[canonicalize_name(requirement.name)]))
    names = {canonicalize_name(r.name) for r in worker}
    assert names == {"uvicorn", "uvloop", "httptools", "httpx", "boto3", "zipfile-deflate64"}
    assert not names & {"onnxruntime", "onnxruntime-gpu", "numpy", "typer", "rich", "pydantic", "pyyaml",
                        "fastapi", "mangum", "awslambdaric", "prometheus-client"}


def test_the_cuda_image_provides_the_libraries_onnxruntime_gpu_loads():
    text = (IMAGES / "Dockerfile.cuda").read_text()
    (libs,) = re.findall(r'ARG CUDA_LIBS="([^"]+)"', text)
    # onnxruntime-gpu 1.31.1's own `cuda` and `cudnn` extras, and cuBLAS, which its CUDA provider links.
    assert set(libs.split()) == {"nvidia-cuda-runtime~=13.0", "nvidia-cublas~=13.0", "nvidia-cuda-nvrtc~=13.0",
                                 "nvidia-cufft~=12.0", "nvidia-curand~=10.0", "nvidia-cudnn-cu13~=9.0"}
    for lib in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libcudnn.so.9"):
        assert lib in text  # the build checks the loader finds each
    for runtime in ("python3.11", "python3.12"):
        cuda = tomllib.loads((REPO / "runtimes" / runtime / "runtime.toml").read_text())["platforms"]
        assert "onnxruntime-gpu==1.31.1" in cuda["container-cuda"]["packages"]


# --- the entrypoint as a plain process, with only the image's packages ------------------------------------------


def closure(requirements: list[str]) -> set[str]:
    """The installed distributions `pip install REQUIREMENTS` would bring (markers evaluated, no extras)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        todo += [Requirement(r) for r in importlib.metadata.distribution(name).requires or []]
    return seen


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site folder holding what the image installs, linked from this environment: fnpack (from src/) and the
    distributions of the `worker` extra with their dependencies. `python -S` with it on PYTHONPATH sees
    nothing else of this environment."""
    site = tmp_path_factory.mktemp("image-site")
    (site / "fnpack").symlink_to(REPO / "src" / "fnpack")
    for name in closure(PYPROJECT["project"]["optional-dependencies"]["worker"]):
        dist = importlib.metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            source = Path(str(dist.locate_file(top)))
            if top not in ("..", "fnpack") and source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return site


def image_python(site: Path, *args: str, env: dict[str, str] | None = None, **kwargs):
    return subprocess.run([sys.executable, "-S", *args], env={"PATH": "/usr/bin:/bin", "HOME": str(site),
                                                                "PYTHONPATH": str(site), **(env or {})},
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_the_image_site_has_no_numpy_onnxruntime_or_cli_packages(image_site):
    probe = image_python(image_site, "-c", "import importlib.util as u; print([n for n in ('numpy', 'onnxruntime', "
                                          "'pydantic', 'typer', 'yaml', 'fastapi', 'mangum') if u.find_spec(n)])")
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stderr


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):
    from fnpack.build.pipeline import build

    folder = tmp_path_factory.mktemp("iris") / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    return build(folder, target="knative", out=folder / "dist")


@pytest.fixture(scope="module")
def http_store(archive) -> Iterator[str]:
    """The archive's folder served over plain HTTP, as an http(s):// model store serves it."""
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(archive.archive.parent), **k)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def serve_as_the_pod(site: Path, template: dict, secret: dict[str, str], cache: Path) -> str:
    """Start the container of a revision template as a process: its command and args, its environment, the
    Secret's keys as environment (envFrom), and what Knative adds (PORT, K_*); check it answers."""
    (container,) = template["spec"]["containers"]
    port = free_port()
    env = {e["name"]: e["value"] for e in container["env"]}
    env.update(secret)
    env.update({"PORT": str(port), "K_SERVICE": "iris", "K_CONFIGURATION": "iris", "K_REVISION": "iris-v1",
                "HOST": "127.0.0.1",  # the pod listens on 0.0.0.0; loopback is enough here
                "FNPACK_CACHE_DIR": str(cache),  # the pod's is /tmp/fnpack-cache: one per test here
                "PATH": "/usr/bin:/bin", "HOME": str(cache), "PYTHONPATH": str(site)})
    command = container["command"]
    assert command[0] == "python"
    process = subprocess.Popen([sys.executable, "-S", *command[1:], *container["args"]], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}{container['readinessProbe']['httpGet']['path']}", process)
        answer = httpx.post(f"http://127.0.0.1:{port}/", json=SETOSA, timeout=30)  # the route's own URL
        assert answer.status_code == 200 and answer.json()["label"] == "setosa", answer.text
    finally:
        stop(process)
    return process.stderr.read() if process.stderr else ""


def template_for(uri: str, sha256: str, storage: m.PodStorage, settings: KnativeSettings) -> dict:
    return m.revision_template(function="iris", number=1, sha256=sha256, archive_uri=uri, spec={}, runtime="python3.11",
                               settings=settings, storage=storage, created_at="2026-01-01T00:00:00+00:00",
                               actor="test")


@pytest.mark.slow
def test_the_entrypoint_serves_an_archive_from_file_and_http_with_only_the_image_packages(image_site, archive,
                                                                                        http_store, tmp_path):
    from fnpack.targets.knative.storage import HttpStore

    settings = KnativeSettings()
    log = serve_as_the_pod(image_site, template_for(archive.archive.resolve().as_uri(), archive.sha256,
                                                    m.PodStorage(), settings), {}, tmp_path / "file")
    assert "CPUExecutionProvider" in log
    store = HttpStore(http_store)
    (Path(archive.archive.parent) / "archives").mkdir(exist_ok=True)
    shutil.copy(archive.archive, Path(archive.archive.parent) / "archives" / f"{archive.sha256}.zip")
    serve_as_the_pod(image_site, template_for(store.uri(archive.sha256), archive.sha256, store.pod(), settings), {},
                     tmp_path / "http")


@pytest.mark.slow
def test_the_entrypoint_serves_an_archive_from_s3_as_the_pod_spec_says(image_site, archive, moto_endpoint,
                                                                     monkeypatch, tmp_path):
    """The deploy's own S3 store uploads the archive to moto_server and names what the pods get: the endpoint
    (storage_endpoint), the region, and the Secret (here its keys given to the process directly)."""
    import boto3

    from fnpack.targets.knative.storage import open_store

    secret = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    for key, value in {**secret, "AWS_ENDPOINT_URL": moto_endpoint, "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    bucket = f"models-{os.getpid()}"
    boto3.session.Session().client("s3").create_bucket(Bucket=bucket)
    settings = KnativeSettings(storage=f"s3://{bucket}/fnpack", storage_endpoint=moto_endpoint,
                               storage_secret="fnpack-storage")
    store = open_store(settings)
    store.put(archive.archive, archive.sha256)
    template = template_for(store.uri(archive.sha256), archive.sha256, store.pod(), settings)
    (container,) = template["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "fnpack-storage"}}]
    assert {e["name"]: e["value"] for e in container["env"]}["AWS_ENDPOINT_URL"] == moto_endpoint
    serve_as_the_pod(image_site, template, secret, tmp_path / "s3")
