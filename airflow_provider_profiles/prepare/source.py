"""DEV STUB (replaced by the source helper's module)."""
from __future__ import annotations
from dataclasses import dataclass
from airflow_provider_profiles.formats.reader import guess_format


@dataclass
class Source:
    relation: str
    names: list[str]
    types: dict[str, str]
    unreadable: str | None
    description: str


def open_source(connection, source, input_format=None, *, delimiter=",", encoding="utf-8"):
    path = str(source).replace("'", "''")
    fmt = (input_format or guess_format(source)).lower()
    if fmt == "csv":
        import csv
        with open(str(source), newline="", encoding=encoding) as f:
            names = next(csv.reader(f, delimiter=delimiter), [])
        cols = ", ".join(f"'{n}': 'VARCHAR'" for n in names)
        rel = f"read_csv('{path}', header=true, auto_detect=false, delim='{delimiter}', quote='\"', escape='\"', columns={{{cols}}})"
    elif fmt == "parquet":
        rel = f"read_parquet('{path}')"
    else:
        rel = f"read_json('{path}', format='newline_delimited')"
    connection.execute(f"CREATE VIEW source_rows AS SELECT row_number() OVER () AS __record, * FROM {rel}")
    described = connection.execute("DESCRIBE source_rows").fetchall()
    types = {n: t for n, t, *_ in described if n != "__record"}
    return Source("source_rows", list(types), types, None, f"{fmt}|{delimiter}|{encoding}|{list(types)}")


def open_cursor(connection, cursor, batch_rows=50_000):
    raise NotImplementedError
