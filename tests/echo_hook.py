"""A hook, trigger, operator and sensor for the echo test emulator: the smallest users of the shared bases."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from airflow_provider_profiles.hooks.base import (
    Call,
    JobNotCancellable,
    JobState,
    JobStatus,
    ProfilesHook,
    VendorValidationError,
)
from airflow_provider_profiles.operators.base import RemoteJobOperator
from airflow_provider_profiles.sensors.base import JobSensor
from airflow_provider_profiles.triggers.base import JobTrigger

STATES = {"queued": JobState.RUNNING, "running": JobState.RUNNING, "done": JobState.SUCCESS,
          "failed": JobState.FAILED, "cancelled": JobState.FAILED}


class EchoHook(ProfilesHook):
    default_conn_name = "echo_default"
    conn_type = "echo"
    hook_name = "Echo"
    default_base_urls = {"local": "http://127.0.0.1:9/"}
    default_region = "local"
    secret_extras = ("signing_secret",)

    def auth_headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.connection.password or ""}

    def job_status_call(self, *, job_id: str) -> Call:
        return Call("GET", f"/jobs/{job_id}", self._status)

    @staticmethod
    def _status(response: Any) -> JobStatus:
        body = response.json()
        return JobStatus(STATES[body["status"]], body["status"], body, body.get("message"))

    def cancel_job_call(self, *, job_id: str) -> Generator[Call, Any, None]:
        try:
            yield Call("POST", f"/jobs/{job_id}/cancel", idempotent=True)
        except VendorValidationError as exc:  # 409: already finished
            raise JobNotCancellable(str(exc)) from exc


class EchoTrigger(JobTrigger):
    """The echo vendor is the tests' own, not in VENDORS: its hook is named here, in code."""

    def hook_class(self) -> type[EchoHook]:
        return EchoHook


class EchoJobOperator(RemoteJobOperator):
    hook_class = EchoHook
    vendor = "echo"
    trigger_class = EchoTrigger

    def __init__(self, *, duration: float | None = 1.0, outcome: str = "done", **kwargs: Any):
        super().__init__(**kwargs)
        self.duration, self.outcome = duration, outcome

    def submit(self, context: Any) -> dict[str, Any]:
        body = self.hook.request("POST", "/jobs", json={"duration": self.duration, "outcome": self.outcome}).json()
        return {"job_id": body["id"]}


class EchoJobSensor(JobSensor):
    hook_class = EchoHook
    vendor = "echo"
    trigger_class = EchoTrigger
    template_fields = ("job_id",)

    def __init__(self, *, job_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.job_id = job_id

    def job(self) -> dict[str, Any]:
        return {"job_id": self.job_id}


class CrashAfterSubmitOperator(EchoJobOperator):
    """Dies on its first try once its job is created and recorded, before any status check, as a
    worker lost mid-wait would (dying in the wait instead depended on the job still running then)."""

    def _submit(self, context):
        job = super()._submit(context)
        if context["ti"].try_number == 1:
            raise RuntimeError("worker lost after the job was created")
        return job


class JobGoneOperator(EchoJobOperator):
    """Creates its job, then finds the vendor no longer knows it (404 on every status check), as when
    a vendor purges a job: the task fails with the job's ids in its retry ledger."""

    def submit(self, context: Any) -> dict[str, Any]:
        job = super().submit(context)
        return {"job_id": f"{job['job_id']}-gone"}


class GoneWhileDeferredOperator(EchoJobOperator):
    """Defers on a running job whose status the trigger then cannot read (404): the trigger yields an
    error event and ``execute_complete`` raises."""

    def defer_to_trigger(self, job: dict[str, Any], deadline: float) -> None:
        super().defer_to_trigger({"job_id": f"{job['job_id']}-gone"}, deadline)


class IntentEchoJobOperator(EchoJobOperator):
    """Records what it is about to create before sending, as the vendor operators do."""

    def submit(self, context: Any) -> dict[str, Any]:
        self.record_intent(context, f"created an echo job of {self.duration}s")
        return super().submit(context)


class CrashBeforeDeferOperator(EchoJobOperator):
    """Dies between creating its job and deferring on the first try: the retry must check the job
    (reattach) before deferring, not create another."""

    def defer_to_trigger(self, job: dict[str, Any], deadline: float) -> None:
        if self._ti_try_number == 1:
            raise RuntimeError("worker lost before deferring")
        super().defer_to_trigger(job, deadline)

    def execute(self, context):
        self._ti_try_number = context["ti"].try_number
        return super().execute(context)


class FailedJobThenCrashOperator(EchoJobOperator):
    """The first try dies right after creating a job that fails: the retry finds the failed job and
    creates a new one (the first job's outcome is ``failed``, the second's ``done``)."""

    def submit(self, context: Any) -> dict[str, Any]:
        self.outcome = "failed" if context["ti"].try_number == 1 else "done"
        return super().submit(context)

    def _submit(self, context: Any) -> dict[str, Any]:
        job = super()._submit(context)
        if context["ti"].try_number == 1:
            raise RuntimeError("worker lost after the job was created")
        return job
