"""The polling loop every vendor trigger shares: poll a job's status until it ends or a deadline passes."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

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

# an HTML page or a truncated body on a 200 is transient too: a proxy in trouble, the next poll may be fine
TRANSIENT_ERRORS = (VendorConnectionError, VendorServerError, VendorRateLimitError, VendorResponseError)

# Event statuses; a trigger yields exactly one event.
SUCCESS, FAILED, TIMEOUT, ERROR = "success", "failed", "timeout", "error"


class JobTrigger(BaseTrigger):
    """Poll ``hook_class(conn_id).ajob_status(**job)`` every ``poll_interval`` seconds.

    Ends with one event ``{"status": success|failed|timeout|error, "job", "vendor_status", "message",
    "result"}``: success/failed when the vendor job ends, timeout at the absolute ``deadline`` (epoch
    seconds), error on a non-transient API error or more than ``max_transient_errors`` transient ones
    in a row (each already retried by the hook's policy). A vendor trigger only sets ``hook_class``.
    """

    hook_class: ClassVar[type[ProfilesHook]]

    def __init__(
        self,
        *,
        conn_id: str,
        job: dict[str, Any],
        deadline: float,
        poll_interval: float = 30.0,
        max_transient_errors: int = 5,
    ):
        super().__init__()
        self.conn_id = conn_id
        self.job = dict(job)
        self.deadline = float(deadline)
        self.poll_interval = float(poll_interval)
        self.max_transient_errors = int(max_transient_errors)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "job": self.job,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "max_transient_errors": self.max_transient_errors,
            },
        )

    def _event(self, status: str, message: str, vendor: JobStatus | None = None) -> TriggerEvent:
        return TriggerEvent({
            "status": status,
            "job": self.job,
            "message": message,
            "vendor_status": vendor.vendor_status if vendor else None,
            "result": vendor.payload if vendor else None,
        })

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self.hook_class(self.conn_id)
        failures_in_a_row = 0
        try:
            while True:
                # Sleep first: the task checked the status just before deferring. (It also keeps a
                # trigger from firing within moments of the deferral, which Airflow 3.3's scheduler
                # can mistake for a state mismatch and fail the task: apache/airflow#71580.)
                # +-10% jitter spreads the polls of many triggers started together.
                remaining = self.deadline - time.time()
                await asyncio.sleep(max(0.0, min(remaining, self.poll_interval * random.uniform(0.9, 1.1))))
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
                if status is not None and status.terminal:
                    outcome = SUCCESS if status.state is JobState.SUCCESS else FAILED
                    yield self._event(outcome, status.message or status.vendor_status, status)
                    return
                if time.time() >= self.deadline:
                    last = status.vendor_status if status else "unknown"
                    yield self._event(TIMEOUT, f"job {self.job} still {last} at the deadline", status)
                    return
        finally:
            await hook.aclose()

    async def on_kill(self) -> None:
        """A user killed the deferred task: cancel the vendor job where the vendor allows it."""
        hook = self.hook_class(self.conn_id)
        try:
            await hook.acancel_job(**self.job)
            self.log.info("cancelled job %s", self.job)
        except JobNotCancellable as reason:
            self.log.info("job %s not cancelled: %s", self.job, reason)
        finally:
            await hook.aclose()


def status_from_event(event: dict[str, Any]) -> JobStatus:
    """The vendor status carried by a success/failed event."""
    state = JobState.SUCCESS if event["status"] == SUCCESS else JobState.FAILED
    return JobStatus(state, event.get("vendor_status") or "", event.get("result") or {}, event.get("message"))
