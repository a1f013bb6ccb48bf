"""Every way a job task can end, to see which leave a retry-ledger Variable behind (connection echo_default)."""

import datetime

import pendulum
from airflow.sdk import DAG

from tests.echo_hook import EchoJobOperator, GoneWhileDeferredOperator, JobGoneOperator

RETRY = {"retries": 1, "retry_delay": datetime.timedelta(seconds=0)}
ONE_TRY = {"retries": 0}  # job tasks retry once by default

with DAG("echo_ledger", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
    EchoJobOperator(task_id="succeeds", duration=0.2, poll_interval=0.1, **ONE_TRY)
    EchoJobOperator(task_id="job_fails", duration=0.2, outcome="failed", poll_interval=0.1, **ONE_TRY)
    JobGoneOperator(task_id="gone_on_last_try", duration=60, poll_interval=0.1, **ONE_TRY)
    JobGoneOperator(task_id="gone_on_both_tries", duration=60, poll_interval=0.1, **RETRY)
    GoneWhileDeferredOperator(task_id="deferred_error_on_last_try", duration=60, poll_interval=0.1,
                              deferrable=True, **ONE_TRY)
    GoneWhileDeferredOperator(task_id="deferred_error_on_both_tries", duration=60, poll_interval=0.1,
                              deferrable=True, **RETRY)
    EchoJobOperator(task_id="handed_over", duration=60, wait_for_completion=False, **ONE_TRY)
