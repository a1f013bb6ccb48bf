"""One job task whose creating request's answer is lost on its only try (connection echo_default)."""

import pendulum
from airflow.sdk import DAG

from tests.echo_hook import IntentEchoJobOperator

with DAG("echo_lost_answer", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
    IntentEchoJobOperator(task_id="lost_answer_on_last_try", duration=0.2, poll_interval=0.1, retries=0)
