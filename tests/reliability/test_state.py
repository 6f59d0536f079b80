"""The state folder under stress: numbers never reused, refused and crashed deploys leave nothing,
a deploy whose connection drops is verified instead of reported failed, a full disk is a clear 507,
a read-only folder a clear 503, and SIGTERM always stops the gateway and its children.

Real parts: `fnpack serve` and the `fnpack` CLI as processes, a real TCP proxy that loses the
answer or cuts the upload, real tmpfs and read-only bind mounts (root only: skipped otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import EXAMPLES, fnpack
from fnpack.archive.fetch import verify_unpacked
from fnpack.platform.isolation import remove_tree
from servers import all_gone, alive, free_port, platform, platform_process, wait_ready, worker_pids

pytestmark = pytest.mark.slow

SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
# What a healthy state folder holds besides versions' archives and trees.
BOOKKEEPING = re.compile(r"(registry\.db(-wal|-shm)?|token|serve\.lock|logs/.*)")


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """iris built once, and variants made by editing its manifest (each another sha256)."""
    tmp = tmp_path_factory.mktemp("archives")
    folder = tmp / "iris"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    built = fnpack("build", str(folder), "--out", str(tmp / "out"), "--json")
    assert built.code == 0, built.stderr + built.stdout
    a = Path(built.json()["archive"])

    def timeout(seconds: float) -> Callable[[dict], None]:
        return lambda m: m["spec"]["resources"].update(timeout=seconds)

    return {"a": a, "b": _remanifest(a, tmp / "b.zip", timeout(29)), "c": _remanifest(a, tmp / "c.zip", timeout(28)),
            "old-python": _remanifest(a, tmp / "py.zip", lambda m: m.update(python="3.9")),
            "other": _remanifest(a, tmp / "other.zip", lambda m: (m.update(name="other"), m["spec"].update(name="other")))}


def _remanifest(source: Path, target: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of an archive whose fnpack.json is edited (its files, and so verification, unchanged)."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "fnpack.json":
                manifest = json.loads(data)
                edit(manifest)
                data = json.dumps(manifest, sort_keys=True).encode()
            zout.writestr(info, data)
    return target


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Api:
    def __init__(self, url: str, state: Path) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60,
                                 headers={"authorization": f"Bearer {(state / 'token').read_text().strip()}"})

    def deploy(self, archive: Path, name: str = "iris") -> httpx.Response:
        return self.http.post(f"/api/v1/functions/{name}/versions", content=archive.read_bytes(),
                              headers={"content-type": "application/zip"})

    def alias(self, name: str, primary: int) -> httpx.Response:
        return self.http.put(f"/api/v1/functions/{name}/aliases/live", json={"primary": primary})

    def invoke(self, qualifier: str, timeout: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}/function/{qualifier}", json=SETOSA, timeout=timeout)


def _cli(*args: str, url: str, state: Path, env: dict[str, str] | None = None):
    return fnpack(*args, "--url", url, "--state-dir", str(state),
                  env={"FNPACK_TOKEN": "", "FNPACK_TARGET": "local", **(env or {})})


def _strays(state: Path) -> list[str]:
    """Files in the state folder that are neither bookkeeping nor a version's archive or tree."""
    versions = set()
    with contextlib.suppress(Exception):
        import sqlite3

        with contextlib.closing(sqlite3.connect(f"file:{state / 'registry.db'}?mode=ro", uri=True)) as db:
            versions = {r[0] for r in db.execute("SELECT sha256 FROM versions")}
    strays = []
    for path in sorted(state.rglob("*")):
        rel = path.relative_to(state).as_posix()
        if path.is_dir() and rel in ("archives", "unpacked", "incoming", "logs"):
            continue
        top = rel.split("/")
        if BOOKKEEPING.fullmatch(rel) or (top[0] == "unpacked" and top[1] in versions) or \
                (top[0] == "archives" and len(top) == 2 and top[1].removesuffix(".zip") in versions):
            continue
        strays.append(rel)
    return strays


def _zygotes(state: Path, parent: int | None = None) -> list[int]:
    """Zygotes (and the workers they forked, which keep their command line) of trees under `state`."""
    found = subprocess.run(["pgrep", "-f", f"fnpack.platform.zygote --root {state}"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split() if parent is None or _parent(int(p)) == parent]


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().split(") ")[1].split()[1])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _mount(command: str, path: Path) -> None:
    done = subprocess.run(command, shell=True, capture_output=True, text=True)
    if done.returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
        pytest.skip(f"cannot mount here (needs root and mount rights): {done.stderr.strip()}")


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own at `path`, to fill up."""
    path.mkdir(parents=True, exist_ok=True)
    _mount(f"mount -t tmpfs -o size={size},mode=0700 tmpfs {path}", path)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[None]:
    """Make `path` read-only under a running gateway: a read-only bind mount stacked over it. Files the
    gateway holds open stay writable (as on a filesystem remounted read-only); every open by path fails."""
    _mount(f"mount --bind {path} {path} && mount -o remount,bind,ro {path}", path)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --- 1. numbers ------------------------------------------------------------------------------------


def test_a_deleted_version_number_is_never_given_again(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        api = Api(url, state)
        assert [api.deploy(archives[k]).json()["version"]["number"] for k in "ab"] == [1, 2]
        assert api.http.delete("/api/v1/functions/iris/versions/2").status_code == 200
        third = api.deploy(archives["c"]).json()["version"]
        assert (third["number"], third["sha256"]) == (3, _sha(archives["c"]))
        assert api.invoke("iris:3").headers["x-fnpack-version"] == "3"
        assert api.invoke("iris:2").status_code == 404  # 2 named b's archive, and nothing else ever
        assert api.http.delete("/api/v1/functions/iris").status_code == 200
        assert api.deploy(archives["b"]).json()["version"]["number"] == 4  # even across a deleted function


# --- 2. refused deploys and crash leftovers ------------------------------------------------------------


def test_refused_deploys_leave_nothing_in_the_state_folder(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as z:
        z.writestr("fnpack.json", json.dumps({"files": {}}))
        z.writestr("../escape.py", "print('out')")
    with platform(state) as url:
        api = Api(url, state)
        for archive, name, status, says in [
            (archives["a"], "digits", 422, "the archive is function 'iris', not 'digits'"),
            (archives["old-python"], "iris", 422, "built for Python 3.9"),
            (unsafe, "iris", 422, "escape.py"),
            (EXAMPLES / "iris" / "model.onnx", "iris", 422, "not a zip"),
        ]:
            refused = api.deploy(archive, name)
            assert (refused.status_code, refused.json()["exit_code"]) == (status, 10), refused.text
            assert says in refused.json()["message"]
            assert _strays(state) == [], f"{archive.name} as {name} left files behind"
            assert list((state / "unpacked").iterdir()) == []
        assert api.http.get("/api/v1/functions").json() == {"functions": []}
        assert api.deploy(archives["a"]).status_code == 201  # the same bytes, under their own name


def test_leftovers_of_a_crash_are_swept_at_the_next_start(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state) as url:
        version = Api(url, state).deploy(archives["a"]).json()["version"]
    sha = version["sha256"]
    leftovers = [state / "incoming" / "tmpab12cd.zip", state / "archives" / ".incoming-x1y2z3",
                 state / "unpacked" / f".{sha}.q7w8e9.part" / "numpy" / "__init__.py",
                 state / "unpacked" / ("0" * 64) / "fnpack.json"]  # a tree no version uses (a refused deploy's)
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    with platform(state) as url:
        assert _strays(state) == []
        assert Api(url, state).invoke("iris:1").json()["label"] == "setosa"  # what is used stays


# --- 3. a deploy whose connection drops ------------------------------------------------------------------


class Proxy:
    """A TCP proxy in front of the gateway. On the first archive upload it either loses the answer
    (forwards the request, reads the gateway's answer, closes the client's connection instead), or
    calls `cut` once half the archive went through (to kill the gateway mid-upload)."""

    def __init__(self, upstream_port: int, mode: str, after: Callable[[], None] = lambda: None) -> None:
        self.upstream_port, self.mode, self.after = upstream_port, mode, after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.fired = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        except OSError:
            client.close()
            return
        upload = {"seen": False, "bytes": 0, "mine": False}

        def up() -> None:
            with contextlib.suppress(OSError):
                while data := client.recv(1 << 16):
                    if b"POST /api/v1/functions/" in data:
                        with self._lock:
                            upload["mine"] = not self.fired.is_set()
                            upload["seen"] = True
                            if upload["mine"]:
                                self.fired.set()
                    if upload["mine"]:
                        upload["bytes"] += len(data)
                        if self.mode == "cut" and upload["bytes"] > 8 << 20:
                            self.after()  # kills the gateway: the rest of the upload has nowhere to go
                            break
                    upstream.sendall(data)
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=up, daemon=True)
        sender.start()
        with contextlib.suppress(OSError):
            while data := upstream.recv(1 << 16):
                if upload["mine"] and self.mode == "lose":
                    break  # the gateway answered (it committed the version); the client never hears it
                client.sendall(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if upload["mine"] and self.mode == "lose":
            self.after()


class Gateway:
    """`fnpack serve` on a fixed port, which a test can kill and start again."""

    def __init__(self, state: Path) -> None:
        self.state, self.port, self.process = state, free_port(), None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "fnpack", "serve", "--port", str(self.port),
                                         "--state-dir", str(self.state)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"http://127.0.0.1:{self.port}/healthz", self.process)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


@contextlib.contextmanager
def _behind_proxy(state: Path, mode: str, after: Callable[[Gateway], None]) -> Iterator[tuple[Gateway, Proxy]]:
    gateway = Gateway(state)
    gateway.start()
    proxy = Proxy(gateway.port, mode, lambda: after(gateway))
    try:
        yield gateway, proxy
    finally:
        proxy.close()
        gateway.stop()


def test_a_deploy_whose_answer_was_lost_reports_the_version_it_made(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with _behind_proxy(state, "lose", lambda _: None) as (gateway, proxy):
        done = _cli("deploy", str(archives["a"]), url=proxy.url, state=state)
        assert proxy.fired.is_set()
        assert done.code == 0, done.stdout + done.stderr
        assert "deployed iris v1 (new version)" in done.stdout and "alias    live: (new) -> v1" in done.stdout
        assert "the connection dropped during the upload" in done.stderr and "iris v1" in done.stderr
        api = Api(f"http://127.0.0.1:{gateway.port}", state)
        assert [v["number"] for v in api.http.get("/api/v1/functions/iris/versions").json()["versions"]] == [1]
        assert api.invoke("iris").json()["label"] == "setosa"


def test_a_deploy_cut_by_a_gateway_restart_is_verified_and_completed(archives: dict, tmp_path: Path) -> None:
    state = tmp_path / "state"
    restarter: list[threading.Thread] = []

    def restart(gateway: Gateway) -> None:
        gateway.kill()
        restarter.append(threading.Thread(target=gateway.start))  # back a little later, as a supervisor would
        restarter[0].start()

    with _behind_proxy(state, "cut", restart) as (gateway, proxy):
        done = _cli("deploy", str(archives["a"]), "--json", url=proxy.url, state=state)
        restarter[0].join()
        assert done.code == 0, done.stdout + done.stderr
        result = done.json()
        assert (result["version"]["number"], result["move"]["after"]["primary"]) == (1, 1)
        assert any("before the platform made a version; uploaded again" in note for note in result["notes"])
        assert Api(f"http://127.0.0.1:{gateway.port}", state).invoke("iris").json()["label"] == "setosa"


def test_a_deploy_whose_platform_does_not_come_back_says_the_outcome_is_unknown(archives: dict,
                                                                               tmp_path: Path) -> None:
    state = tmp_path / "state"
    with _behind_proxy(state, "lose", Gateway.kill) as (gateway, proxy):
        began = time.monotonic()
        done = _cli("deploy", str(archives["a"]), url=proxy.url, state=state, env={"FNPACK_RECONNECT_WAIT": "2"})
        assert time.monotonic() - began < 30
    assert done.code == 11, done.stdout + done.stderr
    assert "whether iris got a version with this archive is unknown" in done.stderr
    assert "fnpack versions iris" in done.stderr and "Server disconnected" not in done.stderr.splitlines()[0][:40]
    assert "Traceback" not in done.stderr
    with platform(state) as url:  # it had committed: the hint's check finds it
        listed = Api(url, state).http.get("/api/v1/functions/iris/versions").json()["versions"]
        assert [v["sha256"] for v in listed] == [_sha(archives["a"])]


# --- 4. a full disk -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, phase", [("16m", "upload"), ("60m", "unpack")])
def test_a_full_disk_is_a_507_that_names_the_space_needed(archives: dict, tmp_path: Path, size: str,
                                                        phase: str) -> None:
    """The iris archive is 26 MiB and 78 MiB unpacked: 16 MiB fails while it streams in, 60 MiB while it
    unpacks (the upload is then moved into the store, which needs no more space)."""
    state = tmp_path / "state"
    with _tmpfs(state, size), platform_process(state) as (url, process):
        api = Api(url, state)
        refused = api.deploy(archives["a"])
        assert refused.status_code == 507, refused.text
        body = refused.json()
        assert set(body) == {"error", "message", "hint", "exit_code"} and body["exit_code"] == 9
        assert body["error"] == "storage-full" and f"the state folder {state} is out of space" in body["message"]
        assert "26.0 MiB" in body["message"] and "MiB unpacked" in body["message"], body["message"]
        assert _strays(state) == [] and list((state / "unpacked").iterdir()) == []

        shown = _cli("deploy", str(archives["a"]), url=url, state=state)
        assert shown.code == 9, shown.stdout + shown.stderr
        lines = shown.stderr.strip().splitlines()
        assert lines[0].startswith("error: the state folder") and "out of space" in lines[0]
        assert len(lines) == 2 and lines[1].startswith("hint: ")
        assert _strays(state) == []

        subprocess.run(["mount", "-o", "remount,size=200m", str(state)], check=True)  # space again
        assert api.deploy(archives["a"]).json()["version"]["number"] == 1
        assert process.poll() is None


def test_a_version_sharing_its_files_with_the_last_one_takes_little_more_than_its_archive(archives: dict,
                                                                                             tmp_path: Path) -> None:
    """150 MiB holds iris v1 (26 MiB stored, moved there from the upload, and 78 MiB unpacked) and v2, built from
    the same folder with its score.py changed: the files v2 stores as v1 does are hard-linked from v1's tree, so
    it needs its archive's space, not 78 MiB more (inflated again, the two would need over 200 MiB). Both serve,
    and v2's tree stays whole without v1's."""
    folder = tmp_path / "iris-next"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    with open(folder / "score.py", "a", encoding="utf-8") as score:
        score.write("\n# the next version\n")
    built = fnpack("build", str(folder), "--out", str(tmp_path / "out"), "--json")
    assert built.code == 0, built.stderr + built.stdout
    following = Path(built.json()["archive"])
    state = tmp_path / "state"
    with _tmpfs(state, "150m"), platform_process(state) as (url, _):
        api = Api(url, state)
        for archive in (archives["a"], following):
            deployed = api.deploy(archive)
            assert deployed.status_code == 201, deployed.text
        assert api.alias("iris", 2).status_code == 200
        assert api.invoke("iris:1").json()["label"] == api.invoke("iris").json()["label"] == "setosa"
        assert api.http.delete("/api/v1/functions/iris/versions/1").status_code == 200
        remove_tree(state / "unpacked" / _sha(archives["a"]))  # as the next start's sweep does
        tree = state / "unpacked" / _sha(following)
        assert verify_unpacked(tree, following, tree.name) == []
        assert api.invoke("iris").headers["x-fnpack-version"] == "2"


# --- 5. a read-only state folder, and SIGTERM -----------------------------------------------------------------


def test_a_read_only_state_folder_is_a_clear_503_and_sigterm_still_stops_everything(archives: dict,
                                                                                    tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform_process(state) as (url, process):
        api = Api(url, state)
        for name in ("iris", "other"):
            assert api.deploy(archives["a" if name == "iris" else "other"], name).status_code == 201
            assert api.alias(name, 1).status_code == 200
            assert api.invoke(name).status_code == 200  # a worker and a zygote each
        children = worker_pids(state, "iris") + worker_pids(state, "other") + _zygotes(state)
        assert len(children) >= 4
        followed = threading.Thread(target=lambda: _drain(api, "/api/v1/functions/iris/logs?follow=1"), daemon=True)
        followed.start()  # a client holding a stream open must not hold the exit either
        with _read_only(state):
            # iris's zygote dies (and its worker with it): the next call needs a new one, which needs
            # the state folder (its log) to start. Before: that call waited forever.
            [zygote] = _zygotes(state / "unpacked" / _sha(archives["a"]), parent=process.pid)
            os.kill(zygote, signal.SIGKILL)
            assert all_gone([zygote, *worker_pids(state, "iris")], 10)
            cold = api.invoke("iris", timeout=60)
            assert cold.status_code == 503, cold.text
            assert f"the state folder {state} cannot be written" in cold.json()["message"], cold.text
            for method, path in [("GET", "/api/v1/functions"), ("GET", "/api/v1/functions/iris/versions"),
                                 ("POST", "/api/v1/functions/iris/versions")]:
                answer = api.http.request(method, path, content=archives["c"].read_bytes() if method == "POST" else None)
                assert answer.status_code == 503, f"{method} {path}: {answer.status_code} {answer.text}"
                body = answer.json()
                assert (body["error"], body["exit_code"]) == ("state-folder", 9)
                assert f"the state folder {state} cannot be written" in body["message"] and body["hint"]
            assert api.invoke("other").status_code == 200  # a warm worker goes on serving
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(20)
            assert time.monotonic() - began < 12
            assert all_gone(children, 5), [p for p in children if alive(p)]
        assert _zygotes(state) == []


def test_serve_on_a_read_only_state_folder_says_so(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with platform(state):
        pass
    with _read_only(state):
        done = fnpack("serve", "--port", str(free_port()), "--state-dir", str(state))
    assert done.code == 9, done.stderr
    assert f"error: the state folder {state} cannot be written: Read-only file system" in done.stderr
    assert "Traceback" not in done.stderr


def _drain(api: Api, path: str) -> None:
    with contextlib.suppress(httpx.HTTPError):
        with api.http.stream("GET", path, timeout=None) as stream:
            for _ in stream.iter_bytes():
                pass


def test_sigterm_stops_a_gateway_whose_request_hangs(archives: dict, tmp_path: Path) -> None:
    """A request that never ends (a followed log) on a healthy platform: SIGTERM still ends it in seconds."""
    state = tmp_path / "state"
    with platform_process(state) as (url, process):
        api = Api(url, state)
        api.deploy(archives["a"])
        api.alias("iris", 1)
        assert api.invoke("iris").status_code == 200
        children = worker_pids(state, "iris") + _zygotes(state)
        threading.Thread(target=lambda: _drain(api, "/api/v1/functions/iris/logs?follow=1"), daemon=True).start()
        time.sleep(0.5)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("the gateway ignored SIGTERM for 20 s")
        assert time.monotonic() - began < 12
        assert all_gone(children, 5)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
