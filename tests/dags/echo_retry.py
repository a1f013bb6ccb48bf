"""A retry after a try that died once its job was created (connection echo_default): each task's
durations tell its jobs apart at the emulator."""

import datetime

import pendulum
from airflow.sdk import DAG

from tests.echo_hook import CrashAfterSubmitOperator, CrashBeforeDeferOperator, FailedJobThenCrashOperator

RETRY = {"retries": 1, "retry_delay": datetime.timedelta(seconds=0)}

with DAG("echo_retry", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
    CrashAfterSubmitOperator(task_id="crash_while_waiting", duration=0.3, poll_interval=0.1, **RETRY)
    # long enough to be running when the retry checks it: the retry defers on it
    CrashBeforeDeferOperator(task_id="crash_before_defer", duration=2.0, poll_interval=0.1, deferrable=True, **RETRY)
    FailedJobThenCrashOperator(task_id="failed_job_then_crash", duration=0.0, poll_interval=0.1, **RETRY)
