"""Submit a vendor job, then wait for it in the worker or defer to its trigger.

Vendor operators implement ``submit`` (create the remote job, return its ids) and ``on_success``
(what to return). Everything else lives here once: ids pushed to XCom and to a retry ledger before
waiting, reattach on retry, check-before-defer, deadline, cancel on timeout and kill, and the
``max_failed_ratio`` check.

A creating request whose answer is lost (dropped connection, 5xx after the vendor acted) leaves the
outcome unknown. ``submit`` records what it is about to create (``record_intent``) just before
sending; a retry that finds that intent without job ids asks the vendor operator (``find_lost_job``)
for the job the earlier try created, resends only when that is safe, and otherwise stops with what to
check and how to clear the intent.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import time
from collections.abc import Iterator
from functools import cached_property
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowTaskTimeout,
    BaseOperator,
    Variable,
    conf,
)

from airflow_provider_profiles.hooks.base import (
    JobNotCancellable,
    JobState,
    JobStatus,
    ProfilesHook,
    VendorAPIError,
    VendorConnectionError,
    VendorServerError,
)
from airflow_provider_profiles.operators.links import StoredLink, store_links
from airflow_provider_profiles.operators.result import records_result
from airflow_provider_profiles.triggers.base import (
    FAILED,
    SUCCESS,
    TIMEOUT,
    JobTrigger,
    status_from_event,
)

DEFAULT_JOB_TIMEOUT = datetime.timedelta(hours=12)
UNKNOWN_OUTCOME_CHOICES = ("check", "resend")
# Airflow 3.3 can mark a deferred task failed when its trigger fires soon after it deferred
# (apache/airflow#71580, #72716), after the vendor's job succeeded. A retry reattaches to that job, so
# job operators and sensors retry once unless the task or its default_args say otherwise (a signature
# default: Airflow fills it from default_args, and .partial() reads it for mapped tasks).
DEFAULT_JOB_RETRIES = 1
DEFAULT_JOB_RETRY_DELAY = datetime.timedelta(seconds=30)
# XCom key: seconds from the job's creation (or reattachment) to its end, for a task that waited in the
# worker (a deferred wait is seen from outside: the task's start and resume)
VENDOR_WAIT_KEY = "vendor_wait_seconds"


def default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


class JobWaitMixin:
    """What an operator and a sensor share when they wait on a vendor job through ``JobTrigger``.

    ``vendor`` is the key of ``vendors.VENDORS`` the trigger finds the hook by."""

    hook_class: ClassVar[type[ProfilesHook]]
    vendor: ClassVar[str]
    trigger_class: ClassVar[type[JobTrigger]] = JobTrigger
    conn_id: str
    poll_interval: float

    @cached_property
    def hook(self) -> ProfilesHook:
        return self.hook_class(self.conn_id)

    def defer_to_trigger(self, job: dict[str, Any], deadline: float) -> None:
        self.log.info("job %s still running: deferring to the triggerer", job)  # type: ignore[attr-defined]
        self.defer(  # type: ignore[attr-defined]
            trigger=self.trigger_class(vendor=self.vendor, conn_id=self.conn_id, job=job, deadline=deadline,
                                       poll_interval=self.poll_interval),
            method_name="execute_complete",
        )

    def status_from_trigger(self, job: dict[str, Any], event: dict[str, Any]) -> JobStatus:
        """A terminal status from a trigger event; timeout and error events raise."""
        if event["status"] in (SUCCESS, FAILED):
            return status_from_event(event)
        if event["status"] == TIMEOUT:
            self.on_deadline(job, event.get("vendor_status") or "unknown")
        raise AirflowException(f"{self.hook.hook_name} job {job}: {event['status']}: {event.get('message')}")

    def on_deadline(self, job: dict[str, Any], vendor_status: str) -> None:
        """The job outlived the wait: raise (operators cancel the job they created first)."""
        raise NotImplementedError

    def raise_if_failed(self, job: dict[str, Any], status: JobStatus) -> None:
        if status.state is JobState.FAILED:
            raise AirflowException(f"{self.hook.hook_name} job {job} ended {status.vendor_status}: "
                                   f"{status.message or 'no details from the vendor'}")

    def cancel(self, job: dict[str, Any]) -> bool:
        """Cancel the job where the vendor allows it; True if it was cancelled."""
        try:
            self.hook.cancel_job(**job)
            self.log.warning("cancelled %s job %s", self.hook.hook_name, job)  # type: ignore[attr-defined]
            return True
        except JobNotCancellable as reason:
            self.log.warning("%s job %s left running: %s", self.hook.hook_name, job, reason)  # type: ignore[attr-defined]
            return False


class RemoteJobOperator(JobWaitMixin, BaseOperator):
    """Base of the operators that create one vendor job and (optionally) wait for it.

    :param conn_id: the vendor connection.
    :param wait_for_completion: wait for the job to end; otherwise return its ids once created.
    :param deferrable: wait in the triggerer instead of the worker (default ``[operators] default_deferrable``).
    :param poll_interval: seconds between status checks.
    :param job_timeout: how long to wait for the job (seconds or timedelta); then it is cancelled
        where the vendor allows it and the task fails.
    :param max_failed_ratio: fail the task when the vendor reports more failed records than this ratio.
    :param on_unknown_outcome: what a retry does when an earlier try sent a creating request and never
        got the answer: ``check`` (default) finds the job it created where the vendor allows it, resends
        only when that is safe, else fails saying what to check; ``resend`` sends again without checking.
    """

    def __init__(
        self,
        *,
        conn_id: str | None = None,
        wait_for_completion: bool = True,
        deferrable: bool = default_deferrable(),
        poll_interval: float = 10.0,
        job_timeout: float | datetime.timedelta = DEFAULT_JOB_TIMEOUT,
        max_failed_ratio: float | None = None,
        on_unknown_outcome: str = "check",
        retries: int | None = DEFAULT_JOB_RETRIES,
        retry_delay: datetime.timedelta | float = DEFAULT_JOB_RETRY_DELAY,
        **kwargs: Any,
    ):
        super().__init__(retries=retries, retry_delay=retry_delay, **kwargs)
        self.conn_id = conn_id or self.hook_class.default_conn_name
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.job_timeout = job_timeout.total_seconds() if isinstance(job_timeout, datetime.timedelta) else float(job_timeout)
        self.max_failed_ratio = max_failed_ratio
        if on_unknown_outcome not in UNKNOWN_OUTCOME_CHOICES:
            raise ValueError(f"{self.task_id}: on_unknown_outcome must be one of {', '.join(UNKNOWN_OUTCOME_CHOICES)}, "
                             f"got {on_unknown_outcome!r}")
        self.on_unknown_outcome = on_unknown_outcome
        self._job: dict[str, Any] | None = None
        self._context: Any = None

    # vendor part -------------------------------------------------------------------------------
    def submit(self, context: Any) -> dict[str, Any]:
        """Create the remote job; return the ids that identify it (the hook's ``job_status`` kwargs)."""
        raise NotImplementedError

    def on_success(self, context: Any, status: JobStatus) -> Any:
        """The task's return value once the job succeeded (logged and pushed to XCom)."""
        return status.payload

    def handed_over(self, job: dict[str, Any]) -> Any:
        """The return value without waiting (``wait_for_completion=False``): the job's ids in ``details``;
        the file went whole (nothing rejected or skipped here), and the vendor has counted nothing yet."""
        return records_result(rejected=0, skipped=0, details={"job": job, "handed_over": True})

    def failed_ratio(self, status: JobStatus) -> float | None:
        """Failed records / all records as the vendor reports them, or None if it does not."""
        return None

    def nothing_to_send(self, context: Any) -> Any | None:
        """The task's result when its input holds nothing to send (then no request is made), else None."""
        return None
    def job_links(self, job: dict[str, Any]) -> dict[StoredLink, str | None]:
        """URLs of this operator's ``operator_extra_links`` for the job (stored in XCom at once)."""
        return {}

    def result_links(self, result: Any) -> dict[StoredLink, str | None]:
        """URLs known once the job ended (an error file...)."""
        return {}

    def find_lost_job(self, context: Any, intent: dict[str, Any]) -> dict[str, Any] | None:
        """An earlier try sent the creating request ``intent`` describes and lost the answer.

        Return the job it created (the retry reattaches), None when sending again is safe, or raise
        ``self.unknown_outcome(...)``. By default nothing can be found and nothing is assumed safe.
        """
        raise self.unknown_outcome(context, intent, f"{self.hook.hook_name} offers no way to find it")

    # mechanics -----------------------------------------------------------------------------------
    def record_intent(self, context: Any, action: str, **facts: Any) -> None:
        """Call just before the creating request: ``action`` says in words what is about to be created
        (it goes into the message a retry shows), ``facts`` what ``find_lost_job`` needs to find it."""
        _ledger_set(context, {"intent": {"action": action, "at": time.time(), **facts}})

    def unknown_outcome(self, context: Any, intent: dict[str, Any], why: str) -> AirflowFailException:
        """The error that stops a retry which cannot tell whether the earlier try created its job."""
        sent = datetime.datetime.fromtimestamp(intent["at"], datetime.timezone.utc).isoformat(timespec="seconds")
        return AirflowFailException(
            f"an earlier try {intent['action']} at {sent} and lost the answer, so it may have been created: {why}. "
            f"Check in {self.hook.hook_name} whether it exists. Then, to send it again, delete "
            f"{_ledger_hint(context)} and clear this task, or set on_unknown_outcome='resend'; if it was "
            "created, mark this task success instead."
        )

    def execute(self, context: Any) -> Any:
        self._context = context
        nothing = self.nothing_to_send(context)
        if nothing is not None:  # a success that creates nothing remote: downstream tasks run as usual
            return nothing
        with _ledger_settled_on_error(context, self.log):
            return self._execute(context)

    def _execute(self, context: Any) -> Any:
        job = self._reattach(context) or self._submit(context)
        if not self.wait_for_completion:
            _ledger_clear(context)  # created and handed over: this task is done with it
            return self.handed_over(job)
        waiting = time.monotonic()
        status = self.hook.job_status(**job)  # it may already be done: no need to defer
        if not status.terminal:
            deadline = time.time() + self.job_timeout
            if self.deferrable:
                self.defer_to_trigger(job, deadline)
            try:
                status = self.wait_in_worker(job, deadline)
            except AirflowTaskTimeout:  # execution_timeout hit while waiting: do not leave the job behind
                self.cancel(job)
                raise
        context["ti"].xcom_push(key=VENDOR_WAIT_KEY, value=round(time.monotonic() - waiting, 3))
        return self._finish(context, job, status)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        self._context = context
        self._job = event["job"]
        with _ledger_settled_on_error(context, self.log):
            return self._finish(context, self._job, self.status_from_trigger(self._job, event))

    def on_kill(self) -> None:
        if self._job is not None and self.cancel(self._job) and self._context is not None:
            _ledger_clear(self._context)

    def on_deadline(self, job: dict[str, Any], vendor_status: str) -> None:
        # a job left running stays in the ledger for a retry to wait on; the last try lets it go
        if self.cancel(job) or _last_try(self._context):
            _ledger_clear(self._context)
        raise AirflowException(f"{self.hook.hook_name} job {job} still {vendor_status} after "
                               f"job_timeout={self.job_timeout:.0f}s; cancelled where the vendor allows it")

    def wait_in_worker(self, job: dict[str, Any], deadline: float) -> JobStatus:
        """Poll from the worker until the job ends or the deadline passes."""
        while True:
            status = self.hook.job_status(**job)
            if status.terminal:
                return status
            if time.time() >= deadline:
                self.on_deadline(job, status.vendor_status)
            self.log.info("%s job %s is %s", self.hook.hook_name, job, status.vendor_status)
            time.sleep(max(0.0, min(self.poll_interval, deadline - time.time())))

    def _submit(self, context: Any) -> dict[str, Any]:
        try:
            job = self.submit(context)
        except (VendorConnectionError, VendorServerError):
            raise  # the outcome is unknown: the recorded intent stays for the retry to check
        except (VendorAPIError, AirflowFailException):
            _ledger_clear(context)  # refused by the vendor or before sending: nothing was created
            raise
        self._job = job
        # Before any wait: downstream tasks and a retry of this one can find the job.
        self._publish(context, job)
        _ledger_set(context, {"job": job})
        self.log.info("created %s job %s", self.hook.hook_name, job)
        return job

    def _reattach(self, context: Any) -> dict[str, Any] | None:
        """The job an earlier try of this task created, if it is still running or succeeded."""
        entry = _ledger_get(context)
        if entry is None:
            return None
        if "job" in entry:
            job = entry["job"]
        elif "intent" in entry:
            job = self._find_lost_job(context, entry["intent"])
        else:
            job = None
        if job is None:
            return None
        status = self.hook.job_status(**job)
        if status.state is JobState.FAILED:
            self.log.info("earlier try's job %s ended %s; creating a new one", job, status.vendor_status)
            return None
        self.log.info("reattaching to job %s created by an earlier try (%s)", job, status.vendor_status)
        self._job = job
        self._publish(context, job)
        if "job" not in entry:
            _ledger_set(context, {"job": job})
        return job

    def _find_lost_job(self, context: Any, intent: dict[str, Any]) -> dict[str, Any] | None:
        if self.on_unknown_outcome == "resend":
            self.log.warning("an earlier try %s and lost the answer; sending again (on_unknown_outcome='resend')",
                             intent["action"])
            return None
        job = self.find_lost_job(context, intent)
        if job is None:
            self.log.warning("an earlier try %s and lost the answer; nothing was created or sending again is "
                             "safe: sending again", intent["action"])
        else:
            self.log.warning("an earlier try %s and lost the answer; found the job it created: %s",
                             intent["action"], job)
        return job

    def _publish(self, context: Any, job: dict[str, Any]) -> None:
        """XCom ``job`` (all ids) and each id under its own key (``import_id``, ``execution_id``...),
        and the job's links for the task page."""
        context["ti"].xcom_push(key="job", value=job)
        for key, value in job.items():
            context["ti"].xcom_push(key=key, value=value)
        store_links(context, self.job_links(job), self.log)

    def _finish(self, context: Any, job: dict[str, Any], status: JobStatus) -> Any:
        _ledger_clear(context)  # the job ended: a retry after a failure creates a new one anyway
        self.raise_if_failed(job, status)
        result = self.on_success(context, status)
        store_links(context, self.result_links(result), self.log)
        self.log.info("%s job %s %s: %s", self.hook.hook_name, job, status.vendor_status, result)
        ratio = self.failed_ratio(status)
        if self.max_failed_ratio is not None and ratio is not None and ratio > self.max_failed_ratio:
            raise AirflowException(f"{ratio:.2%} of the records failed in {self.hook.hook_name} job {job}, "
                                   f"more than max_failed_ratio={self.max_failed_ratio:.2%}: {result}")
        return result


# --- task state: what a task instance's tries share ----------------------------------------------
# Airflow clears a task's XComs when a new try starts, so what a retry must find (the job to reattach
# to, a loader's checkpoint) is kept where tries share it: Airflow's task state store (3.3+), scoped to
# the task instance and removed with its DAG run, or on older Airflow a Variable per task instance.
class TaskState:
    """A few JSON values a task instance's tries share, by key: ``get``, ``set``, ``clear``."""

    def get(self, key: str) -> Any:
        raise NotImplementedError

    def set(self, key: str, value: Any, description: str = "") -> None:
        raise NotImplementedError

    def clear(self, key: str) -> None:
        raise NotImplementedError

    def removal_hint(self, key: str) -> str:
        """How a person removes the value of ``key`` (for messages that ask them to)."""
        raise NotImplementedError


class StoreTaskState(TaskState):
    """Airflow's ``task_state_store`` from the task context (Airflow 3.3+)."""

    def __init__(self, store: Any, context: Any):
        self.store, self.ti = store, context["ti"]

    def get(self, key: str) -> Any:
        return self.store.get(key)

    def set(self, key: str, value: Any, description: str = "") -> None:
        self.store.set(key, value)

    def clear(self, key: str) -> None:
        self.store.delete(key)

    def removal_hint(self, key: str) -> str:
        ti = self.ti
        mapped = f"?map_index={ti.map_index}" if ti.map_index is not None and ti.map_index >= 0 else ""
        return (f"the task state key {key!r} of this task instance (REST API: DELETE /api/v2/dags/{ti.dag_id}/dagRuns/"
                f"{ti.run_id}/taskInstances/{ti.task_id}/state-store/{key}{mapped})")


class VariableTaskState(TaskState):
    """A Variable per task instance and key, ``profiles_<key>_<hash>`` (Airflow before 3.3)."""

    def __init__(self, context: Any):
        self.context = context

    def variable(self, key: str) -> str:
        ti = self.context["ti"]
        identity = json.dumps([ti.dag_id, ti.run_id, ti.task_id, ti.map_index])
        return f"profiles_{key}_{hashlib.sha256(identity.encode()).hexdigest()[:32]}"

    def get(self, key: str) -> Any:
        value = Variable.get(self.variable(key), default=None)
        return json.loads(value) if value else None

    def set(self, key: str, value: Any, description: str = "") -> None:
        Variable.set(self.variable(key), json.dumps(value), description=description or None)

    def clear(self, key: str) -> None:
        Variable.delete(self.variable(key))

    def removal_hint(self, key: str) -> str:
        name = self.variable(key)
        return f"the Airflow Variable {name} (Admin > Variables, or `airflow variables delete {name}`)"


def airflow_task_state_store(context: Any) -> Any:
    """The task context's ``task_state_store`` (Airflow 3.3+), or None on older Airflow."""
    return context.get("task_state_store")


def task_state(context: Any) -> TaskState:
    """Where this task instance's tries share state: Airflow's task state store where the running
    Airflow provides one, else Variables."""
    store = airflow_task_state_store(context)
    return VariableTaskState(context) if store is None else StoreTaskState(store, context)


# --- retry ledger ---------------------------------------------------------------------------------
# The ids a retry must reattach to, in the task state under LEDGER_KEY, removed once the job has been
# seen through.
LEDGER_KEY = "job"


def _ledger_key(context: Any) -> str:
    """The fallback Variable's name (``profiles_job_<hash>``)."""
    return VariableTaskState(context).variable(LEDGER_KEY)


def _ledger_hint(context: Any) -> str:
    return task_state(context).removal_hint(LEDGER_KEY)


def _ledger_get(context: Any) -> dict[str, Any] | None:
    """``{"job": ids}`` once created, or ``{"intent": ...}`` while a creating request's outcome is unknown."""
    return task_state(context).get(LEDGER_KEY) or None


def _ledger_set(context: Any, entry: dict[str, Any]) -> None:
    ti = context["ti"]
    task_state(context).set(
        LEDGER_KEY, {**entry, "try_number": ti.try_number},
        description=f"vendor job of {ti.dag_id}.{ti.task_id}[{ti.map_index}] in {ti.run_id} (or the request "
                    "creating it, while its answer is unknown); kept for a retry to reattach, removed "
                    "when the job ends")


def _ledger_clear(context: Any) -> None:
    task_state(context).clear(LEDGER_KEY)


def _last_try(context: Any) -> bool:
    ti = context["ti"]
    return ti.try_number > getattr(ti, "max_tries", 0)


@contextlib.contextmanager
def _ledger_settled_on_error(context: Any, log: Any) -> Iterator[None]:
    """A try that fails for good removes its ledger entry: no retry will reattach to it.

    It stays while a retry follows (the retry reattaches to the job, or checks the intent), and when
    it records a creating request whose answer was lost (an intent, no job): then it is what makes
    a cleared task check before sending again, and the log names it. Deferral is not a failure.
    """
    try:
        yield
    except (Exception, AirflowTaskTimeout) as error:
        if isinstance(error, AirflowFailException) or _last_try(context):
            try:
                _settle_ledger(context, log)
            except Exception as ledger_error:  # the task's own error is the one to report
                log.warning("could not remove the retry ledger (%s): %s", _ledger_hint(context), ledger_error)
        raise


def _settle_ledger(context: Any, log: Any) -> None:
    entry = _ledger_get(context)
    if entry is not None and "job" not in entry and "intent" in entry:
        log.warning("kept the retry ledger: an earlier request's outcome is unknown (%s). Delete %s once you "
                    "know whether it was created", entry["intent"].get("action"), _ledger_hint(context))
    elif entry is not None:
        _ledger_clear(context)
