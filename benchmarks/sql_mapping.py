"""Speed of the compiled mapping (prepare/sql_mapping.py) on the dirty benchmark data.

    python -c "import sys; sys.path.insert(0,'benchmarks'); import dirty; dirty.generate('/tmp/ms', 1_000_000, inputs=('csv',))"
    .venv/bin/python benchmarks/sql_mapping.py /tmp/ms/dirty.csv [vendor]

Prints the time of reading the CSV alone into a table, of reading it and mapping it in one
statement, and of mapping the table already read; and how many rows went through Python.
"""

from __future__ import annotations

import sys
import time

import duckdb

sys.path.insert(0, "benchmarks")
import dirty  # noqa: E402

from airflow_provider_profiles.prepare.sql_mapping import compile_mapping  # noqa: E402


def timed(connection, sql: str) -> str:
    """Wall time and CPU time of all threads (the second says more on a shared machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    connection.execute(sql)
    return f"{time.perf_counter() - start:.2f} s (CPU {time.process_time() - cpu:.2f} s)"


def main(path: str, vendor: str = "mediarithmics") -> None:
    connection = duckdb.connect()
    source = f"(SELECT *, row_number() OVER () AS __record FROM read_csv('{path}', all_varchar = true, header = true))"
    read = timed(connection, f"CREATE TABLE raw AS SELECT * FROM {source}")
    types = {name: kind for name, kind, *_ in connection.execute("DESCRIBE raw").fetchall()}
    _, mapping = dirty.provider_parts(vendor)
    compiled = compile_mapping(mapping, types, connection)
    both = timed(connection, f"CREATE TABLE mapped_csv AS {compiled.select_sql(source)}")
    mapped = timed(connection, f"CREATE TABLE mapped AS {compiled.select_sql('raw')}")
    rows, rejected = connection.execute("SELECT count(*), count(__reason) FROM mapped").fetchone()
    print(f"{rows:,} rows, {rejected:,} rejected; fields through Python for every value: {compiled.fallback or 'none'}")
    print(f"read CSV alone {read} | read CSV + map {both} | map the table read {mapped}")


if __name__ == "__main__":
    main(*sys.argv[1:])
