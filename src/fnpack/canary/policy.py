"""What a rollout does and what it accepts: steps, interval and thresholds, parsed from their written form
(`--interval 1m`, `--max-error-rate 1%`, `--max-latency p99=300ms`, `--max-regression 1.5x`), from the CLI or
the spec's `canary:` section (`CanarySettings`), the CLI winning."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fnpack.errors import UsageError

DEFAULT_STEPS = (5, 25, 50, 100)
MIN_WAIT = 30.0  # seconds: the least a window waits for its requests unless --max-wait says otherwise
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_LATENCY = re.compile(r"p([0-9]+(?:\.[0-9]+)?)=(.+)")


def parse_duration(text: str | float, what: str = "--interval") -> float:
    """Seconds from 90, 90s, 1.5m, 300ms, 1h."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        found = _DURATION.fullmatch(str(text).strip())
        if not found:
            raise UsageError(f"{what} {text!r} is not a duration", hint="e.g. 30s, 1m, 1.5m, 300ms or 1h")
        seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if not math.isfinite(seconds):  # nan never ends a window (nothing is >= nan), inf never either
        raise UsageError(f"{what} {text!r} is not a finite duration", hint="e.g. 30s, 1m, 1.5m, 300ms or 1h")
    if seconds <= 0:
        raise UsageError(f"{what} {text!r} must be more than 0")
    return seconds


def parse_rate(text: str | float, what: str = "--max-error-rate") -> float:
    """A fraction from 1%, 0.5% or 0.01."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a rate", hint="e.g. 1% or 0.01") from None
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{what} {text!r} is out of range", hint="a rate is in [0%, 100%]")
    return value


def parse_latency(text: str, what: str = "--max-latency") -> tuple[float, float]:
    """(quantile, seconds) from p99=300ms, p95=0.2s or 300ms (p99)."""
    raw = str(text).strip()
    found = _LATENCY.fullmatch(raw)
    quantile, limit = (round(float(found.group(1)) / 100, 6), found.group(2)) if found else (0.99, raw)
    if not 0.0 < quantile < 1.0:
        raise UsageError(f"{what} {text!r}: the quantile must be between p0 and p100", hint="e.g. p99=300ms")
    return quantile, parse_duration(limit, what)


def parse_factor(text: str | float, what: str = "--max-regression") -> float:
    """A factor from 1.5x or 1.5."""
    raw = str(text).strip().lower().removesuffix("x")
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a factor", hint="e.g. 1.5x: the canary at most 1.5 times "
                                                                    "slower than the primary") from None
    if not math.isfinite(value):  # nan would turn the check off: no ratio is > nan
        raise UsageError(f"{what} {text!r} is not a finite factor", hint="e.g. 1.5x: the canary at most 1.5 times "
                                                                           "slower than the primary")
    if value < 1.0:
        raise UsageError(f"{what} {text!r} must be at least 1x", hint="1.5x lets the canary be 1.5 times slower")
    return value


def parse_steps(text: str | list[Any] | tuple[Any, ...], what: str = "--steps") -> tuple[int, ...]:
    """Percent steps from "5,25,50,100" (or a list): increasing, each in 1..100."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else list(text)
    try:
        steps = tuple(int(str(p).strip().removesuffix("%")) for p in parts if str(p).strip())
    except ValueError:
        raise UsageError(f"{what} {text!r} is not a list of percents", hint="e.g. 5,25,50,100") from None
    if not steps or any(not 1 <= s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise UsageError(f"{what} {text!r}: steps are increasing percents from 1 to 100",
                         hint="e.g. 5,25,50,100 (100 promotes; it is implied when left out)")
    if steps[0] == 100:
        raise UsageError(f"{what} {text!r}: a rollout needs a step below 100 to judge the canary at",
                         hint="e.g. 5,25,50,100; `fnpack alias set` moves an alias at once")
    return steps


@dataclass(frozen=True)
class Policy:
    """A rollout's steps (percents; promotion after the last) and what each window must show."""

    steps: tuple[int, ...] = DEFAULT_STEPS
    interval: float = 60.0
    max_error_rate: float = 0.01
    quantile: float = 0.99
    max_latency: float | None = None  # seconds at `quantile`
    max_regression: float | None = None  # canary's latency at most this times the primary's
    min_requests: int = 50
    max_wait: float | None = None  # how long a window may wait for min_requests (default: 10 intervals, >= 30 s)

    def __post_init__(self) -> None:
        if self.min_requests < 1:
            raise UsageError(f"--min-requests {self.min_requests} must be at least 1",
                             hint="too little traffic is not success: a window needs requests to judge")

    @property
    def windows(self) -> tuple[int, ...]:
        """The steps that are judged (all but a final 100, which is the promotion)."""
        return tuple(s for s in self.steps if s < 100)

    @property
    def wait_limit(self) -> float:
        # at least 30 s by default: 10 intervals of a short one (1 s) is less than a cold start can take
        return self.max_wait if self.max_wait is not None else max(10 * self.interval, MIN_WAIT)

    def describe(self) -> str:
        limits = [f"errors <= {self.max_error_rate:.2%}".replace(".00%", "%")]
        if self.max_latency is not None:
            limits.append(f"p{self.quantile * 100:g} <= {ms(self.max_latency)}")
        if self.max_regression is not None:
            limits.append(f"p{self.quantile * 100:g} <= {self.max_regression:g}x the primary's")
        return (f"steps {','.join(map(str, self.steps))} every {duration_text(self.interval)}, "
                f"{', '.join(limits)}, at least {self.min_requests} requests a window")

    def to_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "interval": self.interval, "max_error_rate": self.max_error_rate,
                "quantile": self.quantile, "max_latency": self.max_latency, "max_regression": self.max_regression,
                "min_requests": self.min_requests, "max_wait": self.wait_limit}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 10 else f"{seconds:.3g} s"


def duration_text(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


class CanarySettings(BaseModel):
    """The spec's `canary:` section: a project's rollout defaults (`fnpack canary`, `fnpack deploy --canary`)."""

    model_config = ConfigDict(extra="forbid")

    steps: list[int] | None = Field(default=None, description="Percent steps, e.g. [5, 25, 50, 100].")
    interval: str | float | None = Field(default=None, description="Time per step, e.g. 1m or 30s.")
    max_error_rate: str | float | None = Field(default=None, description="e.g. 1% (5xx answers).")
    max_latency: str | None = Field(default=None, description="e.g. p99=300ms.")
    max_regression: str | float | None = Field(default=None, description="e.g. 1.5x the primary's latency.")
    min_requests: int | None = Field(default=None, description="Canary requests a window needs to be judged.")
    max_wait: str | float | None = Field(default=None, description="How long a window waits for them.")
    load: Literal["none", "samples"] | None = Field(default=None, description="samples: send the spec's samples "
                                                                              "as synthetic traffic.")

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        # pydantic takes true for 1 (steps: [true], min_requests: true, interval: true = 1 s): a typo, not a value
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise ValueError("a boolean is not a value here")
        return value

    @field_validator("min_requests")
    @classmethod
    def _at_least_one(cls, value: Any) -> Any:
        if value is not None and value < 1:
            raise ValueError(f"{value} must be at least 1 (too little traffic is not success)")
        return value

    @field_validator("steps", "interval", "max_error_rate", "max_latency", "max_regression", "max_wait")
    @classmethod
    def _parses(cls, value: Any, info: Any) -> Any:
        if value is not None:
            try:
                _PARSERS[info.field_name](value, info.field_name)
            except UsageError as exc:
                raise ValueError(f"{exc.message}{f' ({exc.hint})' if exc.hint else ''}") from None
        return value

    def policy(self, **overrides: Any) -> Policy:
        """The policy of these settings with the CLI's options (not None) over them."""
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        given.update({k: v for k, v in overrides.items() if v is not None})
        return build_policy(**given)


_PARSERS: dict[str, Any] = {"steps": parse_steps, "interval": parse_duration, "max_error_rate": parse_rate,
                            "max_latency": parse_latency, "max_regression": parse_factor, "max_wait": parse_duration}


def build_policy(steps: Any = None, interval: Any = None, max_error_rate: Any = None, max_latency: Any = None,
                 max_regression: Any = None, min_requests: int | None = None, max_wait: Any = None,
                 **_: Any) -> Policy:
    """A policy from written values (each None: the default)."""
    policy = Policy()
    changes: dict[str, Any] = {}
    if steps is not None:
        changes["steps"] = parse_steps(steps)
    if interval is not None:
        changes["interval"] = parse_duration(interval)
    if max_error_rate is not None:
        changes["max_error_rate"] = parse_rate(max_error_rate)
    if max_latency is not None:
        changes["quantile"], changes["max_latency"] = parse_latency(max_latency)
    if max_regression is not None:
        changes["max_regression"] = parse_factor(max_regression)
    if min_requests is not None:
        changes["min_requests"] = int(min_requests)
    if max_wait is not None:
        changes["max_wait"] = parse_duration(max_wait, "--max-wait")
    return replace(policy, **changes)
