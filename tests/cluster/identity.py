"""Each process of the Celery tier names itself (``[core] hostname_callable``), so the hostname Airflow
records on a task instance tells which worker ran it, though every worker runs on this one machine."""

from __future__ import annotations

import os
import socket

PROCESS_NAME = "PROFILES_PROCESS_NAME"


def hostname() -> str:
    return os.environ.get(PROCESS_NAME) or socket.getfqdn()
