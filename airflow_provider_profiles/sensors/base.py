"""Wait for an existing vendor job: ``poke`` in poke/reschedule mode, the job's trigger when deferrable."""

from __future__ import annotations

import time
from typing import Any

from airflow.providers.common.compat.sdk import (
    AirflowSensorTimeout,
    BaseSensorOperator,
    PokeReturnValue,
)

from airflow_provider_profiles.operators.base import (
    DEFAULT_JOB_RETRIES,
    DEFAULT_JOB_RETRY_DELAY,
    JobWaitMixin,
    default_deferrable,
)


class JobSensor(JobWaitMixin, BaseSensorOperator):
    """Base of the vendor sensors. A subclass sets ``hook_class`` and ``vendor`` (its key in ``VENDORS``) and implements ``job()``.

    Succeeds with the vendor's final status payload as its XCom value, fails when the job fails.
    Deferrable mode checks once, then hands the wait to the trigger with the sensor's ``timeout``
    as the deadline; nothing holds a worker slot meanwhile.
    """

    def __init__(self, *, conn_id: str | None = None, deferrable: bool = default_deferrable(),
                 retries: int | None = DEFAULT_JOB_RETRIES, retry_delay: Any = DEFAULT_JOB_RETRY_DELAY, **kwargs: Any):
        super().__init__(retries=retries, retry_delay=retry_delay, **kwargs)  # why: see DEFAULT_JOB_RETRIES
        self.conn_id = conn_id or self.hook_class.default_conn_name
        self.deferrable = deferrable

    @property
    def poll_interval(self) -> float:
        return float(self.poke_interval)

    def job(self) -> dict[str, Any]:
        """The ids of the job to watch, from the (rendered) sensor arguments."""
        raise NotImplementedError

    def poke(self, context: Any) -> PokeReturnValue:
        job = self.job()
        status = self.hook.job_status(**job)
        self.raise_if_failed(job, status)
        self.log.info("%s job %s is %s", self.hook.hook_name, job, status.vendor_status)
        return PokeReturnValue(is_done=status.terminal, xcom_value=status.payload if status.terminal else None)

    def execute(self, context: Any) -> Any:
        if not self.deferrable:
            return super().execute(context)
        result = self.poke(context)
        if result.is_done:
            return result.xcom_value
        self.defer_to_trigger(self.job(), time.time() + self.timeout)

    def on_deadline(self, job: dict[str, Any], vendor_status: str) -> None:
        # The sensor did not create the job, so it leaves it running.
        raise AirflowSensorTimeout(f"{self.hook.hook_name} job {job} still {vendor_status} after {self.timeout}s")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        status = self.status_from_trigger(event["job"], event)
        self.raise_if_failed(event["job"], status)
        return status.payload
