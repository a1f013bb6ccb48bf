"""The one trigger of every vendor with remote jobs: poll a job's status until it ends or a deadline passes.

The vendor is a key of ``vendors.VENDORS`` serialized with the trigger; its hook is looked up there
(never imported from a path in the serialized data), so a new vendor needs no trigger module.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_profiles.hooks.base import (
    JobNotCancellable,
    JobState,
    JobStatus,
    ProfilesHook,
    VendorAPIError,
    VendorConnectionError,
    VendorRateLimitError,
    VendorResponseError,
    VendorServerError,
)
from airflow_provider_profiles.vendors import VENDORS, load

# an HTML page or a truncated body on a 200 is transient too: a proxy in trouble, the next poll may be fine
TRANSIENT_ERRORS = (VendorConnectionError, VendorServerError, VendorRateLimitError, VendorResponseError)

# Event statuses; a trigger yields exactly one event.
SUCCESS, FAILED, TIMEOUT, ERROR = "success", "failed", "timeout", "error"

# "still waiting" at most this often while nothing changes (a change is logged when seen)
HEARTBEAT_SECONDS = 300.0
# numbers in a status payload that are ids or times, not counts
NOT_COUNTS = ("id", "date", "_ts", "_at", "time")


class UnknownJobVendor(ValueError):
    """A trigger's vendor key names no vendor with remote jobs."""


def job_hook_class(vendor: Any) -> type[ProfilesHook]:
    """The hook of a vendor with remote jobs. The key comes from serialized data, so it may only name
    an entry of ``VENDORS`` (whose hook path is ours), never a module to import."""
    spec = VENDORS.get(vendor) if isinstance(vendor, str) else None
    if spec is None or not spec.has_jobs:
        with_jobs = ", ".join(key for key, s in VENDORS.items() if s.has_jobs)
        raise UnknownJobVendor(f"no vendor with remote jobs is called {vendor!r}; choose from {with_jobs}")
    return load(spec.hook)


def first_poll_fraction(conn_id: str, job: dict[str, Any]) -> float:
    """Where in the interval a job's polls fall, in [0, 1): the same for the same job on every start
    (a triggerer restart keeps it), spread evenly over many jobs started together."""
    key = json.dumps([conn_id, job], sort_keys=True, default=str).encode()
    return zlib.crc32(key) / 2**32


def job_counts(payload: Any) -> dict[str, int | float]:
    """The numbers in a status payload (top level and one level down: ``upload_statistics.failed_imports``):
    what a progress line shows. Only numbers: URLs and texts in a payload may carry tokens."""
    counts: dict[str, int | float] = {}
    if not isinstance(payload, dict):
        return counts
    for key, value in payload.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, number in items:
            name = f"{key}.{sub}" if sub is not None else str(key)
            if isinstance(number, (int, float)) and not isinstance(number, bool) and not name.endswith(NOT_COUNTS):
                counts[name] = number
    return counts


class JobTrigger(BaseTrigger):
    """Poll ``<vendor's hook>(conn_id).ajob_status(**job)`` every ``poll_interval`` seconds.

    Ends with one event ``{"status": success|failed|timeout|error, "job", "vendor_status", "message",
    "result"}``: success/failed when the vendor job ends, timeout at the absolute ``deadline`` (epoch
    seconds), error on a non-transient API error, more than ``max_transient_errors`` transient ones in a
    row (each already retried by the hook's policy), or a ``vendor`` that is not a vendor with jobs.

    Polls keep a fixed phase within the interval (``first_poll_fraction``), so many triggers started
    together poll spread out rather than all at once. The log shows each change of status or counts
    and a heartbeat every ``HEARTBEAT_SECONDS`` while nothing changes.
    """

    def __init__(
        self,
        *,
        vendor: str,
        conn_id: str,
        job: dict[str, Any],
        deadline: float,
        poll_interval: float = 30.0,
        max_transient_errors: int = 5,
    ):
        super().__init__()
        self.vendor = vendor
        self.conn_id = conn_id
        self.job = dict(job)
        self.deadline = float(deadline)
        self.poll_interval = float(poll_interval)
        self.max_transient_errors = int(max_transient_errors)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "vendor": self.vendor,
                "conn_id": self.conn_id,
                "job": self.job,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "max_transient_errors": self.max_transient_errors,
            },
        )

    def hook_class(self) -> type[ProfilesHook]:
        return job_hook_class(self.vendor)

    def _event(self, status: str, message: str, vendor: JobStatus | None = None) -> TriggerEvent:
        return TriggerEvent({
            "status": status,
            "job": self.job,
            "message": message,
            "vendor_status": vendor.vendor_status if vendor else None,
            "result": vendor.payload if vendor else None,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            hook = self.hook_class()(self.conn_id)
        except UnknownJobVendor as error:
            yield self._event(ERROR, str(error))
            return
        # The first poll waits at least a tenth of the interval: the task checked the status just before
        # deferring (and a trigger firing within moments of the deferral can be mistaken by Airflow
        # 3.3's scheduler for a state mismatch: apache/airflow#71580). Then one poll per interval.
        started = time.monotonic()
        next_poll = started + self.poll_interval * (0.1 + 0.9 * first_poll_fraction(self.conn_id, self.job))
        failures_in_a_row, polls, seen, logged_at = 0, 0, None, started
        try:
            while True:
                remaining = self.deadline - time.time()
                await asyncio.sleep(max(0.0, min(remaining, next_poll - time.monotonic())))
                if not polls:  # logged at the first poll, not at the start: a triggerer starting many
                    # triggers at once would write all their lines in one turn of the event loop
                    self.log.info("waiting for %s job %s: a status check every %gs until %s", self.vendor,
                                  self.job, self.poll_interval, _utc(self.deadline))
                next_poll += self.poll_interval
                behind = time.monotonic() - next_poll
                if behind > 0 and self.poll_interval > 0:  # a slow poll skips its missed turns, keeping its phase
                    next_poll += self.poll_interval * math.ceil(behind / self.poll_interval)
                polls += 1
                try:
                    status = await hook.ajob_status(**self.job)
                    failures_in_a_row = 0
                except TRANSIENT_ERRORS as error:
                    failures_in_a_row += 1
                    self.log.warning("status check %d failed: %s", failures_in_a_row, error)
                    if failures_in_a_row > self.max_transient_errors:
                        yield self._event(ERROR, f"gave up after {failures_in_a_row} failed status checks: {error}")
                        return
                    status = None
                except VendorAPIError as error:
                    yield self._event(ERROR, str(error))
                    return
                if status is not None:
                    now = time.monotonic()
                    progress = (status.vendor_status, job_counts(status.payload))
                    if progress != seen:
                        seen, logged_at = progress, now
                        self.log.info("%s job %s is %s %s", self.vendor, self.job, *progress)
                    elif now - logged_at >= HEARTBEAT_SECONDS:
                        logged_at = now
                        self.log.info("%s job %s still %s after %d status checks in %.0fs", self.vendor, self.job,
                                      status.vendor_status, polls, now - started)
                if status is not None and status.terminal:
                    outcome = SUCCESS if status.state is JobState.SUCCESS else FAILED
                    self.log.info("%s job %s ended %s: firing %s", self.vendor, self.job, status.vendor_status, outcome)
                    yield self._event(outcome, status.message or status.vendor_status, status)
                    return
                if time.time() >= self.deadline:
                    last = status.vendor_status if status else "unknown"
                    self.log.info("%s job %s still %s at the deadline", self.vendor, self.job, last)
                    yield self._event(TIMEOUT, f"job {self.job} still {last} at the deadline", status)
                    return
        finally:
            await hook.aclose()

    async def on_kill(self) -> None:
        """A user killed the deferred task: cancel the vendor job where the vendor allows it."""
        try:
            hook = self.hook_class()(self.conn_id)
        except UnknownJobVendor as error:
            self.log.warning("job %s not cancelled: %s", self.job, error)
            return
        try:
            await hook.acancel_job(**self.job)
            self.log.info("cancelled job %s", self.job)
        except JobNotCancellable as reason:
            self.log.info("job %s not cancelled: %s", self.job, reason)
        finally:
            await hook.aclose()


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def status_from_event(event: dict[str, Any]) -> JobStatus:
    """The vendor status carried by a success/failed event."""
    state = JobState.SUCCESS if event["status"] == SUCCESS else JobState.FAILED
    return JobStatus(state, event.get("vendor_status") or "", event.get("result") or {}, event.get("message"))
