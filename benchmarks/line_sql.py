"""The engine's write query (reason + line per row) with the writers' line SQL as it is and as it
was before the concat() rewrite (``tests/unit/writers/line_sql_before.py``), on the mapped dirty
rows of every vendor's main format. CPU seconds of every thread, best of ``--repeat``, the two
alternated: steadier than wall time on a shared machine.

    python benchmarks/line_sql.py --rows 300000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests", "unit", "writers")]

import dirty  # noqa: E402
import line_sql_before  # noqa: E402

from airflow_provider_profiles.prepare import engine  # noqa: E402
from airflow_provider_profiles.prepare.source import open_source  # noqa: E402


def cpu_seconds(connection, query: str) -> float:
    started = time.process_time()
    for _ in connection.sql(query).to_arrow_reader(engine.BATCH_ROWS):
        pass
    return time.process_time() - started


def old_query(table: engine.MappedTable) -> str:
    """The write query of the engine before (the exact condition inline, three times)."""
    line, reason, *exact = line_sql_before.line_sql(table.writer, table.column)
    exact = exact[0] if exact else "true"
    targets = ", ".join(f"CASE WHEN NOT ({exact}) THEN \"{n}\" END AS \"{n}\"" for n in table.targets)
    return f"""SELECT __record, __key, CASE WHEN __reason IS NOT NULL THEN __reason WHEN {exact} THEN {reason} END AS reason,
               CASE WHEN __reason IS NULL AND {exact} THEN {line} END AS line
               {', ' + targets if exact != 'true' and targets else ''} FROM mapped"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="line-sql-") as workdir:
        source = dirty.generate(workdir, args.rows, ("csv",))["csv"]
        print(f"| vendor | before (CPU s) | after (CPU s) | after / before |  ({args.rows:,} dirty rows)")
        for vendor in dirty.VENDORS:
            writer, mapping = dirty.provider_parts(vendor)
            with engine.connected(os.path.join(workdir, "out")) as connection:
                table = engine.MappedTable(connection, open_source(connection, source, None, read_once=True), writer, mapping)
                table.reject_repeats()
                queries = {"before": old_query(table), "after": table._write_query()}
                times = [{name: cpu_seconds(connection, query) for name, query in queries.items()} for _ in range(args.repeat)]
                best = {name: min(run[name] for run in times) for name in queries}
            print(f"| {vendor} | {best['before']:.3f} | {best['after']:.3f} | {best['after'] / best['before']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
