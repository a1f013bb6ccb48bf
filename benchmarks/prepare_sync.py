"""The DuckDB engine's incremental sync against a full prepare of the same file (prints, no assertion).

    python benchmarks/prepare_sync.py [--rows 1000000] [--workdir /tmp/sy]

``dirty.generate`` writes the dirty CSV; a copy with 1% of the rows' plan changed is made from it
(both written by DuckDB, so the unchanged rows are the same text). A first sync of the original is
committed; then, alternating, a full prepare of the copy and a sync of it (never committed, so each
compares with the first), best of 3. Wall seconds and CPU seconds of the process (all its threads:
on a machine shared with other work, CPU time moves less than wall time) are printed for each. Localytics ``assign`` lines from plain string columns. The
rows the sync writes must be exactly the lines that differ between full prepares of the two files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dirty  # noqa: E402

ATTRIBUTES = ["email", "first_name", "city", "plan", "signup_date", "score", "vip", "notes"]


def parts():
    from airflow_provider_profiles.writers import get_writer
    from airflow_provider_profiles.prepare.mapping import FieldMapping

    writer = get_writer("localytics", "changes", customer_id="customer_id", attributes={c: c for c in ATTRIBUTES})
    mapping = FieldMapping({"customer_id": {"source": "id", "required": True}, **{c: c for c in ATTRIBUTES}},
                           representation=writer.representation)
    return writer, mapping


def inputs(workdir: str, rows: int) -> tuple[str, str]:
    import duckdb

    base, changed = os.path.join(workdir, "base.csv"), os.path.join(workdir, "changed.csv")
    source = dirty.generate(workdir, rows, inputs=("csv",))["csv"]
    relation = f"read_csv('{source}', header=true, all_varchar=true, quote='\"', escape='\"')"
    columns = ["id", *ATTRIBUTES]
    changing = ", ".join("CASE WHEN r % 100 = 37 THEN coalesce(plan, '') || '-changed' ELSE plan END AS plan"
                         if name == "plan" else name for name in columns)
    with duckdb.connect() as connection:
        connection.execute(f"COPY (SELECT {', '.join(columns)} FROM {relation}) TO '{base}' (HEADER, FORCE_QUOTE *)")
        connection.execute(f"COPY (SELECT {changing} FROM (SELECT row_number() OVER () AS r, * FROM {relation})) "
                           f"TO '{changed}' (HEADER, FORCE_QUOTE *)")
    return base, changed


def main() -> None:
    from airflow_provider_profiles.prepare.engine import prepare
    from airflow_provider_profiles.prepare.sync import SyncState

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workdir", default="/tmp/prepare-sync-bench")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    base, changed = inputs(args.workdir, args.rows)
    state = os.path.join(args.workdir, "state")
    shutil.rmtree(state, ignore_errors=True)
    out = lambda name: os.path.join(args.workdir, name)  # noqa: E731

    writer, mapping = parts()
    prepare(base, writer, out("warm-up.ndjson"), mapping=mapping)  # imports and first calls, not timed
    writer, mapping = parts()
    started, cpu = time.perf_counter(), time.process_time()
    first = prepare(base, writer, out("first.ndjson"), mapping=mapping, sync=SyncState(state), sync_run_key="first")
    print(f"first sync (every row): {time.perf_counter() - started:.2f} s, {time.process_time() - cpu:.2f} CPU s, "
          f"{first.written:,} written")
    SyncState(state).commit("first")
    full_times, sync_times, full_cpu, sync_cpu = [], [], [], []
    for round_ in range(args.repeat):
        writer, mapping = parts()
        started, cpu = time.perf_counter(), time.process_time()
        full = prepare(changed, writer, out("full-changed.ndjson"), mapping=mapping)
        full_times.append(time.perf_counter() - started)
        full_cpu.append(time.process_time() - cpu)
        writer, mapping = parts()
        started, cpu = time.perf_counter(), time.process_time()
        synced = prepare(changed, writer, out("sync-changed.ndjson"), mapping=mapping, sync=SyncState(state),
                         sync_run_key=f"second-{round_}")
        sync_times.append(time.perf_counter() - started)
        sync_cpu.append(time.process_time() - cpu)
        print(f"round {round_}: full {full_times[-1]:.2f} s / {full_cpu[-1]:.2f} CPU s ({full.written:,} written), "
              f"sync {sync_times[-1]:.2f} s / {sync_cpu[-1]:.2f} CPU s "
              f"({synced.written:,} written, {synced.unchanged:,} unchanged, {synced.rejected:,} rejected)")
    writer, mapping = parts()
    prepare(base, writer, out("full-base.ndjson"), mapping=mapping)
    with open(out("full-changed.ndjson")) as after, open(out("full-base.ndjson")) as before:
        expected = set(after) - set(before)
    with open(out("sync-changed.ndjson")) as handle:
        written = list(handle)
    print("load average: " + " ".join(f"{load:.2f}" for load in os.getloadavg()))
    print(f"best of {args.repeat}: full {min(full_times):.2f} s, sync {min(sync_times):.2f} s, "
          f"sync / full {min(sync_times) / min(full_times):.2f}x; CPU: full {min(full_cpu):.2f} s, "
          f"sync {min(sync_cpu):.2f} s, sync / full {min(sync_cpu) / min(full_cpu):.2f}x")
    print(f"rows the sync wrote: {len(written):,}; lines that differ between the full prepares: {len(expected):,}; "
          f"the same lines: {len(written) == len(expected) and set(written) == expected}")


if __name__ == "__main__":
    main()
