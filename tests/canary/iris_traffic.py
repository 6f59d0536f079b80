"""An iris function and its users, for the canary tests of the targets whose versions run as processes
(knative's test controller, the fake OpenFaaS gateway): `build` makes its variants, `Traffic` calls it from a
background thread at about `rate` a second, a fifth of the calls (at random) with the setosa row, counting what
each version answered. At random, not in turn: a router's exact shares (OpenFaaS's sends exactly every fifth
request to a 20% canary) would give a canary the same row every time."""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from conftest import EXAMPLES, fnpack

# Rows of iris, one per species and two more; the failing variant refuses the setosa one (ROWS[0]).
ROWS = [{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
        {"sepal_length": 7.0, "sepal_width": 3.2, "petal_length": 4.7, "petal_width": 1.4},
        {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5},
        {"sepal_length": 6.4, "sepal_width": 3.2, "petal_length": 4.5, "petal_width": 1.5},
        {"sepal_length": 5.8, "sepal_width": 2.7, "petal_length": 5.1, "petal_width": 1.9}]
SETOSA, OTHER = ROWS[0], ROWS[2]
# Appended to the example's score.py: the failing variant.
FAILING_SCORE = '''

_score = score


def score(outputs):
    answer = _score(outputs)
    if answer["label"] == "setosa":  # a regression: one species in five crashes the scorer (a 500)
        raise RuntimeError("setosa is not handled in this version")
    return answer
'''


class Traffic:
    def __init__(self, url: str, path: str, version_header: str, headers: dict[str, str] | None = None,
                 rate: float = 40.0) -> None:
        self.url, self.path, self.version_header, self.headers, self.rate = url, path, version_header, headers, rate
        self.answers: Counter[tuple[str, int]] = Counter()  # (version, status)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="canary-traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30, trust_env=False) as client:
            started, sent, rng = time.monotonic(), 0, random.Random(5)
            while not self._stop.is_set():
                try:
                    row = SETOSA if rng.random() < 0.2 else rng.choice(ROWS[1:])
                    answer = client.post(self.path, json=row)
                    self.answers[(answer.headers.get(self.version_header, "?"), answer.status_code)] += 1
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                sent += 1
                time.sleep(max(0.0, started + sent / self.rate - time.monotonic()))


def build(root: Path, name: str, variant: int, target: str, failing: bool = False) -> Path:
    """examples/iris named `name`, built for `target`; variants differ in bytes, `failing` ones crash on setosa."""
    folder = root / f"{name}-{variant}"
    shutil.copytree(EXAMPLES / "iris", folder, ignore=shutil.ignore_patterns("dist", "__pycache__"))
    spec = folder / "fnpack.yaml"
    spec.write_text(spec.read_text().replace("name: iris", f"name: {name}", 1))
    (folder / "features.py").write_text((folder / "features.py").read_text() + f"\n# variant {variant}\n")
    if failing:
        (folder / "score.py").write_text((folder / "score.py").read_text() + FAILING_SCORE)
        setosa = "  - data: {sepal_length: 5.1, sepal_width: 3.5, petal_length: 1.4, petal_width: 0.2}\n" \
                 "    expect: {label: setosa}\n"
        assert setosa in spec.read_text()
        spec.write_text(spec.read_text().replace(setosa, ""))  # the build's smoke test would fail on it
    done = fnpack("build", str(folder), "--target", target, "--json")
    assert done.code == 0, done.stdout + done.stderr
    return Path(done.json()["archive"])
