"""Deferred waits long enough to kill and restart the triggerer under them (echo emulator)."""

import pendulum
from airflow.sdk import DAG

from tests.echo_hook import EchoJobOperator, EchoJobSensor

with DAG("echo_long_waits", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
    for i in range(3):
        EchoJobOperator(task_id=f"deferred_{i}", duration=25, poll_interval=5, deferrable=True)
    job = EchoJobOperator(task_id="job_for_sensor", duration=25, wait_for_completion=False)
    EchoJobSensor(task_id="sensor_deferred", job_id="{{ ti.xcom_pull('job_for_sensor', key='job')['job_id'] }}",
                  poke_interval=5, deferrable=True) << job
