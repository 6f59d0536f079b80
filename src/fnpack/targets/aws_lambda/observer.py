"""The aws-lambda target's canary observer: CloudWatch's AWS/Lambda metrics, which Lambda writes for every
invocation through an alias per version that ran it (dimensions FunctionName, Resource=NAME:ALIAS and
ExecutedVersion=N): `Invocations` and `Errors` (Sum) and `Duration` (milliseconds) at the window's quantile.

CloudWatch has one-minute resolution for Lambda and shows a minute's figures a minute or more late: a window
is read as one period from the minute it started in to the end of the current minute (so that each figure is
one datapoint, and a percentile is over the whole window), and only `delay` seconds after it ends.

Percentiles are not available everywhere (metrics written as statistic sets have none; moto's server fails on
them): when CloudWatch refuses the percentile, or has none while there were invocations, the latency is the
window's `Maximum` instead, an upper bound of every quantile (so a verdict can only be stricter), and stays so
for this observer's later reads; `latency_stat` and `latency_note` say which it is.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from typing import Any

from fnpack.canary.observer import Figures, Observer, Window
from fnpack.errors import UsageError
from fnpack.targets.aws_lambda.api import LambdaApi
from fnpack.targets.aws_lambda.errors import aws_error, error_parts

NAMESPACE = "AWS/Lambda"
RESOLUTION = 60  # seconds: Lambda's metrics are per minute
DEFAULT_DELAY = 90.0  # seconds until a minute's figures show in CloudWatch (usually 1 to 1.5 minutes)
DEFAULT_POLL = 10.0  # seconds between reads: figures change once a minute, each read is billed
FALLBACK = "Maximum"
# What CloudWatch (or a stand-in for it) answers when it cannot compute a percentile: fall back, not fail.
_SERVER_ERRORS = {"InternalFailure", "InternalServiceError", "InternalServerError", "ServiceUnavailable", "500"}
_REFUSED = {"InvalidParameterValue", "InvalidParameterCombination", "ValidationError"}


def percentile_stat(quantile: float) -> str:
    """CloudWatch's name of a quantile's statistic: p99 for 0.99, p99.9 for 0.999."""
    return f"p{round(quantile * 100, 6):g}"


def _seconds(variable: str, default: float) -> float:
    """A number of seconds (0 or more) from an environment variable, else the default."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        raise UsageError(f"{variable}={raw!r} is not a number of seconds", hint="e.g. 90 or 0") from None
    if value < 0 or math.isnan(value) or math.isinf(value):
        raise UsageError(f"{variable}={raw!r} must be 0 seconds or more")
    return value


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


class CloudWatchObserver(Observer):
    """Figures per version of an alias from CloudWatch's AWS/Lambda metrics, through the target's own client
    (its region, credentials and endpoint). Needs cloudwatch:GetMetricData."""

    def __init__(self, api: LambdaApi, delay: float | None = None, poll: float | None = None) -> None:
        self.client = api.client("cloudwatch")
        self.region = str(self.client.meta.region_name)
        self.name = f"CloudWatch {NAMESPACE} in {self.region}"
        self.delay = delay if delay is not None else _seconds("FNPACK_CLOUDWATCH_DELAY", DEFAULT_DELAY)
        self.poll = poll if poll is not None else _seconds("FNPACK_CLOUDWATCH_POLL", DEFAULT_POLL)
        self.latency_stat: str | None = None  # the statistic of the last read's latency: p99 ..., or Maximum
        self.fallback_reason: str | None = None  # why the percentile is not used (None: it is)

    @property
    def latency_note(self) -> str | None:
        """A sentence for a verdict whose latency is the Maximum, not the quantile asked for (None: it is that)."""
        if self.fallback_reason is None:
            return None
        return f"latency is CloudWatch's Maximum Duration, an upper bound of the quantile ({self.fallback_reason})"

    # --- reading -----------------------------------------------------------------------------------

    def read(self, window: Window) -> dict[int, Figures]:
        start, end = self.span(window.start, time.time())
        stat = FALLBACK if self.fallback_reason else percentile_stat(window.quantile)
        try:
            values = self._query(window, start, end, stat, counts=True)
        except _Refused as refused:
            values = self._query(window, start, end, FALLBACK, counts=True)
            self._fall_back(f"CloudWatch refused {stat}: {refused.detail}")
            stat = FALLBACK
        missing = [v for v in window.versions if values.get(f"inv{v}") and values.get(f"lat{v}") is None]
        if missing and stat != FALLBACK:  # a percentile with no value over real invocations: statistic sets
            values.update(self._query(window, start, end, FALLBACK, counts=False))
            self._fall_back(f"CloudWatch has no {stat} of Duration for these invocations")
            stat = FALLBACK
        self.latency_stat = stat
        figures = {}
        for version in window.versions:
            requests = values.get(f"inv{version}") or 0.0
            latency = values.get(f"lat{version}")
            seconds = latency / 1000 if latency is not None and requests else None
            figures[version] = Figures(requests, values.get(f"err{version}") or 0.0, seconds,
                                       "max" if stat == FALLBACK and seconds is not None else None)
        return figures

    @staticmethod
    def span(start: float, now: float) -> tuple[int, int]:
        """The window as whole minutes: from the minute it started in to the end of the current one (CloudWatch
        has no finer figures for Lambda, so a window's first minute may hold earlier invocations too)."""
        first = int(start // RESOLUTION) * RESOLUTION
        last = (int(now // RESOLUTION) + 1) * RESOLUTION
        return first, max(last, first + RESOLUTION)

    def _fall_back(self, reason: str) -> None:
        if self.fallback_reason is None:
            self.fallback_reason = reason

    def _query(self, window: Window, start: int, end: int, stat: str, counts: bool) -> dict[str, float | None]:
        """One GetMetricData over [start, end) as one period: {id: value} (None: no datapoint). Counts add up
        over datapoints if CloudWatch still splits the range; latencies take the largest (the conservative one)."""
        from botocore.exceptions import BotoCoreError, ClientError

        queries = []
        for version in window.versions:
            dimensions = [{"Name": "FunctionName", "Value": window.function},
                          {"Name": "Resource", "Value": f"{window.function}:{window.alias}"},
                          {"Name": "ExecutedVersion", "Value": str(version)}]
            wanted = [("lat", "Duration", stat)]
            if counts:
                wanted = [("inv", "Invocations", "Sum"), ("err", "Errors", "Sum"), *wanted]
            for prefix, metric, statistic in wanted:
                queries.append({"Id": f"{prefix}{version}", "ReturnData": True, "MetricStat": {
                    "Metric": {"Namespace": NAMESPACE, "MetricName": metric, "Dimensions": dimensions},
                    "Period": end - start, "Stat": statistic}})
        values: dict[str, float | None] = {q["Id"]: None for q in queries}
        what = f"reading CloudWatch's {NAMESPACE} metrics of {window.function}:{window.alias}"
        arguments: dict[str, Any] = {"MetricDataQueries": queries, "StartTime": _utc(start), "EndTime": _utc(end)}
        try:
            while True:
                answer = self.client.get_metric_data(**arguments)
                for result in answer.get("MetricDataResults", []):
                    found = [float(v) for v in result.get("Values") or [] if not math.isnan(float(v))]
                    if not found:
                        continue
                    key, before = result["Id"], values.get(result["Id"])
                    if key.startswith("lat"):
                        values[key] = max(found + ([before] if before is not None else []))
                    else:
                        values[key] = sum(found) + (before or 0.0)
                if not answer.get("NextToken"):
                    return values
                arguments["NextToken"] = answer["NextToken"]
        except ClientError as exc:
            code, message, status = error_parts(exc)
            if stat.startswith("p") and (code in _SERVER_ERRORS or status >= 500 or code in _REFUSED):
                said = f": {message[:200]}" if message and not message.lstrip().startswith("<") else ""
                raise _Refused(f"{code or status}{said}") from None
            raise aws_error(exc, "cloudwatch", what) from None
        except BotoCoreError as exc:
            raise aws_error(exc, "cloudwatch", what) from None


class _Refused(Exception):
    """CloudWatch could not answer a percentile query (the Maximum is asked for instead)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
