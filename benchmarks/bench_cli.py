#!/usr/bin/env python3
"""Benchmark deploys and CLI commands against the local platform, each beside `curl` making the same API calls.

In one run, on examples/iris, against one `fnpack serve` (a free loopback port, a fresh state folder):
  1. Deploy of a built archive: `fnpack deploy ARCHIVE` of an archive no version has (a variant of iris,
     `# variant N` appended to score.py, built before anything is timed, one per run), vs. curl uploading
     another such variant and pointing `live` at the new version (POST .../versions, PUT .../aliases/live).
     The platform's own share, the POST's duration in its access log, is shown beside it.
  2. Redeploy of an unchanged archive: `fnpack deploy` of an archive a version already has, vs. curl
     reading what the CLI reads to find that out (GET .../versions, GET .../aliases); and the archive
     uploads the platform logged meanwhile (must be none).
  3. `fnpack ls` vs. curl GET /api/v1/functions.
  4. `fnpack alias set iris live V` (alternating between two versions, so each is a move) vs. curl PUT.
For information: `python -m fnpack --version`, the cost of starting the CLI at all, and a bare Typer app
with two options running one command: the floor of any Typer command on this machine.

Each figure is the median wall time of N runs (7, 3 with --quick), each command a fresh process as a user
runs it; fnpack's commands run as an installed CLI does, with their bytecode cached (in a temporary
PYTHONPYCACHEPREFIX, warmed once). Between runs the benchmark waits for the platform to go idle (a deploy
prewarms the new version in the background). Needs curl and fnpack installed in the interpreter's
environment. Progress goes to stderr, the result to stdout; the exit status is 0 even when a goal fails.

    python benchmarks/bench_cli.py [--quick] [--json] [--keep]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IRIS = REPO / "examples" / "iris"
FUNCTION = "iris"
FNPACK = [sys.executable, "-m", "fnpack"]
# name -> (limit in seconds, what it is)
GOALS: dict[str, tuple[float, str]] = {
    "deploy": (0.5, "deploy of a built archive"),
    "redeploy": (0.2, "redeploy of an unchanged archive"),
    "ls": (0.25, "fnpack ls"),
    "alias_set": (0.25, "fnpack alias set"),
}


# The floor of any Typer command: Typer 0.2x coerces every option through pydantic (a TypeAdapter each).
BARE_TYPER = """import typer
app = typer.Typer()
@app.command("ls")
def ls(url: str = typer.Option(None, "--url"), as_json: bool = typer.Option(False, "--json")) -> None:
    pass
@app.command("other")
def other() -> None:
    pass
app(prog_name="bare")
"""
# What would point the commands elsewhere (a user's platform, context or target), or keep bytecode uncached.
_UNSET = {"FNPACK_URL", "FNPACK_STATE_DIR", "FNPACK_TOKEN", "FNPACK_INVOKE_TOKEN", "FNPACK_CONTEXT", "FNPACK_TARGET",
          "FNPACK_CONFIG", "PYTHONDONTWRITEBYTECODE"}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any]) -> None:
    """End a child started here and its process group: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            continue


def run(command: list[str], env: dict[str, str], timeout: float = 300
        ) -> tuple[float, subprocess.CompletedProcess[str]]:
    """(wall seconds, the finished process) of one command in its own process group; a failure raises."""
    began = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        stop(proc)
        raise
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {proc.returncode}:\n{err[-2000:]}")
    return seconds, subprocess.CompletedProcess(command, proc.returncode, out, err)


class Platform:
    """One `fnpack serve` in its own process group, with its own state folder and port."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.state = tmp / "state"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "serve.log"
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen([*FNPACK, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                                          "--state-dir", str(self.state)], stdout=log_file,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        give_up = time.monotonic() + 60
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > give_up:
                raise RuntimeError(f"fnpack serve did not come up:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        self.token = (self.state / "token").read_text().strip()

    def healthy(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def stop(self) -> None:
        stop(self.proc)

    def cpu_seconds(self) -> float:
        """CPU time of the gateway and everything it started (its process group), from /proc."""
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) == self.proc.pid:  # the process group the gateway leads
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def settle(self, limit: float = 20.0) -> None:
        """Wait until the platform uses under 2 % of a CPU over 0.3 s (a deploy prewarms in the background)."""
        give_up = time.monotonic() + limit
        before = self.cpu_seconds()
        while time.monotonic() < give_up:
            time.sleep(0.3)
            now = self.cpu_seconds()
            if now - before < 0.006:
                return
            before = now
        log(f"the platform did not go idle within {limit:g} s; measuring anyway")

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()


def curl(platform: Platform, *requests: tuple[str, str, dict[str, Any]]) -> list[str]:
    """One curl process making the requests in order (--next between them), each with the bearer token."""
    command = ["curl"]
    for index, (method, path, options) in enumerate(requests):
        if index:
            command.append("--next")
        command += ["-sS", "--fail", "-o", "/dev/null", "-X", method, "-H", f"Authorization: Bearer {platform.token}"]
        if "file" in options:
            command += ["-H", "Content-Type: application/zip", "--data-binary", f"@{options['file']}"]
        if "json" in options:
            command += ["-H", "Content-Type: application/json", "-d", json.dumps(options["json"])]
        command.append(platform.url + path)
    return command


def live(version: int) -> dict[str, Any]:
    return {"json": {"primary": version, "canary": None, "weight": 0, "reason": "bench"}}


def build_variants(tmp: Path, count: int, env: dict[str, str]) -> list[Path]:
    """`count` archives of iris, each with `# variant N` appended to score.py: each a version of its own."""
    archives = []
    for index in range(count):
        folder = tmp / f"iris-{index}"
        shutil.copytree(IRIS, folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
        with open(folder / "score.py", "a", encoding="utf-8") as f:
            f.write(f"\n# variant {index}\n")
        _, done = run([*FNPACK, "build", str(folder), "--json"], env, timeout=600)
        archives.append(Path(json.loads(done.stdout)["archive"]))
        log(f"built variant {index + 1}/{count}: {archives[-1].name}")
    return archives


def uploads(platform: Platform, since: int) -> list[float]:
    """The durations (s) of the archive uploads the platform logged after line `since` of its log."""
    pattern = re.compile(rf"POST /api/v1/functions/{FUNCTION}/versions 20[01] ([\d.]+)ms")
    return [float(m[1]) / 1000 for line in platform.log_lines()[since:] if (m := pattern.search(line))]


def bench(quick: bool, keep: bool) -> dict[str, Any]:
    runs = 3 if quick else 7
    tmp = Path(tempfile.mkdtemp(prefix="fnpack-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if k not in _UNSET}
    env.update({"FNPACK_CONFIG": str(tmp / "config.yaml"),  # serve registers a context: not in the user's file
                "PYTHONPYCACHEPREFIX": str(tmp / "pycache")})  # bytecode cached, as an installed CLI has it
    platform = None
    try:
        log(f"building {2 * runs + 1} variants of iris (not timed)")
        archives = build_variants(tmp, 2 * runs + 1, env)
        platform = Platform(tmp, env)
        env.update({"FNPACK_URL": platform.url, "FNPACK_STATE_DIR": str(platform.state)})
        log(f"fnpack serve at {platform.url}")
        figures: dict[str, Any] = {"runs": runs, "archive_bytes": archives[0].stat().st_size}
        samples: dict[str, dict[str, list[float]]] = {}

        def timed(name: str, fnpack: list[str], baseline: list[str]) -> None:
            platform.settle()
            seconds_f, _ = run(fnpack, env)
            platform.settle()
            seconds_c, _ = run(baseline, env)
            entry = samples.setdefault(name, {"fnpack": [], "curl": []})
            entry["fnpack"].append(seconds_f)
            entry["curl"].append(seconds_c)

        run([*FNPACK, "--version"], env)  # warms the bytecode cache
        run([*FNPACK, "ls"], env)
        figures["cli_start_s"] = statistics.median(run([*FNPACK, "--version"], env)[0] for _ in range(runs))
        bare = tmp / "bare_typer.py"
        bare.write_text(BARE_TYPER)
        run([sys.executable, str(bare), "ls"], env)
        figures["bare_typer_s"] = statistics.median(run([sys.executable, str(bare), "ls"], env)[0] for _ in range(runs))

        log(f"1. deploy of a built archive, {runs} times each")
        since = len(platform.log_lines())
        for index in range(runs):  # fnpack's deploy makes version 2i+1, curl's 2i+2
            mine, theirs = archives[2 * index], archives[2 * index + 1]
            timed("deploy", [*FNPACK, "deploy", str(mine)], curl(
                platform, ("POST", f"/api/v1/functions/{FUNCTION}/versions", {"file": theirs}),
                ("PUT", f"/api/v1/functions/{FUNCTION}/aliases/live", live(2 * index + 2))))
        server = uploads(platform, since)
        figures["deploy_platform_s"] = statistics.median(server[0::2]) if server else None  # fnpack's uploads
        figures["deploy_platform_curl_s"] = statistics.median(server[1::2]) if server else None

        log(f"2. redeploy of an unchanged archive, {runs} times each")
        unchanged = archives[0]
        run([*FNPACK, "deploy", str(unchanged)], env)  # live back on its version: each timed run changes nothing
        since = len(platform.log_lines())
        for _ in range(runs):
            timed("redeploy", [*FNPACK, "deploy", str(unchanged)], curl(
                platform, ("GET", f"/api/v1/functions/{FUNCTION}/versions", {}),
                ("GET", f"/api/v1/functions/{FUNCTION}/aliases", {})))
        figures["redeploy_uploads"] = len(uploads(platform, since))
        figures["redeploy_bytes_uploaded"] = figures["redeploy_uploads"] * unchanged.stat().st_size

        log(f"3. fnpack ls, {runs} times each")
        for _ in range(runs):
            timed("ls", [*FNPACK, "ls"], curl(platform, ("GET", "/api/v1/functions", {})))

        log(f"4. fnpack alias set, {runs} times each")
        for index in range(runs):
            target = 1 + index % 2
            timed("alias_set", [*FNPACK, "alias", "set", FUNCTION, "live", str(target)], curl(
                platform, ("PUT", f"/api/v1/functions/{FUNCTION}/aliases/live", live(3 - target))))

        for name, entry in samples.items():
            fnpack_s, curl_s = statistics.median(entry["fnpack"]), statistics.median(entry["curl"])
            limit = GOALS[name][0]
            passed = fnpack_s <= limit and (name != "redeploy" or figures["redeploy_bytes_uploaded"] == 0)
            figures[name] = {"fnpack_s": fnpack_s, "curl_s": curl_s, "ratio": fnpack_s / curl_s, "goal_s": limit,
                             "pass": passed, "samples": entry}
        return figures
    finally:
        if platform is not None:
            platform.stop()
        if keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(figures: dict[str, Any]) -> str:
    lines = [f"fnpack CLI against the local platform, iris ({figures['archive_bytes'] / 2**20:.1f} MiB archive), "
             f"median of {figures['runs']} runs, wall seconds", "",
             f"{'':<36}{'fnpack':>9}{'curl':>9}{'ratio':>8}   goal"]
    for name, (limit, what) in GOALS.items():
        f = figures[name]
        extra = f"  and 0 bytes uploaded ({figures['redeploy_bytes_uploaded']} B)" if name == "redeploy" else ""
        lines.append(f"{what:<36}{f['fnpack_s']:>9.3f}{f['curl_s']:>9.3f}{f['ratio']:>7.1f}x   "
                     f"<= {limit:g} s{extra}: {'PASS' if f['pass'] else 'FAIL'}")
    lines += ["", "for information:",
              f"  the platform's share of a deploy (its POST .../versions in the access log): "
              f"{figures['deploy_platform_s']:.3f} s (curl's: {figures['deploy_platform_curl_s']:.3f} s)"
              if figures["deploy_platform_s"] is not None else
              "  the platform's share of a deploy: not found in its access log",
              f"  `python -m fnpack --version` (starting the CLI at all): {figures['cli_start_s']:.3f} s",
              f"  a bare Typer app with two options, one command run (any Typer command's floor): "
              f"{figures['bare_typer_s']:.3f} s"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 runs of each figure instead of 7")
    parser.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (state, logs, archives)")
    args = parser.parse_args()
    if not shutil.which("curl"):
        sys.exit("curl not found: the baselines need it")
    # SIGTERM/SIGHUP unwind like Ctrl-C, so the finally block stops the platform and deletes the temp folder.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    try:
        figures = bench(args.quick, args.keep)
    except KeyboardInterrupt:
        print("interrupted; platform stopped, temp folder removed", file=sys.stderr)
        return 130
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(figures, indent=2) if args.json else report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
