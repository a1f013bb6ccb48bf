"""Throughput of a declared sync per vendor, against the floor the vendor's documented limits allow.

    python benchmarks/throughput.py                       # 1,000,000 rows (Gainsight PX: see --gainsight-px-rows)
    python benchmarks/throughput.py --rows 100000         # a quick run
    python benchmarks/throughput.py --vendors apsis_one,mediarithmics --rows 1000000

For each vendor: a ``users`` table generated inside a throwaway PostgreSQL (``generate_series``), one
``ProfilesSync`` (``SqlSource`` over the Postgres provider) to the vendor's emulator on 127.0.0.1 with the
vendor's documented limits, run under real Airflow (``airflow dags test`` in a child process, on SQLite):
a full run into an empty vendor, then an incremental run after 1% of the rows changed (``--changed``).

Printed per run: seconds per stage as the sync report gives them (prepare, split, upload, vendor wait,
commit), "other" (the run's time no stage clock covers: tasks starting, tasks outside the stages,
Airflow between tasks), the whole run (the first task's start to the last task's end, report included;
not dag.test's own setup), the vendor floor and its formula, the ratio of the run to the floor, the
source read (``COPY (the sync's query) TO STDOUT`` through psql, timed in the same run: the baseline any
sync from this table pays), rows sent, files, peak RSS per task and of the whole ``dags test`` process.

Vendor floors (the least time the vendor's limits allow; transfer and parsing on the vendor side count
as free, so a floor is a lower bound):
- Gainsight PX: one record per request (per-record REST, no batch endpoint), about 200 requests/s:
  ``records / 200``. An insert into an empty account is a PUT answered 404 then a POST (insert-missing,
  the vendor's own loader does so), which doubles the requests: the table shows the requests counted.
- Apsis One: ``ceil(files / 3) * (queued + processing)``, files = ``ceil(bytes / 50 MB)``: 3 simultaneous
  imports, each queued then processed for the emulator's fixed durations.
- mediarithmics: ``pending + running``, files = ``ceil(bytes / 100 MB)``: no concurrency limit is
  documented, every file's execution can run at once.
- Localytics: ``(ceil(files / 10) - 1) * 3600 + pending + running`` emulated seconds, divided by the
  emulator's ``time_scale``: 10 uploads an hour, one file (no size limit is documented).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from airflow_provider_profiles.testing import create, serve  # noqa: E402
from tests.services import PostgresServer  # noqa: E402

VENDORS = ("gainsight_px", "apsis_one", "mediarithmics", "localytics")
STAGES = ("prepare", "split", "upload", "vendor wait", "commit")
MB = 1000 * 1000
SQL = "SELECT id, email, name, city, plan, score FROM users"

# Each emulator with the vendor's documented limits (the emulators' defaults carry them, with their sources):
# Gainsight PX rate_limit=200 requests/s (support.gainsight.com/PX/API/Work_with_the_Gainsight_PX_REST_API),
# Apsis One max_concurrent_imports=3 and max_file_bytes=50 MB (help.apsis.one/en/articles/6104984,
# developer.apsis.com/reference/post_v2-audience-sections-section-discriminator-imports-1), Localytics
# upload_limit=(10, 3600) (help.uplandsoftware.com/localytics/dev/import-apis.html, "Rate Limits").
# mediarithmics refuses no size: 100 MB a file is a recommendation (developer.mediarithmics.io/
# data-ingestion/bulk-processing), which the split step follows. Job durations are the emulators' own.
EMULATOR_CONFIG = {
    "gainsight_px": {"rate_limit": 200},
    "apsis_one": {"max_concurrent_imports": 3, "max_file_bytes": 50 * MB},
    "mediarithmics": {},
    "localytics": {"upload_limit": (10, 3600)},
}

DESTINATIONS = {
    "gainsight_px": ('Destination("gainsight_px", conn_id="bench_gainsight_px", entity="USER")',
                     {"identifyId": "id", "email": "email", "firstName": "name", "location.city": "city"}),
    "apsis_one": ('Destination("apsis_one", conn_id="bench_apsis_one", section="com.apsis1.sections.default", '
                  'keyspace="email", attributes={"first_name": "First name", "city": "City"})',
                  {"email": "email", "first_name": "name", "city": "city"}),
    "mediarithmics": ('Destination("mediarithmics", conn_id="bench_mediarithmics", document_type="USER_PROFILE")',
                      {"user_account_id": "id", "compartment_id": {"const": "1600"}, "name": "name", "city": "city",
                       "plan": "plan", "score": {"source": "score", "type": "int"}}),
    "localytics": ('Destination("localytics", conn_id="bench_localytics", org_id="60")',
                   {"customer_id": "id", "name": "name", "city": "city", "plan": "plan"}),
}

# The DAG of one vendor's sync, with a peak-RSS probe around every task of it: dag.test runs the tasks
# one after another in one process, so the probe resets the process's peak (VmHWM, via clear_refs) when a
# task starts (not when a deferred one resumes) and reads it when the task ends.
DAG_FILE = '''
import datetime as dt
from airflow.sdk import DAG
from airflow_provider_profiles.sync_group import Destination, ProfilesSync, SqlSource


def _rss_reset(context):
    ti = context["ti"]
    if getattr(getattr(ti, "_ti_context_from_server", None), "next_method", None):
        return  # a deferred task resuming: keep the peak of its first part
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass
    ti.xcom_push(key="bench_start_rss_mb", value=_status_mb("VmRSS"))


def _status_mb(field):
    with open("/proc/self/status") as handle:
        return round(next(int(line.split()[1]) for line in handle if line.startswith(field + ":")) / 1024, 1)


def _rss_peak(context, result=None):
    context["ti"].xcom_push(key="bench_peak_rss_mb", value=_status_mb("VmHWM"))


def _chained(first, second):
    def hook(context, *args):
        for part in (first, second):
            if part is not None:
                part(context, *args)
    return hook


with DAG({dag_id!r}, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False,
         default_args={{"retries": 0}}) as dag:
    ProfilesSync(group_id="sync", source=SqlSource("bench_source", {sql!r}), destination={destination},
                 mapping={mapping!r}, mode="upsert", work_folder={work!r}{extra})

for task in dag.tasks:
    if hasattr(task, "partial_kwargs"):  # a mapped task: its hooks are in the partial arguments
        kwargs = task.partial_kwargs
        kwargs["pre_execute"] = _chained(_rss_reset, kwargs.get("pre_execute"))
        kwargs["post_execute"] = _chained(kwargs.get("post_execute"), _rss_peak)
    else:
        task._pre_execute_hook = _chained(_rss_reset, task._pre_execute_hook)
        task._post_execute_hook = _chained(task._post_execute_hook, _rss_peak)
'''


# --- the source ------------------------------------------------------------------------------------


def create_users(pg: PostgresServer, rows: int) -> None:
    pg.psql("DROP TABLE IF EXISTS users")
    pg.psql(f"""CREATE TABLE users AS SELECT n, 'u' || lpad(n::text, 8, '0') AS id,
                'user' || n || '@example.com' AS email, 'Name' || n AS name,
                (ARRAY['Paris', 'Lyon', 'Malmo'])[1 + n % 3] AS city, (ARRAY['free', 'pro'])[1 + n % 2] AS plan,
                n % 100 AS score FROM generate_series(1, {int(rows)}) AS n""")
    pg.psql("ALTER TABLE users ADD PRIMARY KEY (n)")
    pg.psql("VACUUM ANALYZE users")


def change_users(pg: PostgresServer, every: int) -> int:
    """Change the name of every ``every``-th user; returns how many changed."""
    out = pg.psql(f"UPDATE users SET name = name || '-changed' WHERE n % {int(every)} = 0")
    pg.psql("VACUUM ANALYZE users")
    return int(out.strip().split()[-1]) if out.strip() else 0


def source_read_seconds(pg: PostgresServer) -> float:
    """The baseline: the sync's query copied out of PostgreSQL as text, to /dev/null."""
    started = time.monotonic()
    with open(os.devnull, "wb") as sink:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user, "-d", pg.database,
                        "-v", "ON_ERROR_STOP=1", "-c", f"COPY ({SQL}) TO STDOUT"], stdout=sink, check=True)
    return time.monotonic() - started


# --- Airflow ------------------------------------------------------------------------------------------


def airflow_env(home: Path, connections: dict[str, dict]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    })
    for conn_id, conn in connections.items():
        env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
    return env


def run_child(args: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    """Runs a child to its end; returns (exit code, wall seconds). (Not its peak RSS: the probe resets it.)"""
    started = time.monotonic()
    with log.open("a") as out:
        code = subprocess.run(args, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return code, time.monotonic() - started


def read_run(home: Path, dag_id: str) -> dict:
    """The latest run of ``dag_id``: state, seconds, task states, the report, prepare/split results, peaks."""
    with sqlite3.connect(home / "airflow.db") as db:
        run_id, state, run_start, run_end = db.execute(
            "SELECT run_id, state, start_date, end_date FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
            (dag_id,)).fetchone()
        # the sync's own time: its first task's start to its last task's end (not dag.test's setup)
        start, end = db.execute("SELECT min(start_date), max(end_date) FROM task_instance WHERE dag_id = ? AND run_id = ?",
                                (dag_id, run_id)).fetchone()
        states = {f"{task}[{index}]" if index >= 0 else task: task_state for task, index, task_state in db.execute(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))}
        xcoms: dict[tuple[str, str], list] = {}
        for task, key, value in db.execute(
                "SELECT task_id, key, value FROM xcom WHERE dag_id = ? AND run_id = ? ORDER BY map_index",
                (dag_id, run_id)):
            xcoms.setdefault((task, key), []).append(json.loads(value) if isinstance(value, (str, bytes)) else value)
    seconds = (_parse(end) - _parse(start)).total_seconds() if start and end else None
    dag_run_seconds = (_parse(run_end) - _parse(run_start)).total_seconds() if run_start and run_end else None
    peaks: dict[str, tuple[float, float]] = {}  # task -> (peak, RSS when it started)
    for (task, key), values in xcoms.items():
        if key == "bench_peak_rss_mb":
            peaks[task.removeprefix("sync.")] = (max(values), min(xcoms.get((task, "bench_start_rss_mb")) or [0]))
    report = (xcoms.get(("sync.report", "return_value")) or xcoms.get(("sync.report", "sync_report")) or [None])[0]
    prepared = (xcoms.get(("sync.prepare", "return_value")) or [None])[0]
    chunks = (xcoms.get(("sync.split", "return_value")) or [None])[0]
    return {"state": state, "seconds": seconds, "dag_run_seconds": dag_run_seconds, "states": states, "report": report, "prepared": prepared,
            "chunks": chunks, "peaks": peaks}


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace(" ", "T"))


# --- floors -------------------------------------------------------------------------------------------


def vendor_floor(vendor: str, emulator, sent: int, output_bytes: int, time_scale: float) -> tuple[float, str]:
    """(seconds, formula with its figures) the vendor's limits allow for this run."""
    if vendor == "gainsight_px":
        rate = emulator.rate_limit
        return sent / rate, f"{sent:,} records / ({rate} req/s x 1 record/req)"
    if vendor == "apsis_one":
        files = max(1, math.ceil(output_bytes / emulator.max_file_bytes))
        cycle = emulator.queued_seconds + emulator.processing_seconds
        waves = math.ceil(files / emulator.max_concurrent_imports)
        return waves * cycle, (f"ceil({files} files / {emulator.max_concurrent_imports}) x "
                               f"({emulator.queued_seconds} + {emulator.processing_seconds}) s")
    if vendor == "mediarithmics":
        files = max(1, math.ceil(output_bytes / (100 * MB)))
        cycle = emulator.pending_seconds + emulator.running_seconds
        return cycle, f"{files} file(s) at once: {emulator.pending_seconds} + {emulator.running_seconds} s"
    if vendor == "localytics":
        uploads, period = emulator.limit_settings["upload"]
        files = 1
        waits = (math.ceil(files / uploads) - 1) * period
        cycle = emulator.pending_seconds + emulator.running_seconds
        return (waits + cycle) / time_scale, (f"({waits:g} + {emulator.pending_seconds} + {emulator.running_seconds}) "
                                              f"emulated s / time_scale {time_scale:g}")
    raise ValueError(vendor)


# --- one vendor ---------------------------------------------------------------------------------------


def bench_vendor(vendor: str, rows: int, every: int, pg: PostgresServer, home: Path, args) -> list[dict]:
    create_users(pg, rows)
    config = dict(EMULATOR_CONFIG[vendor])
    if vendor == "localytics":
        config["time_scale"] = args.localytics_time_scale
    if vendor == "apsis_one":
        config["max_stored_profiles"] = 0  # counted, not kept: the parent process stays small
    emulator = create(vendor, **config)
    handling = _time_vendor_requests(emulator)
    server = serve(emulator)
    try:
        connections = {"bench_source": pg.airflow_connection(), f"bench_{vendor}": emulator.connection()}
        env = airflow_env(home, connections)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        dag_id = f"bench_{vendor}"
        destination, mapping = DESTINATIONS[vendor]
        extra = "" if vendor == "gainsight_px" else f", upload_options={{'poll_interval': {args.poll_interval}}}"
        work = home / "work" / vendor
        (home / "dags" / f"{dag_id}.py").write_text(textwrap.dedent(DAG_FILE.format(
            dag_id=dag_id, sql=SQL, destination=destination, mapping=mapping, work=str(work), extra=extra)))
        results = []
        for kind in ("full", "incremental"):
            changed = rows if kind == "full" else change_users(pg, every)
            baseline = source_read_seconds(pg)
            with emulator.lock:
                emulator.counters.clear()
            handling["seconds"] = 0.0
            code, wall = run_child([sys.executable, "-m", "airflow", "dags", "test", dag_id], env,
                                               home / f"{dag_id}.log")
            with emulator.lock:
                requests = sum(emulator.counters.values())
            run = read_run(home, dag_id)
            report = run["report"] or {}
            prepared = run["prepared"] or {}
            output_bytes = _size(prepared.get("output"))
            sent = report.get("sent") or 0
            floor, formula = vendor_floor(vendor, emulator, sent, output_bytes, args.localytics_time_scale)
            chunks = run["chunks"]
            results.append({
                "vendor": vendor, "run": kind, "rows": rows, "changed": changed, "ok": code == 0 and run["state"] == "success",
                "states": {t: s for t, s in run["states"].items() if s != "success"},
                "read": report.get("read"), "sent": sent, "unchanged": report.get("unchanged"),
                "vendor_succeeded": report.get("vendor_succeeded"), "vendor_failed": report.get("vendor_failed"),
                "stages": (report.get("seconds") or {}), "run_seconds": run["seconds"], "dag_run_seconds": run["dag_run_seconds"], "child_wall": wall,
                "floor": floor, "formula": formula, "source_read": baseline, "bytes": output_bytes,
                "files": len(chunks) if isinstance(chunks, list) else (1 if vendor != "gainsight_px" else 0),
                "requests": requests, "emulator_seconds": handling["seconds"], "peaks": run["peaks"],
                "vendor_summary": emulator.summary(),
            })
            print(json.dumps(results[-1], default=str), flush=True)
        return results
    finally:
        server.stop()


def _time_vendor_requests(emulator) -> dict:
    """Adds up the seconds the emulator spends answering vendor requests (parsing an uploaded file is
    most of it): work a vendor does on its own machines, which here shares this machine's 2 cores."""
    from airflow_provider_profiles.testing.base import CONTROL_PREFIX

    handling = {"seconds": 0.0}
    build_app = emulator.build_app

    def timed_app():
        app = build_app()

        async def timed(scope, receive, send):
            if scope["type"] != "http" or scope["path"].startswith(CONTROL_PREFIX):
                return await app(scope, receive, send)
            started = time.monotonic()
            try:
                return await app(scope, receive, send)
            finally:
                handling["seconds"] += time.monotonic() - started
        return timed

    emulator.build_app = timed_app
    return handling


def _size(path: str | None) -> int:
    if not path:
        return 0
    try:
        return os.path.getsize(path.removeprefix("file://"))
    except OSError:
        return 0


# --- the table ----------------------------------------------------------------------------------------


def print_table(results: list[dict]) -> None:
    def sec(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    print("\n| vendor | run | rows read | rows sent | files | " + " | ".join(f"{s} s" for s in STAGES)
          + " | other s | whole run s | vendor floor s | run / floor | source read s | run / source read"
          + " | peak RSS per task MB (+ over the task's start) | ok |")
    print("| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in STAGES)
          + " | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for r in results:
        stages = " | ".join(sec(r["stages"].get(s)) for s in STAGES)
        # what no stage clock covers: tasks starting (dag.test runs them in one process: the first pays the
        # imports), tasks outside the stages (mediarithmics' create_import, the report), Airflow between tasks
        other = r["run_seconds"] - sum(r["stages"].get(s) or 0 for s in STAGES) if r["run_seconds"] else None
        ratio = f"{r['run_seconds'] / r['floor']:.2f}x" if r["floor"] and r["run_seconds"] else "-"
        source = f"{r['run_seconds'] / r['source_read']:.1f}x" if r["run_seconds"] and r["source_read"] else "-"
        peaks = ", ".join(f"{task} {peak:.0f} (+{peak - start:.0f})" for task, (peak, start) in r["peaks"].items()
                          if task != "report")
        print(f"| {r['vendor']} | {r['run']} | {r['read'] or 0:,} | {r['sent']:,} | {r['files']} | {stages} | "
              f"{sec(other)} | {sec(r['run_seconds'])} | {r['floor']:.2f} | {ratio} | {r['source_read']:.2f} | {source} | {peaks} | "
              f"{'yes' if r['ok'] else 'NO ' + json.dumps(r['states'])} |")
    print("\nFloors:")
    for r in results:
        print(f"- {r['vendor']} {r['run']}: {r['formula']} = {r['floor']:.2f} s; vendor requests counted: "
              f"{r['requests']:,}, answered in {sec(r.get('emulator_seconds'))} s (summed) by the emulator; "
              f"prepared {r['bytes'] / MB:.1f} MB")
    print("\nIncremental against full (cost per changed row against cost per row):")
    by_vendor: dict[str, dict[str, dict]] = {}
    for r in results:
        by_vendor.setdefault(r["vendor"], {})[r["run"]] = r
    for vendor, runs in by_vendor.items():
        full, inc = runs.get("full"), runs.get("incremental")
        if not (full and inc and full["run_seconds"] and inc["run_seconds"]):
            continue
        share = inc["sent"] / full["sent"] if full["sent"] else 0
        print(f"- {vendor}: {inc['sent']:,} sent of {full['sent']:,} ({share:.2%}); run {inc['run_seconds']:.1f} s "
              f"= {inc['run_seconds'] / full['run_seconds']:.2%} of the full run's {full['run_seconds']:.1f} s; "
              f"upload + vendor wait {_send_seconds(inc):.1f} s = {_ratio(_send_seconds(inc), _send_seconds(full))} "
              f"of the full run's {_send_seconds(full):.1f} s; prepare {sec(inc['stages'].get('prepare'))} s "
              f"against {sec(full['stages'].get('prepare'))} s")


def _send_seconds(result: dict) -> float:
    return sum(result["stages"].get(stage) or 0 for stage in ("upload", "vendor wait"))


def _ratio(part: float, whole: float) -> str:
    return f"{part / whole:.2%}" if whole else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--gainsight-px-rows", type=int, default=None,
                        help="rows for Gainsight PX (default --rows; its floor is rows / 200 s: 83 minutes at 1M)")
    parser.add_argument("--vendors", default=",".join(VENDORS))
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows changed before the incremental run")
    parser.add_argument("--localytics-time-scale", type=float, default=60.0,
                        help="emulated seconds per real second on the Localytics emulator's clock")
    parser.add_argument("--poll-interval", type=float, default=0.2, help="upload tasks' status poll interval (s)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the Airflow home and files here")
    parser.add_argument("--table-from", type=Path, default=None,
                        help="print the table of the result lines (JSON) a previous run printed, and stop")
    args = parser.parse_args(argv)
    if args.table_from:
        print_table([json.loads(line) for line in args.table_from.read_text().splitlines() if line.startswith("{")])
        return 0
    vendors = [v.strip() for v in args.vendors.split(",") if v.strip()]
    unknown = set(vendors) - set(VENDORS)
    if unknown:
        parser.error(f"unknown vendor(s) {', '.join(sorted(unknown))}; choose from {', '.join(VENDORS)}")
    every = max(1, round(1 / args.changed))
    home = (args.workdir or Path(tempfile.mkdtemp(prefix="profiles-throughput-"))).resolve()
    if home.exists() and args.workdir:
        shutil.rmtree(home)
    (home / "dags").mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    print(f"Airflow home {home}; logs {home}/bench_<vendor>.log", flush=True)
    try:
        env = airflow_env(home, {})
        code, _ = run_child([sys.executable, "-m", "airflow", "db", "migrate"], env, home / "migrate.log")
        if code:
            print(f"airflow db migrate failed: {home / 'migrate.log'}", file=sys.stderr)
            return 1
        with PostgresServer() as pg:
            for vendor in vendors:
                rows = args.gainsight_px_rows if vendor == "gainsight_px" and args.gainsight_px_rows else args.rows
                print(f"\n{vendor}: {rows:,} rows", flush=True)
                results.extend(bench_vendor(vendor, rows, every, pg, home, args))
    finally:
        print_table(results)
        if not args.workdir:
            shutil.rmtree(home, ignore_errors=True)
    return 0 if results and all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
