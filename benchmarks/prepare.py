"""Data preparation benchmark: clean CSV -> Localytics change lines, split, incremental sync, and
every vendor's main format with a typed mapping on dirty data (CSV, NDJSON, Parquet, SQL cursor).

    python benchmarks/prepare.py                 # every case, 300,000 rows (5-10 minutes)
    python benchmarks/prepare.py --rows 200000   # a quick look
    python benchmarks/prepare.py --cases mediarithmics,localytics-parquet --rows 1000000
    python benchmarks/prepare.py --cases clean --rss-rows 10000000   # also: peak RSS at 10M rows
    python benchmarks/prepare.py --cases mediarithmics --rows 1000000 --dirty-rss-rows 10000000 --repeat 1

Cases (``--cases``, comma-separated): ``clean``, ``split``, ``sync`` (these three as before), and
``<vendor>[-<input>]`` for the dirty data: vendor ``mediarithmics`` (USER_PROFILE), ``apsis_one``
(CSV), ``localytics`` (profile changes) or ``gainsight_px`` (records), input ``csv`` (the
default), ``ndjson``, ``parquet`` or ``sql`` (an SQLite cursor); ``dirty`` is the default set of
them (every vendor from CSV, mediarithmics from each other input). In a dirty case the provider,
the DuckDB prototype (``candidates/duckdb_prepare.py``, skipped without ``duckdb``), the polars
candidate (``candidates/polars_prepare.py``, files only; ``--skip-polars-candidate``) and polars'
flat conversion of the same file run in alternation; the DuckDB and polars candidates' outputs are
checked against the provider's (the same records, the same number of rejects) and mismatches are
printed. ``--dirty-rss-rows N`` then runs every engine (DuckDB under each ``--duckdb-memory-limits``
value and variants) on N dirty CSV rows and on ``--rows``, and prints both peaks and their ratio.

Every measurement runs in its own process (so peak RSS is that of the job alone) and reports
wall time (imports excluded) and peak RSS. Baselines run in the same invocation on the same file:
naive pandas (``read_csv`` whole, then per-row dicts to JSON), polars ``scan_csv().sink_ndjson()``
(flat NDJSON: the practical floor) and coreutils ``split -C``. Needs ``polars`` for its baseline
(``uv pip install polars``); it is skipped when missing. Data is generated under a temp dir.
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
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dirty  # noqa: E402  (benchmarks/dirty.py: the dirty data and every vendor's typed mapping)

COLUMNS = ["customer_id", "email", "first_name", "last_name", "city", "country", "plan", "signup_date", "score"]


# --- data ----------------------------------------------------------------------------------------


def generate(path: str, rows: int, seed: int = 7, changed_fraction: float = 0.0) -> None:
    """A profile CSV with 9 columns; ``changed_fraction`` of the rows get a different plan/score."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    first = np.array(["Anna", "Ben", "Chloé", "David", "Eva", "Farid", "Greta", "Hugo", "Inès", "Jonas", "Kai", "Lena"])
    last = np.array(["Smith", "Martin", "Müller", "Rossi", "García", "Dubois", "Novak", "Jensen", "Silva", "Kowalski"])
    cities = np.array(["Paris", "Berlin", "Madrid", "Rome", "Lyon", "São Paulo", "Kraków", "Oslo", "Zürich", "Porto"])
    countries = np.array(["FR", "DE", "ES", "IT", "FR", "BR", "PL", "NO", "CH", "PT"])
    plans = np.array(["free", "starter", "pro", "enterprise"])
    batch = 500_000
    with pacsv.CSVWriter(path, pa.schema([(name, pa.string()) for name in COLUMNS])) as writer:
        for start in range(0, rows, batch):
            count = min(batch, rows - start)
            rng = np.random.default_rng(seed * 1_000_003 + start)
            ids = np.arange(start, start + count)
            city = rng.integers(0, len(cities), count)
            plan = rng.integers(0, len(plans), count)
            score = rng.integers(0, 1000, count)
            if changed_fraction:
                flip = np.random.default_rng(start + 99).random(count) < changed_fraction
                plan = np.where(flip, (plan + 1) % len(plans), plan)
                score = np.where(flip, score + 1, score)
            days = rng.integers(0, 3650, count).astype("timedelta64[D]") + np.datetime64("2015-01-01")
            table = pa.table(
                {
                    "customer_id": pa.array(np.char.add("cust-", ids.astype(str))),
                    "email": pa.array(np.char.add(np.char.add("user", ids.astype(str)), "@example.com")),
                    "first_name": pa.array(first[rng.integers(0, len(first), count)]),
                    "last_name": pa.array(last[rng.integers(0, len(last), count)]),
                    "city": pa.array(cities[city]),
                    "country": pa.array(countries[city]),
                    "plan": pa.array(plans[plan]),
                    "signup_date": pa.array(days.astype(str)),
                    "score": pa.array(score.astype(str)),
                }
            )
            writer.write_table(table)


# --- jobs (each in a child process) ---------------------------------------------------------------


def _localytics_writer():
    from airflow_provider_profiles.writers import get_writer

    return get_writer(
        "localytics", "changes", customer_id="customer_id", attributes={c: c for c in COLUMNS if c != "customer_id"}
    )


def job_provider(source: str, output: str, extra: dict) -> dict:
    from airflow_provider_profiles.prepare.engine import prepare

    writer = _localytics_writer()
    started = time.perf_counter()
    options = {"duplicates": extra["duplicates"]} if extra.get("duplicates") else {}
    result = prepare(source, writer, output, rejects=output + ".rejects.csv", progress_interval=None, **options)
    figures = {"seconds": time.perf_counter() - started, "written": result.written, "rejected": result.rejected}
    if options:
        figures["duplicates"] = options["duplicates"]
    return figures


def job_sync(source: str, output: str, extra: dict) -> dict:
    from airflow_provider_profiles.prepare.engine import prepare
    from airflow_provider_profiles.prepare.sync import SyncState

    writer = _localytics_writer()
    state = SyncState(extra["state"])
    started = time.perf_counter()
    result = prepare(source, writer, output, rejects=output + ".rejects.csv", sync=state, sync_run_key=extra["run"],
                     progress_interval=None)
    seconds = time.perf_counter() - started
    if extra.get("commit"):
        state.commit(extra["run"])
    return {"seconds": seconds, "written": result.written, "unchanged": result.unchanged, "rejected": result.rejected}


def job_pandas(source: str, output: str, extra: dict) -> dict:
    import pandas as pd

    started = time.perf_counter()
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    with open(output, "w", encoding="utf-8") as handle:
        for record in frame.to_dict("records"):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return {"seconds": time.perf_counter() - started, "written": len(frame)}


def job_polars(source: str, output: str, extra: dict) -> dict:
    import polars as pl

    started = time.perf_counter()
    pl.scan_csv(source, infer_schema=False).sink_ndjson(output)
    return {"seconds": time.perf_counter() - started}


def job_split(source: str, output: str, extra: dict) -> dict:
    from airflow_provider_profiles.prepare.split import split_file

    started = time.perf_counter()
    chunks = split_file(source, output, max_bytes=extra["max_bytes"], file_format="ndjson")
    return {"seconds": time.perf_counter() - started, "chunks": len(chunks)}


def job_dirty_provider(source: str, output: str, extra: dict) -> dict:
    """The operators themselves: ``ProfilesFileTransformOperator.execute`` for a file,
    ``SqlToProfilesFileOperator.execute`` on an SQLite connection for the SQL cursor."""
    vendor, config = extra["vendor"], dirty.VENDORS[extra["vendor"]]
    rejects = output + ".rejects.csv"
    started = time.perf_counter()
    common = {"task_id": "prepare", "vendor": vendor, "writer_format": config["format"], "output_path": output,
              "writer_options": config["writer_options"], "mapping": config["mapping"], "rejects_path": rejects,
              # dirty data rejects more than the operator's default ceiling allows
              "max_rejected_ratio": None}
    if extra["input"] == "sql":  # an Airflow connection to the SQLite file, from the environment
        from airflow_provider_profiles.operators.prepare import SqlToProfilesFileOperator

        os.environ["AIRFLOW_CONN_PROFILES_BENCH_SQLITE"] = json.dumps({"conn_type": "sqlite", "host": source})
        operator = SqlToProfilesFileOperator(sql=dirty.SQL_QUERY, conn_id="profiles_bench_sqlite", **common)
        result = operator.execute({})
    else:
        from airflow_provider_profiles.operators.prepare import ProfilesFileTransformOperator

        result = ProfilesFileTransformOperator(source_path=source, **common).execute({})
    return {"seconds": time.perf_counter() - started, "written": result["written"], "rejected": result["rejected"]}


def job_dirty_duckdb(source: str, output: str, extra: dict) -> dict:
    from candidates.duckdb_prepare import prepare

    started = time.perf_counter()
    settings = {"preserve_insertion_order": extra["preserve_insertion_order"]} if "preserve_insertion_order" in extra else {}
    written, rejected = prepare(extra["vendor"], extra["input"], source, output, output + ".rejects.csv",
                                memory_limit=extra.get("memory_limit", "300MB"), settings=settings,
                                streaming=extra.get("streaming", False))
    return {"seconds": time.perf_counter() - started, "written": written, "rejected": rejected}


def job_dirty_polars_candidate(source: str, output: str, extra: dict) -> dict:
    from candidates.polars_prepare import prepare

    started = time.perf_counter()
    written, rejected = prepare(extra["vendor"], extra["input"], source, output, output + ".rejects.csv",
                                output_pass=extra.get("output_pass", "sinks"))
    return {"seconds": time.perf_counter() - started, "written": written, "rejected": rejected}


def job_dirty_polars(source: str, output: str, extra: dict) -> dict:
    """Flat NDJSON of the same input: no mapping, no checks (the floor)."""
    import polars as pl

    started = time.perf_counter()
    kind = extra["input"]
    if kind == "csv":
        pl.scan_csv(source, infer_schema=False).sink_ndjson(output)
    elif kind == "ndjson":
        pl.scan_ndjson(source, schema={name: pl.String for name in dirty.COLUMNS}).sink_ndjson(output)
    elif kind == "parquet":
        pl.scan_parquet(source).sink_ndjson(output)
    else:
        import sqlite3

        connection = sqlite3.connect(source)
        with open(output, "wb") as stream:
            for frame in pl.read_database(dirty.SQL_QUERY, connection, iter_batches=True, batch_size=50_000):
                frame.write_ndjson(stream)
        connection.close()
    return {"seconds": time.perf_counter() - started}


JOBS = {"provider": job_provider, "sync": job_sync, "pandas": job_pandas, "polars": job_polars, "split": job_split,
        "dirty-provider": job_dirty_provider, "dirty-duckdb": job_dirty_duckdb, "dirty-polars": job_dirty_polars,
        "dirty-polars-candidate": job_dirty_polars_candidate}


def warm_up(name: str) -> None:
    """Imports happen before the clock starts, for every job alike (pyarrow loads its pandas shim
    on first use; this environment compiles modules on every start, as bytecode is not cached)."""
    if name in ("provider", "sync"):
        import pyarrow as pa

        pa.array([0])
        import airflow_provider_profiles.writers.localytics  # noqa: F401
        import airflow_provider_profiles.prepare.engine  # noqa: F401
    elif name == "split":
        import airflow_provider_profiles.prepare.split  # noqa: F401
    elif name == "pandas":
        import pandas  # noqa: F401
    elif name in ("polars", "dirty-polars"):
        import sqlite3

        import polars as pl

        # read_database imports its helpers on first use: done here, on an empty in-memory table
        memory = sqlite3.connect(":memory:")
        memory.execute("CREATE TABLE t (a TEXT)")
        for _ in pl.read_database("SELECT a FROM t", memory, iter_batches=True, batch_size=10):
            pass
    elif name == "dirty-provider":
        import msgspec  # noqa: F401
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401

        pa.array([0])
        import airflow_provider_profiles.prepare.engine  # noqa: F401
        import airflow.providers.sqlite.hooks.sqlite  # noqa: F401
        import airflow_provider_profiles.operators.prepare  # noqa: F401

        # the operators import what they use on first run: one tiny run of each input kind first
        with tempfile.TemporaryDirectory() as scratch:
            paths = dirty.generate(scratch, 50, dirty.INPUTS)
            for kind, path in paths.items():
                for vendor in dirty.VENDORS:
                    job_dirty_provider(path, os.path.join(scratch, f"{kind}.{vendor}.out"), {"vendor": vendor, "input": kind})
    elif name == "dirty-polars-candidate":
        import polars  # noqa: F401

        import candidates.polars_prepare  # noqa: F401

        # polars compiles nothing, but its first query loads its thread pool: one tiny run per vendor
        with tempfile.TemporaryDirectory() as scratch:
            path = dirty.generate(scratch, 50, ("csv",))["csv"]
            for vendor in dirty.VENDORS:
                job_dirty_polars_candidate(path, os.path.join(scratch, f"{vendor}.out"), {"vendor": vendor, "input": "csv"})
    elif name == "dirty-duckdb":
        import duckdb
        import pyarrow as pa

        import candidates.duckdb_prepare  # noqa: F401

        # an Arrow stream scan imports its helpers on first use: done here, on one empty batch
        schema = pa.schema([("a", pa.string())])
        reader = pa.RecordBatchReader.from_batches(schema, iter([pa.record_batch([pa.array([], pa.string())], schema=schema)]))
        connection = duckdb.connect()
        connection.register("warm", reader)
        connection.sql("SELECT count(*) FROM warm").fetchall()
        connection.close()


def peak_rss_mb() -> float:
    """VmHWM of this process image (ru_maxrss would carry the parent's peak over fork + exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(name: str, source: str, output: str, extra: str) -> None:
    warm_up(name)
    cpu = time.process_time()
    figures = JOBS[name](source, output, json.loads(extra))
    # CPU seconds of every thread: steadier than wall time when other jobs share the machine
    figures["cpu_seconds"] = round(time.process_time() - cpu, 2)
    figures["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(figures))


def run(name: str, source: str, output: str, repeat: int = 1, **extra) -> dict:
    """Best wall time (and highest peak RSS) of ``repeat`` fresh processes: shared machines are noisy."""
    best = None
    for _ in range(repeat):
        # Every job starts with no dirty pages waiting for the disk: otherwise a job pays for the
        # writeback of the previous one's output (the jobs write 0.4 to 0.9 GB each).
        os.sync()
        command = [sys.executable, __file__, "--child", name, source, output, json.dumps(extra)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode:
            raise RuntimeError(f"{name} failed:\n{completed.stderr[-3000:]}")
        figures = json.loads(completed.stdout.strip().splitlines()[-1])
        if best is None:
            best = figures
        else:
            best["peak_rss_mb"] = max(best["peak_rss_mb"], figures["peak_rss_mb"])
            for key in ("seconds", "cpu_seconds"):
                best[key] = min(best[key], figures[key])
    figures = best
    print(f"  {name:<10} {figures['seconds']:7.2f} s  peak RSS {figures['peak_rss_mb']:7.0f} MB  "
          + " ".join(f"{k}={v}" for k, v in figures.items() if k not in ("seconds", "peak_rss_mb")), flush=True)
    return figures


def interleaved(jobs: dict[str, str], source: str, repeat: int, extra: dict[str, dict] | None = None) -> dict[str, dict]:
    """Runs the jobs in turn, ``repeat`` rounds, keeping each one's best: load on a shared machine
    comes and goes, and alternating exposes every job to the same conditions."""
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for name, output in jobs.items():
            arguments = json.dumps((extra or {}).get(name, {}))
            command = [sys.executable, __file__, "--child", name, source, output, arguments]
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode:
                raise RuntimeError(f"{name} failed:\n{completed.stderr[-3000:]}")
            figures = json.loads(completed.stdout.strip().splitlines()[-1])
            if name in best:
                figures["peak_rss_mb"] = max(figures["peak_rss_mb"], best[name]["peak_rss_mb"])
                for key in ("seconds", "cpu_seconds"):
                    figures[key] = min(figures[key], best[name][key])
            best[name] = figures
    for name, figures in best.items():
        print(f"  {name:<10} {figures['seconds']:7.2f} s  peak RSS {figures['peak_rss_mb']:7.0f} MB  "
              + " ".join(f"{k}={v}" for k, v in figures.items() if k not in ("seconds", "peak_rss_mb")), flush=True)
    return best


def timed(command: list[str], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        os.sync()
        started = time.perf_counter()
        subprocess.run(command, check=True)
        best = min(best, time.perf_counter() - started)
    return best


DIRTY_DEFAULT = ["mediarithmics", "apsis_one", "localytics", "gainsight_px",
                 "mediarithmics-ndjson", "mediarithmics-parquet", "mediarithmics-sql"]
DEFAULT_CASES = ["clean", "split", "sync", *DIRTY_DEFAULT]


def parse_cases(text: str) -> list[str]:
    cases: list[str] = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        if name == "dirty":
            cases += DIRTY_DEFAULT
        elif name in ("clean", "split", "sync"):
            cases.append(name)
        else:
            vendor, _, kind = name.partition("-")
            if vendor not in dirty.VENDORS or (kind and kind not in dirty.INPUTS):
                raise SystemExit(f"unknown case {name!r}: clean, split, sync, dirty, or <vendor>[-<input>] with vendor "
                                 f"in {', '.join(dirty.VENDORS)} and input in {', '.join(dirty.INPUTS)}")
            cases.append(name)
    return list(dict.fromkeys(cases))


def dirty_case(case: str, paths: dict[str, str], workdir: str, repeat: int, with_duckdb: bool, with_polars: bool,
               with_candidate: bool = False) -> dict:
    vendor, _, kind = case.partition("-")
    kind = kind or "csv"
    extension = dirty.VENDORS[vendor]["extension"]
    outputs = {"dirty-provider": os.path.join(workdir, f"{case}.provider.{extension}")}
    if with_duckdb:
        outputs["dirty-duckdb"] = os.path.join(workdir, f"{case}.duckdb.{extension}")
    with_candidate = with_candidate and kind != "sql"  # the polars candidate reads files only
    if with_candidate:
        outputs["dirty-polars-candidate"] = os.path.join(workdir, f"{case}.candidate.{extension}")
    if with_polars:
        outputs["dirty-polars"] = os.path.join(workdir, f"{case}.polars.ndjson")
    arguments = {"vendor": vendor, "input": kind}
    print(f"\n{case}: {kind} -> {vendor} {dirty.VENDORS[vendor]['format']}, typed mapping, dirty rows", flush=True)
    figures = interleaved(outputs, paths[kind], repeat, extra={name: arguments for name in outputs})
    provider = figures["dirty-provider"]
    for name in ("dirty-duckdb", "dirty-polars-candidate", "dirty-polars"):
        if name in figures:
            print(f"  provider / {name[6:]}: time {provider['seconds'] / figures[name]['seconds']:.2f}x, "
                  f"CPU {provider['cpu_seconds'] / figures[name]['cpu_seconds']:.2f}x, peak RSS {provider['peak_rss_mb'] / figures[name]['peak_rss_mb']:.2f}x")
    for name in ("dirty-duckdb", "dirty-polars-candidate"):
        if name in figures and "dirty-polars" in figures:
            print(f"  {name[6:]} / polars: time {figures[name]['seconds'] / figures['dirty-polars']['seconds']:.2f}x")
    if with_duckdb:
        figures["mismatches"] = compare_outputs(outputs["dirty-provider"], outputs["dirty-duckdb"], extension,
                                                provider, figures["dirty-duckdb"])
    if with_candidate:
        figures["candidate_mismatches"] = compare_outputs(
            outputs["dirty-provider"], outputs["dirty-polars-candidate"], extension, provider,
            figures["dirty-polars-candidate"], label="polars-candidate")
    for path in outputs.values():
        for leftover in (path, path + ".rejects.csv"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return figures


def dirty_rss(args, cases: list[str], paths: dict[str, str], workdir: str, with_duckdb: bool,
              with_candidate: bool) -> None:
    """Peak RSS and time of each engine on ``--dirty-rss-rows`` dirty CSV rows against ``--rows``,
    one DuckDB run per ``--duckdb-memory-limits`` value, then at the first value with insertion
    order not kept and the streaming variant; the polars candidate with each output pass."""
    cases = [case for case in cases if (case.partition("-")[2] or "csv") == "csv"]
    jobs = [("provider", "dirty-provider", {})]
    if with_duckdb:
        limits = list(filter(None, args.duckdb_memory_limits.split(",")))
        for limit in limits:
            jobs.append((f"duckdb {limit}", "dirty-duckdb", {"memory_limit": limit}))
        jobs.append((f"duckdb {limits[0]}, order not kept", "dirty-duckdb",
                     {"memory_limit": limits[0], "preserve_insertion_order": False}))
        jobs.append((f"duckdb {limits[0]}, streaming", "dirty-duckdb", {"memory_limit": limits[0], "streaming": True}))
    if with_candidate:
        for output_pass in ("sinks", "batches"):
            jobs.append((f"polars candidate, {output_pass}", "dirty-polars-candidate", {"output_pass": output_pass}))
    figures: dict[tuple[str, str, int], dict] = {}
    for rows, source, repeat in ((args.rows, paths["csv"], args.repeat), (args.dirty_rss_rows, None, 1)):
        if source is None:
            source = os.path.join(workdir, "dirty-big", "dirty.csv")
            os.makedirs(os.path.dirname(source), exist_ok=True)
            print(f"\ngenerating {rows:,} dirty rows as csv ...", flush=True)
            dirty.generate(os.path.dirname(source), rows, ("csv",))
        print(f"\npeak RSS at {rows:,} dirty rows ({os.path.getsize(source) / 1e6:.0f} MB of CSV), "
              f"output to a file, uptime: {os.getloadavg()}", flush=True)
        for case in cases:
            vendor = case.partition("-")[0]
            output = os.path.join(workdir, f"rss.{vendor}.{dirty.VENDORS[vendor]['extension']}")
            print(f" {case}:", flush=True)
            extension = dirty.VENDORS[vendor]["extension"]
            reference = os.path.join(workdir, f"rss.reference.{extension}")
            for label, name, extra in jobs:
                print(f"  [{label}]", end="", flush=True)
                try:
                    figures[case, label, rows] = run(name, source, output, repeat=repeat, vendor=vendor, input="csv",
                                                     **extra)
                except RuntimeError as error:  # e.g. DuckDB's "Out of Memory Error" under a low memory_limit
                    cause = [line for line in str(error).splitlines() if "Error" in line] or ["?"]
                    print(f" failed: {cause[-1].strip()[:200]}", flush=True)
                    continue
                if rows == args.rows:  # every variant's output checked against the provider's, at this size
                    if name == "dirty-provider":
                        os.replace(output, reference)
                    else:
                        compare_outputs(reference, output, extension, figures[case, "provider", rows],
                                        figures[case, label, rows], label=label)
                for leftover in (output, output + ".rejects.csv"):
                    if os.path.exists(leftover):
                        os.remove(leftover)
            if os.path.exists(reference):
                os.remove(reference)
    print(f"\npeak RSS (VmHWM of the job's process) and best time, {args.rows:,} and {args.dirty_rss_rows:,} dirty CSV rows")
    print(f"| case | engine | {args.rows:,} rows | {args.dirty_rss_rows:,} rows | peak ratio | time ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for case in cases:
        for label, _, _ in jobs:
            small, large = figures.get((case, label, args.rows)), figures.get((case, label, args.dirty_rss_rows))
            if small is None or large is None:
                print(f"| {case} | {label} | " + " | ".join(
                    f"{job['seconds']:.2f} s, {job['peak_rss_mb']:.0f} MB" if job else "failed" for job in (small, large))
                    + " | - | - |", flush=True)
                continue
            print(f"| {case} | {label} | {small['seconds']:.2f} s, {small['peak_rss_mb']:.0f} MB | "
                  f"{large['seconds']:.2f} s, {large['peak_rss_mb']:.0f} MB | "
                  f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x | {large['seconds'] / small['seconds']:.1f}x |",
                  flush=True)


def compare_outputs(provider_path: str, candidate_path: str, extension: str, provider: dict, candidate: dict,
                    label: str = "duckdb") -> int:
    """Records compared as values (JSON objects with their types, CSV rows), in order; reject
    counts compared."""
    import csv
    import itertools

    def records(path):
        with open(path, encoding="utf-8", newline="") as handle:
            if extension == "csv":
                yield from csv.reader(handle)
            else:
                for line in handle:  # re-encoded: 1 == 1.0 == True in Python, not in JSON
                    yield json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False)

    mismatches = 0
    for number, (mine, theirs) in enumerate(itertools.zip_longest(records(provider_path), records(candidate_path)), 1):
        if mine != theirs:
            mismatches += 1
            if mismatches <= 3:
                print(f"  MISMATCH at output record {number}:\n    provider {mine}\n    {label:<8} {theirs}")
    if provider["rejected"] != candidate["rejected"]:
        mismatches += 1
        print(f"  MISMATCH rejects: provider {provider['rejected']:,}, {label} {candidate['rejected']:,}")
    print(f"  {label} output against the provider's: "
          + ("identical records, same reject count" if not mismatches else f"{mismatches:,} mismatches"), flush=True)
    return mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="comma-separated; see above (default: all)")
    parser.add_argument("--rss-rows", type=int, default=0, help="also measure the provider's peak RSS at this many rows")
    parser.add_argument("--split-mb", type=int, default=100)
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--skip-duckdb", action="store_true")
    parser.add_argument("--skip-polars-candidate", action="store_true")
    parser.add_argument("--dirty-rss-rows", type=int, default=0,
                        help="also: peak RSS of every engine on this many dirty CSV rows against --rows")
    parser.add_argument("--duckdb-memory-limits", default="150MB,250MB",
                        help="with --dirty-rss-rows: DuckDB memory_limit values to try (comma-separated)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per measurement, best time kept (pandas: 1)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    cases = parse_cases(args.cases)

    workdir = args.workdir or tempfile.mkdtemp(prefix="profiles-bench-")
    os.makedirs(workdir, exist_ok=True)
    try:
        dirty_cases = [case for case in cases if case not in ("clean", "split", "sync")]
        if dirty_cases:
            kinds = sorted({case.partition("-")[2] or "csv" for case in dirty_cases})
            print(f"generating {args.rows:,} dirty rows as {', '.join(kinds)} under {workdir} ...", flush=True)
            paths = dirty.generate(workdir, args.rows, kinds)
            print("  " + ", ".join(f"{kind} {os.path.getsize(path) / 1e6:.0f} MB" for kind, path in paths.items()))
            try:
                import duckdb  # noqa: F401

                with_duckdb = not args.skip_duckdb
            except ImportError:
                print("  duckdb not installed: the candidate is skipped")
                with_duckdb = False
            try:
                import polars  # noqa: F401

                with_polars, with_polars_installed = not args.skip_baselines, True
            except ImportError:
                print("  polars not installed: the floor and the polars candidate are skipped")
                with_polars = with_polars_installed = False
            with_candidate = with_polars_installed and not args.skip_polars_candidate
            summary = {case: dirty_case(case, paths, workdir, args.repeat, with_duckdb, with_polars, with_candidate)
                       for case in dirty_cases}
            print_summary(summary, args.rows)
            if args.dirty_rss_rows:
                dirty_rss(args, dirty_cases, paths, workdir, with_duckdb, with_candidate)
            for path in paths.values():
                os.remove(path)
        if {"clean", "split", "sync"} & set(cases):
            clean_cases(args, cases, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def print_summary(summary: dict[str, dict], rows: int) -> None:
    print(f"\ndirty data, {rows:,} rows: best time (s) / peak RSS (MB); ratios of time")
    print("| case | provider | duckdb | polars candidate | polars flat | provider / polars | duckdb / polars "
          "| candidate / polars | provider / duckdb | duckdb = provider | candidate = provider |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for case, figures in summary.items():
        cells = []
        for name in ("dirty-provider", "dirty-duckdb", "dirty-polars-candidate", "dirty-polars"):
            job = figures.get(name)
            cells.append(f"{job['seconds']:.2f} s, {job['peak_rss_mb']:.0f} MB" if job else "-")

        def ratio(a, b):
            return f"{figures[a]['seconds'] / figures[b]['seconds']:.1f}x" if a in figures and b in figures else "-"

        def same(key):
            return "-" if key not in figures else ("yes" if not figures[key] else f"no ({figures[key]})")

        print(f"| {case} | {' | '.join(cells)} | {ratio('dirty-provider', 'dirty-polars')} | "
              f"{ratio('dirty-duckdb', 'dirty-polars')} | {ratio('dirty-polars-candidate', 'dirty-polars')} | "
              f"{ratio('dirty-provider', 'dirty-duckdb')} | {same('mismatches')} | {same('candidate_mismatches')} |",
              flush=True)


def clean_cases(args, cases: list[str], workdir: str) -> None:
    source = os.path.join(workdir, "profiles.csv")
    print(f"generating {args.rows:,} rows under {workdir} ...", flush=True)
    generate(source, args.rows)
    size_mb = os.path.getsize(source) / 1e6
    print(f"input: {size_mb:.0f} MB, {len(COLUMNS)} columns")
    if "clean" in cases:
        print("\nclean: CSV -> Localytics change lines")
        jobs = {"provider": os.path.join(workdir, "provider.ndjson")}
        if not args.skip_baselines:
            try:
                import polars  # noqa: F401

                jobs["polars"] = os.path.join(workdir, "polars.ndjson")
            except ImportError:
                print("  polars not installed: floor skipped")
        figures = interleaved(jobs, source, args.repeat)
        provider = figures["provider"]
        if not args.skip_baselines:
            figures["pandas"] = run("pandas", source, os.path.join(workdir, "pandas.ndjson"))
        for name in ("pandas", "polars"):
            if name in figures:
                print(f"  provider / {name}: time {provider['seconds'] / figures[name]['seconds']:.2f}x, "
                      f"CPU {provider['cpu_seconds'] / figures[name]['cpu_seconds']:.2f}x, "
                      f"peak RSS {provider['peak_rss_mb'] / figures[name]['peak_rss_mb']:.2f}x")
    elif "split" in cases:  # the split needs the change lines
        run("provider", source, os.path.join(workdir, "provider.ndjson"))

    output = os.path.join(workdir, "provider.ndjson")
    if "split" in cases:
        out_mb = os.path.getsize(output) / 1e6
        print(f"\nsplit {out_mb:.0f} MB of change lines into {args.split_mb} MB chunks")
        split = run("split", output, os.path.join(workdir, "chunks"), repeat=args.repeat,
                    max_bytes=args.split_mb * 1000 * 1000)
        coreutils_dir = os.path.join(workdir, "coreutils")
        os.makedirs(coreutils_dir)
        coreutils = timed(["split", "-C", f"{args.split_mb}MB", output, os.path.join(coreutils_dir, "part-")],
                          repeat=args.repeat)
        print(f"  split -C   {coreutils:7.2f} s\n  provider / coreutils: {split['seconds'] / coreutils:.2f}x")
        shutil.rmtree(os.path.join(workdir, "chunks"), ignore_errors=True)
        shutil.rmtree(coreutils_dir, ignore_errors=True)

    changed = os.path.join(workdir, "profiles-changed.csv")
    if "sync" in cases:
        print("\nincremental sync, 1% of rows changed")
        state = os.path.join(workdir, "state")
        shutil.rmtree(state, ignore_errors=True)  # a kept --workdir must not hold an earlier run's sync
        print("  first sync (every row is new; its snapshot is committed), once:")
        run("sync", source, os.path.join(workdir, "sync-1.ndjson"), state=state, run="first", commit=True)
        print("  then the changed file, alternating with a full prepare of it:")
        changed = os.path.join(workdir, "profiles-changed.csv")
        generate(changed, args.rows, changed_fraction=0.01)
        pair = interleaved(
            {"provider": os.path.join(workdir, "full-2.ndjson"), "sync": os.path.join(workdir, "sync-2.ndjson")},
            changed, args.repeat, extra={"sync": {"state": state, "run": "second"}},
        )
        sync, full = pair["sync"], pair["provider"]
        print(f"  sync / full prepare of the same file: {sync['seconds'] / full['seconds']:.2f}x, "
              f"rows written {sync['written']:,} of {args.rows:,} ({sync['written'] / args.rows:.2%})")

    if args.rss_rows:
        print(f"\nat {args.rss_rows:,} rows against {args.rows:,} (output to {os.devnull}: memory and CPU, not the disk)")
        small = run("provider", source, os.devnull, repeat=args.repeat)
        for path in (source, changed, output):
            if os.path.exists(path):
                os.remove(path)
        big = os.path.join(workdir, "big.csv")
        generate(big, args.rss_rows)
        large = run("provider", big, os.devnull)
        # and without the duplicate-id check (its memory is fixed, about 40 MB):
        flat = run("provider", big, os.devnull, duplicates="keep")
        try:
            import polars  # noqa: F401

            floor = run("polars", big, os.devnull)
            print(f"  provider / polars: time {large['seconds'] / floor['seconds']:.2f}x")
        except ImportError:
            pass
        print(f"  peak RSS with the duplicate check: {large['peak_rss_mb']:.0f} MB at {args.rss_rows:,} rows, "
              f"{small['peak_rss_mb']:.0f} MB at {args.rows:,} ({large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x); "
              f"{flat['peak_rss_mb']:.0f} MB at {args.rss_rows:,} with duplicates='keep'")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6])
    else:
        main()
