"""Exercises the shared submit-then-wait mechanics against the echo emulator (connection echo_default)."""

import datetime

import pendulum
from airflow.sdk import DAG

from tests.echo_hook import CrashAfterSubmitOperator, EchoJobOperator, EchoJobSensor

# one try each (job tasks retry once by default) but for the task that tests the retry
with DAG("echo_jobs", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False,
         default_args={"retries": 0}) as dag:
    EchoJobOperator(task_id="wait_in_worker", duration=0.6, poll_interval=0.2)
    EchoJobOperator(task_id="deferred", duration=1.0, poll_interval=0.2, deferrable=True)
    EchoJobOperator(task_id="deferred_fails", duration=0.4, outcome="failed", poll_interval=0.2, deferrable=True)
    # duration=None: the job runs until cancelled, so these outcomes hold however long the run takes
    EchoJobOperator(task_id="worker_timeout", duration=None, poll_interval=0.2, job_timeout=1)
    EchoJobOperator(task_id="deferred_timeout", duration=None, poll_interval=0.2, job_timeout=1, deferrable=True)
    EchoJobOperator(task_id="no_wait", duration=None, wait_for_completion=False)
    CrashAfterSubmitOperator(task_id="crash_then_reattach", duration=0.6, poll_interval=0.2, retries=1,
                             retry_delay=datetime.timedelta(seconds=0))
    job = EchoJobOperator(task_id="job_for_sensor", duration=0.8, wait_for_completion=False)
    EchoJobSensor(task_id="sensor_deferred", job_id="{{ ti.xcom_pull('job_for_sensor', key='job')['job_id'] }}",
                  poke_interval=0.2, deferrable=True) << job
