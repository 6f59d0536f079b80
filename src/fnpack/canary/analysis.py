"""Judging a window: the canary's figures (and the primary's, for a regression) against the policy's
thresholds. Knows no target: Flagger's `runBuiltinMetricChecks`, with a verdict that says why in one line,
which becomes the alias move's reason in the history."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fnpack.canary.observer import Figures
from fnpack.canary.policy import Policy, ms


@dataclass(frozen=True)
class Verdict:
    """`pass`: every threshold holds over enough requests; `fail`: one does not (`text` says which);
    `wait`: too few canary requests yet to say."""

    outcome: Literal["pass", "fail", "wait"]
    text: str
    usable: bool = True  # False: no counts to judge at all (NaN, a counter reset), not merely too few


def judge(policy: Policy, canary: Figures, primary: Figures | None) -> Verdict:
    """The window's verdict. Too little traffic is never a pass: below `min_requests` it is `wait`; so are
    figures that are no counts (NaN, negative, more errors than requests: a counter reset, a broken source)."""
    if not _counts(canary):
        return Verdict("wait", f"figures that are no counts ({canary.requests:g} requests, {canary.errors:g} "
                               "errors: did a counter reset?)", usable=False)
    if canary.requests < policy.min_requests:
        return Verdict("wait", f"{canary.requests:.0f} of {policy.min_requests} requests needed")
    label = canary.statistic or f"p{policy.quantile * 100:g}"
    parts = [f"errors {percent(canary.error_rate)} (max {percent(policy.max_error_rate)})"]
    failed = [parts[0]] if canary.error_rate > policy.max_error_rate else []
    if policy.max_latency is not None or policy.max_regression is not None:
        if canary.latency is None or not math.isfinite(canary.latency):
            text = f"{label} unknown (the metrics have no latency)"
            return Verdict("fail", f"{text}, {parts[0]}")
        latency = f"{label} {ms(canary.latency)}"
        if policy.max_latency is not None:
            part = f"{latency} (max {ms(policy.max_latency)})"
            parts.append(part)
            if canary.latency > policy.max_latency:
                failed.append(part)
        if policy.max_regression is not None:
            if (primary is not None and _counts(primary) and primary.requests >= policy.min_requests
                    and primary.latency and math.isfinite(primary.latency) and primary.latency > 0):
                ratio = canary.latency / primary.latency
                part = f"{ratio:.2f}x the primary's {ms(primary.latency)} (max {policy.max_regression:g}x)"
                parts.append(part)
                if ratio > policy.max_regression:
                    failed.append(f"{latency}, {part}")
            else:
                parts.append("no primary baseline in this window")
    elif canary.latency is not None:
        parts.append(f"{label} {ms(canary.latency)}")
    over = f" over {canary.requests:.0f} requests"
    if failed:
        return Verdict("fail", "; ".join(failed) + over)
    return Verdict("pass", ", ".join(parts) + over)


def _counts(figures: Figures) -> bool:
    requests, errors = figures.requests, figures.errors
    return math.isfinite(requests) and math.isfinite(errors) and 0 <= errors <= requests


def percent(rate: float) -> str:
    return f"{rate * 100:.2g}%" if rate < 0.1 else f"{rate * 100:.1f}%"
