"""Job tasks that die once their job was created, with and without a retries setting of their own
(connection echo_default)."""

import datetime

import pendulum
from airflow.sdk import DAG

from tests.echo_hook import CrashAfterSubmitOperator

NO_DELAY = datetime.timedelta(seconds=0)

with DAG("echo_default_retry", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False) as dag:
    CrashAfterSubmitOperator(task_id="default_retry", duration=0.3, poll_interval=0.1, retry_delay=NO_DELAY)
    CrashAfterSubmitOperator(task_id="no_retry", duration=0.3, poll_interval=0.1, retries=0)
    CrashAfterSubmitOperator.partial(task_id="mapped_default_retry", poll_interval=0.1,
                                     retry_delay=NO_DELAY).expand(duration=[0.3])

with DAG("echo_no_retry_by_default_args", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False,
         default_args={"retries": 0}) as no_retry_dag:
    CrashAfterSubmitOperator(task_id="no_retry_from_default_args", duration=0.3, poll_interval=0.1)
