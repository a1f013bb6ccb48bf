"""Gainsight PX loader throughput: the pooled loader vs a one-at-a-time loader, same run, same emulator.

    python benchmarks/gainsight_px_load.py [--rows 20000] [--baseline-rows 1000] [--latency 0.02] [--limit 200]

The emulator runs in its own process (so it does not share the GIL with the loader) with a per-request
latency and a requests-per-second limit answering 429. Both loaders update existing users from a
CSV (one PUT per row). The baseline is the same operator with ``max_concurrency=1``, which is how the
vendor's documented script works: one request, wait for the answer, next row.

Prints requests/s and rows written/s of each, the share of the vendor limit sustained, 429s received, peak memory, and
checks that every record was written exactly once with the right value.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

API_KEY = "gpx-bench-key"


class _TI:
    dag_id, run_id, task_id, map_index, try_number = "bench", "bench", "load", -1, 1

    def xcom_push(self, key, value):
        pass


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler(threading.Thread):
    """Samples resident memory while the load runs (peak and a few points along the way)."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.interval, self.samples, self._done = interval, [], threading.Event()

    def run(self):
        while not self._done.is_set():
            self.samples.append(_rss_mb())
            self._done.wait(self.interval)

    def stop(self):
        self._done.set()
        self.join()
        self.samples.append(_rss_mb())


def _call(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def start_emulator(latency: float, limit: int) -> tuple[subprocess.Popen, str]:
    config = json.dumps({"api_key": API_KEY, "latency": latency, "rate_limit": limit})
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_profiles.testing", "gainsight_px", "--config", config],
        stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline().split()
    if len(line) != 2:
        process.kill()
        raise RuntimeError(f"emulator did not start: {line}")
    return process, line[1]


def write_csv(path: str, ids: list[str], tag: str) -> None:
    with open(path, "w") as handle:
        handle.write("id,title,plan,signup\n")
        for index, user_id in enumerate(ids):
            handle.write(f'{user_id},"{tag} {index}, bench",pro,{1546300800000 + index}\n')


def load(source: str, concurrency: int, workdir: str) -> tuple[dict, float, RssSampler]:
    from airflow_provider_profiles.operators.gainsight_px import GainsightPXLoadOperator

    operator = GainsightPXLoadOperator(
        task_id="load", source=source, max_concurrency=concurrency, progress_interval=10.0,
        field_mapping={"identifyId": "id", "title": "title", "customAttributes.plan": "plan", "signUpDate": "signup"},
        rejects_path=os.path.join(workdir, f"rejects-{concurrency}.csv"),
    )
    sampler = RssSampler()
    sampler.start()
    started = time.perf_counter()
    summary = operator.execute({"ti": _TI()})
    elapsed = time.perf_counter() - started
    sampler.stop()
    return summary, elapsed, sampler


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--baseline-rows", type=int, default=1_000, help="rows for the one-at-a-time loader")
    parser.add_argument("--latency", type=float, default=0.02, help="emulator latency per request (s)")
    parser.add_argument("--limit", type=int, default=200, help="emulator requests/s limit")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    airflow_home = None
    if "AIRFLOW_HOME" not in os.environ:  # a throw-away home: the benchmark needs no metadata DB
        airflow_home = os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="gpx-bench-airflow-")
    process, url = start_emulator(args.latency, args.limit)
    os.environ["AIRFLOW_CONN_GAINSIGHT_PX_DEFAULT"] = json.dumps(
        {"conn_type": "gainsight_px", "host": url, "password": API_KEY, "extra": {"product_key": "AP-EMULATOR-2"}})
    workdir = tempfile.mkdtemp(prefix="gpx-bench-")
    try:
        ids = [f"user-{i:06d}" for i in range(args.rows)]
        baseline_ids = [f"base-{i:06d}" for i in range(args.baseline_rows)]
        for start in range(0, len(ids), 5000):
            _call(f"{url}/_emulator/seed", "POST", {"users": [{"identifyId": i} for i in ids[start:start + 5000]]})
        _call(f"{url}/_emulator/seed", "POST", {"users": [{"identifyId": i} for i in baseline_ids]})
        pooled_csv, baseline_csv = os.path.join(workdir, "users.csv"), os.path.join(workdir, "baseline.csv")
        write_csv(pooled_csv, ids, "pooled")
        write_csv(baseline_csv, baseline_ids, "serial")

        # imports outside the timing and the memory baseline (a worker has them loaded before the task)
        import airflow_provider_profiles.operators.gainsight_px  # noqa: F401

        rss_before = _rss_mb()
        pooled, pooled_s, sampler = load(pooled_csv, args.concurrency, workdir)
        counters = _call(f"{url}/_emulator/counters")["requests"]
        pooled_requests = sum(n for key, n in counters.items() if key.startswith("PUT /v1/users/user-"))
        state = _call(f"{url}/_emulator/state")
        serial, serial_s, _ = load(baseline_csv, 1, workdir)
        counters = _call(f"{url}/_emulator/counters")["requests"]
        serial_requests = sum(n for key, n in counters.items() if key.startswith("PUT /v1/users/base-"))
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
        if airflow_home:
            shutil.rmtree(airflow_home, ignore_errors=True)

    writes = state["writes"]
    lost = [i for i in ids if writes.get(f"users/{i}", 0) == 0]
    duplicated = [i for i in ids if writes.get(f"users/{i}", 0) > 1]
    wrong = [i for n, i in enumerate(ids) if state["users"][i].get("title") != f"pooled {n}, bench"]
    pooled_rate, serial_rate = pooled_requests / pooled_s, serial_requests / serial_s
    samples = sampler.samples
    quarter = [samples[min(len(samples) - 1, int(len(samples) * q))] for q in (0.25, 0.5, 0.75, 1.0)]
    print(f"emulator: latency {args.latency * 1000:.0f} ms/request, limit {args.limit} requests/s; "
          f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"pooled loader   : {args.rows} rows, {pooled_requests} requests in {pooled_s:.1f}s = {pooled_rate:.1f} requests/s "
          f"({pooled_rate / args.limit:.1%} of the limit; {args.rows / pooled_s:.1f} rows written/s), "
          f"concurrency {args.concurrency}; summary {pooled}")
    print(f"one-at-a-time   : {args.baseline_rows} rows, {serial_requests} requests in {serial_s:.1f}s = {serial_rate:.1f} requests/s "
          f"({serial_rate / args.limit:.1%} of the limit; {args.baseline_rows / serial_s:.1f} rows written/s); summary {serial}")
    print(f"speed-up        : {pooled_rate / serial_rate:.1f}x")
    print(f"429s answered   : {state['throttled']} in the pooled run (each retried after its Retry-After)")
    print(f"records         : lost {len(lost)}, duplicated {len(duplicated)}, wrong value {len(wrong)}")
    print(f"memory (RSS MB) : before load {rss_before:.0f}, during load at 25/50/75/100% "
          + "/".join(f"{value:.0f}" for value in quarter) + f", peak {max(samples):.0f}; "
          f"ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    # sustained = rows actually written per second (429-answered requests do not count)
    ok = not lost and not duplicated and not wrong and args.rows / pooled_s >= 0.95 * args.limit
    print("RESULT:", "PASS" if ok else "FAIL", "(target: >= 95% of the limit, nothing lost or duplicated)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
