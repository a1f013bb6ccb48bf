"""1,000 concurrent waits on vendor jobs: deferred (one triggerer event loop) against poke mode (a slot each).

    python benchmarks/deferred_waits.py [--waits 1000] [--poll-interval 5] [--job-seconds 60]

The mediarithmics emulator runs in its own process with ``--waits`` executions that stay PENDING for
``--job-seconds`` and then succeed. Then, in this process:

- deferred: ``--waits`` ``JobTrigger``s (vendor ``mediarithmics``) run in one asyncio loop, exactly as the
  triggerer runs them, next to a probe that measures event-loop lag. Worker slots held: none (a
  deferred task has no worker process); the loop's own CPU, poll rate and lag are measured.
- poke: the same waits as poke-mode sensors do them, one blocking ``poke`` loop per worker slot
  (threads stand in for the slots, which in Airflow are whole worker processes).

Prints CPU (% of one core, and per poll), the load average around the run, achieved polls per wait per interval against the configured rate, event
loop lag, peak RSS growth, and the slots each mode holds while waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import requests

TOKEN = "bench-token"


def start_emulator(job_seconds: float) -> tuple[subprocess.Popen, str]:
    config = json.dumps({"token": TOKEN, "pending_seconds": job_seconds, "running_seconds": 1})
    process = subprocess.Popen([sys.executable, "-m", "airflow_provider_profiles.testing", "mediarithmics",
                                "--config", config], stdout=subprocess.PIPE, text=True)
    _, url = process.stdout.readline().split()
    return process, url


def status_polls(url: str) -> int:
    counters = requests.get(f"{url}/_emulator/counters", timeout=10).json()["requests"]
    return sum(n for route, n in counters.items() if route.startswith("GET ") and "/executions/" in route)


def create_jobs(hook, waits: int) -> list[dict]:
    document_import = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "bench", datamart_id="1000")
    line = b'{"operation":"UPSERT","user_account_id":"u1","compartment_id":"1","user_profile":{"a":1}}\n'
    jobs = []
    for _ in range(waits):
        execution = hook.create_execution(document_import["id"], line, datamart_id="1000",
                                          content_type="application/x-ndjson")
        jobs.append({"datamart_id": "1000", "document_import_id": document_import["id"], "execution_id": execution["id"]})
    return jobs


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def run_deferred(jobs: list[dict], poll_interval: float, deadline: float) -> dict:
    from airflow_provider_profiles.triggers.base import JobTrigger

    lags: list[float] = []
    done = asyncio.Event()

    async def probe() -> None:  # how late a 100 ms sleep wakes up = how long the loop was busy
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.1)
            lags.append(time.perf_counter() - started - 0.1)

    async def wait(job: dict) -> str:
        trigger = JobTrigger(vendor="mediarithmics", conn_id="mediarithmics_default", job=job, deadline=deadline,
                             poll_interval=poll_interval)
        async for event in trigger.run():
            return event.payload["status"]
        return "no event"

    probe_task = asyncio.create_task(probe())
    outcomes = await asyncio.gather(*(wait(job) for job in jobs))
    done.set()
    await probe_task
    return {"outcomes": outcomes, "lags": lags}


def run_poke(jobs: list[dict], poll_interval: float) -> list[str]:
    from airflow_provider_profiles.hooks.base import JobState
    from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook

    outcomes: list[str] = []
    lock = threading.Lock()

    def sensor(job: dict) -> None:  # what BaseSensorOperator does in poke mode, inside its worker slot
        hook = MediarithmicsHook()
        while True:
            status = hook.job_status(**job)
            if status.terminal:
                with lock:
                    outcomes.append("success" if status.state is JobState.SUCCESS else "failed")
                return
            time.sleep(poll_interval)

    threads = [threading.Thread(target=sensor, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def measure(label: str, run, waits: int, poll_interval: float, url: str) -> dict:
    polls_before, cpu_before, rss_before = status_polls(url), cpu_seconds(), rss_mb()
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    result = run()
    wall = time.monotonic() - started
    polls = status_polls(url) - polls_before
    cpu = cpu_seconds() - cpu_before
    return {
        "mode": label,
        "wall_s": round(wall, 1),
        "cpu_pct_of_one_core": round(100 * cpu / wall, 1),
        # CPU per status poll: the figure least moved by other load on a shared machine
        "cpu_ms_per_poll": round(1000 * cpu / max(polls, 1), 2),
        # the machine's 1-minute load average before and after: lag and poll rate suffer when it is
        # above the core count (a starved process is late however little it does)
        "load_avg": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "polls": polls,
        # every wait should poll once per interval while its job runs: achieved / configured
        "poll_rate_ratio": round(polls / (waits * wall / poll_interval), 2),
        "rss_growth_mb": round(rss_mb() - rss_before, 1),
        "result": result,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, default=1000)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--job-seconds", type=float, default=60.0)
    parser.add_argument("--skip-poke", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bench-airflow-"))
    from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook

    rows = []
    for mode in ("deferred", "poke") if not args.skip_poke else ("deferred",):
        emulator, url = start_emulator(args.job_seconds)  # a fresh one per mode: same job timings
        try:
            os.environ["AIRFLOW_CONN_MEDIARITHMICS_DEFAULT"] = json.dumps(
                {"conn_type": "mediarithmics", "password": TOKEN, "extra": {"base_url": f"{url}/v1"}})
            jobs = create_jobs(MediarithmicsHook(), args.waits)
            print(f"{mode}: {len(jobs)} executions created; waiting ...", flush=True)
            if mode == "deferred":
                deadline = time.time() + args.job_seconds * 3
                row = measure(mode, lambda: asyncio.run(run_deferred(jobs, args.poll_interval, deadline)),
                              args.waits, args.poll_interval, url)
                lags = sorted(row["result"].pop("lags"))
                row["outcomes"] = dict(Counter(row["result"].pop("outcomes")))
                row["loop_lag_ms"] = {"p50": round(1000 * statistics.median(lags), 1),
                                      "p99": round(1000 * lags[int(len(lags) * 0.99)], 1),
                                      "max": round(1000 * lags[-1], 1)}
                row["worker_slots_held"] = 0
            else:
                row = measure(mode, lambda: run_poke(jobs, args.poll_interval), args.waits, args.poll_interval, url)
                row["outcomes"] = dict(Counter(row.pop("result")))
                row["worker_slots_held"] = args.waits
            row.pop("result", None)
            rows.append(row)
            print(json.dumps(row), flush=True)
        finally:
            emulator.terminate()
            emulator.wait()
    if len(rows) == 2:
        deferred, poke = rows
        print(f"\nworker slots held while waiting: deferred {deferred['worker_slots_held']}, poke {poke['worker_slots_held']}")
        print(f"CPU, deferred / poke: {deferred['cpu_pct_of_one_core'] / max(poke['cpu_pct_of_one_core'], 0.1):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
