"""Prototype, for measurement only: the prepare engine as one in-process DuckDB query per file.

read (CSV, NDJSON, Parquet, or a DB-API cursor streamed as Arrow batches) -> typed mapping with
rejects (row position + reason) -> duplicate check (first accepted row of an id wins) -> the
vendor's line, under ``memory_limit``. It covers exactly the benchmark's mappings
(``benchmarks/dirty.py``), written out as SQL by hand; it is not a general engine. Rules it
reproduces from the provider: empty = blank after trimming; int = a finite float with no fraction;
bool = true/t/yes/y/1 or false/f/no/n/0; dates = ISO 8601, naive taken as UTC (DuckDB's
TIMESTAMPTZ cast, which also takes a few forms Python's ``fromisoformat`` does not, and the
reverse: the benchmark data has none of them); rows rejected by the mapping take no part in the
duplicate check, rows the writer rejects do (as in the provider).

    rows, rejected = prepare("mediarithmics", "csv", "in.csv", "out.ndjson", "rejects.csv")
"""

from __future__ import annotations

import os

DUPLICATE = "'duplicate identifier: an earlier row has the same id'"

MACROS = r"""
CREATE OR REPLACE MACRO blank(x) AS x IS NULL OR trim(x, E' \t\r\n') = '';
CREATE OR REPLACE MACRO txt(x) AS CASE WHEN blank(x) THEN NULL ELSE x END;
CREATE OR REPLACE MACRO num(x) AS try_cast(trim(x, E' \t\r\n') AS DOUBLE);
CREATE OR REPLACE MACRO bad_int(x) AS NOT blank(x) AND (num(x) IS NULL OR NOT isfinite(num(x)) OR num(x) <> floor(num(x)));
CREATE OR REPLACE MACRO as_int(x) AS CASE WHEN blank(x) THEN NULL ELSE CAST(num(x) AS HUGEINT) END;
CREATE OR REPLACE MACRO flag(x) AS CASE WHEN lower(trim(x, E' \t\r\n')) IN ('true', 't', 'yes', 'y', '1') THEN true
    WHEN lower(trim(x, E' \t\r\n')) IN ('false', 'f', 'no', 'n', '0') THEN false END;
CREATE OR REPLACE MACRO bad_bool(x) AS NOT blank(x) AND flag(x) IS NULL;
CREATE OR REPLACE MACRO moment(x) AS try_cast(trim(x, E' \t\r\n') AS TIMESTAMPTZ);
CREATE OR REPLACE MACRO bad_date(x) AS NOT blank(x) AND moment(x) IS NULL;
CREATE OR REPLACE MACRO iso_date(x) AS CASE WHEN blank(x) THEN NULL ELSE strftime(moment(x), '%Y-%m-%d') END;
CREATE OR REPLACE MACRO jfield(name, value) AS CASE WHEN value IS NOT NULL THEN '"' || name || '":' || to_json(value) END;
CREATE OR REPLACE MACRO csvq(x) AS CASE WHEN x IS NULL THEN '' WHEN regexp_matches(x, '[,"\r\n]')
    THEN '"' || replace(x, '"', '""') || '"' ELSE x END;
CREATE OR REPLACE MACRO change(name, value) AS CASE WHEN value IS NOT NULL
    THEN '{"op":"assign","attr":"' || name || '","value":' || to_json(value) || '}' END;
"""

# The typed mapping of every benchmark column but the identifier (FieldMapping with the vendor's
# representation: bool stays a boolean except for Localytics, which takes the string).
_MAPPING_REASONS = """
    CASE WHEN bad_date(signup_date) THEN 'signup_date: not an ISO 8601 date (column ''signup_date'')'
         WHEN bad_int(score) THEN 'score: expected an integer (column ''score'')'
         WHEN bad_bool(vip) THEN 'vip: expected true/false, yes/no or 1/0 (column ''vip'')' END
"""
_TYPED = """
    txt(first_name) AS first_name, txt(city) AS city, txt(plan) AS plan, iso_date(signup_date) AS signup_date,
    as_int(score) AS score, flag(vip) AS vip, txt(notes) AS notes
"""

# per vendor: the mapped columns, the mapping's reject reason, the duplicate key, and the
# writer's reject reason and line (both over the mapped columns)
VENDOR_SQL = {
    "mediarithmics": {
        "mapped": f"txt(id) AS user_account_id, txt(email) AS email, {_TYPED}",
        "reason": f"CASE WHEN blank(id) THEN 'user_account_id: required value is empty (column ''id'')' "
                  f"ELSE {_MAPPING_REASONS} END",
        "key": "trim(user_account_id)",
        "writer_reason": "CASE WHEN coalesce(email, first_name, city, plan, signup_date, CAST(score AS VARCHAR), "
                         "CAST(vip AS VARCHAR), notes) IS NULL "
                         "THEN 'user_profile: UPSERT needs at least one profile property' END",
        "line": """'{"compartment_id":"1000","user_account_id":' || to_json(trim(user_account_id))
            || ',"operation":"UPSERT","update_strategy":"PARTIAL_UPDATE","user_profile":{'
            || concat_ws(',', jfield('email', email), jfield('first_name', first_name), jfield('city', city),
                         jfield('plan', plan), jfield('signup_date', signup_date), jfield('score', score),
                         jfield('vip', vip), jfield('notes', notes)) || E'}}\n'""",
    },
    "apsis_one": {
        "mapped": f"txt(email) AS email, {_TYPED}",
        "reason": f"CASE WHEN blank(email) THEN 'email: required value is empty (column ''email'')' "
                  f"ELSE {_MAPPING_REASONS} END",
        "key": "trim(email)",
        "writer_reason": r"""CASE WHEN NOT regexp_full_match(trim(email), '[^@\s]+@[^@\s]+\.[^@\s]+')
            THEN 'email: not an email address: ' || trim(email) END""",
        "line": """concat_ws(',', csvq(trim(email)), csvq(first_name), csvq(city), csvq(plan), csvq(signup_date),
            csvq(CAST(score AS VARCHAR)), csvq(CASE WHEN vip THEN 'true' WHEN NOT vip THEN 'false' END), csvq(notes))
            || E'\n'""",
        "header": "email,first_name,city,plan,signup_date,score,vip,notes\n",
    },
    "localytics": {
        "mapped": f"txt(id) AS customer_id, txt(email) AS email, {_TYPED}",
        "reason": f"CASE WHEN blank(id) THEN 'customer_id: required value is empty (column ''id'')' "
                  f"ELSE {_MAPPING_REASONS} END",
        "key": "trim(customer_id)",
        "writer_reason": """CASE WHEN length(trim(customer_id)) > 255 THEN 'customer_id: too long'
            WHEN length(email) > 255 THEN 'email: string too long' WHEN length(first_name) > 255 THEN 'first_name: string too long'
            WHEN length(city) > 255 THEN 'city: string too long' WHEN length(plan) > 255 THEN 'plan: string too long'
            WHEN length(notes) > 255 THEN 'notes: string of more than 255 characters; Localytics accepts at most 255'
            WHEN coalesce(email, first_name, city, plan, signup_date, CAST(score AS VARCHAR), CAST(vip AS VARCHAR), notes) IS NULL
            THEN 'no attribute to change: every mapped value is empty' END""",
        "line": """'{"customer_id":' || to_json(trim(customer_id)) || ',"changes":['
            || concat_ws(',', change('email', email), change('first_name', first_name), change('city', city),
                         change('plan', plan), change('signup_date', signup_date), change('score', score),
                         change('vip', CASE WHEN vip THEN 'true' WHEN NOT vip THEN 'false' END), change('notes', notes))
            || E']}\n'""",
    },
    # the Gainsight PX writer types its own fields: the reasons are the writer's, checked in field order
    "gainsight_px": {
        "mapped": """id AS identify_id, txt(email) AS email, txt(first_name) AS first_name, txt(city) AS city,
            CASE WHEN NOT blank(signup_date) THEN epoch_ms(moment(signup_date)) END AS signup_ms,
            CASE WHEN NOT blank(score) THEN num(score) END AS score,
            txt(plan) AS plan, flag(vip) AS vip,
            CASE WHEN blank(id) THEN 'identifyId: the identifier is empty (column ''id'')'
                 WHEN NOT blank(email) AND NOT contains(email, '@') THEN 'email: not an email address (column ''email'')'
                 WHEN bad_date(signup_date) THEN 'signUpDate: expected milliseconds since the epoch (column ''signup_date'')'
                 WHEN NOT blank(score) AND (num(score) IS NULL OR NOT isfinite(num(score))) THEN 'score: expected a number (column ''score'')'
                 WHEN bad_bool(vip) THEN 'customAttributes.vip: expected true or false (column ''vip'')' END AS writer_reason""",
        "reason": "NULL",  # no mapping: every row takes part in the duplicate check
        "key": "trim(identify_id)",
        "writer_reason": "writer_reason",
        "line": """'{' || concat_ws(',', jfield('identifyId', trim(identify_id)), jfield('email', email),
            jfield('firstName', first_name),
            CASE WHEN city IS NOT NULL THEN '"location":{' || jfield('city', city) || '}' END,
            jfield('signUpDate', signup_ms),
            jfield('score', score),  -- a float, whole or not, as the provider's writer reads it
            CASE WHEN plan IS NOT NULL OR vip IS NOT NULL
                 THEN '"customAttributes":{' || concat_ws(',', jfield('plan', plan), jfield('vip', vip)) || '}' END)
            || E'}\n'""",
    },
}


def _source_sql(input_format: str, path: str) -> str:
    quoted = path.replace("'", "''")
    if input_format == "csv":
        return f"read_csv('{quoted}', all_varchar = true, header = true, quote = '\"', escape = '\"')"
    if input_format == "ndjson":
        from dirty import COLUMNS

        columns = ", ".join(f"'{name}': 'VARCHAR'" for name in COLUMNS)
        return f"read_json('{quoted}', format = 'newline_delimited', columns = {{{columns}}})"
    if input_format == "parquet":
        return f"read_parquet('{quoted}')"
    return "cursor_batches"  # registered Arrow stream


def prepare(vendor: str, input_format: str, source: str, output: str, rejects: str,
            memory_limit: str = "300MB", threads: int = 2, batch_rows: int = 50_000,
            settings: dict | None = None, streaming: bool = False) -> tuple[int, int]:
    """Writes ``output`` and ``rejects`` (position, identifier, reason); returns (written, rejected).
    ``settings``: more DuckDB configuration (e.g. ``preserve_insertion_order``). ``streaming``
    (files only): no table of the rows; the input is read twice, see ``_prepare_streaming``."""
    import duckdb

    spec = VENDOR_SQL[vendor]
    connection = duckdb.connect(config={"memory_limit": memory_limit, "threads": threads,
                                        "temp_directory": os.path.dirname(os.path.abspath(output)) + "/duckdb.tmp",
                                        **(settings or {})})
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute(MACROS)
    database = None
    if input_format == "sql":  # a DB-API cursor, fetchmany -> Arrow batches, streamed into the query
        import sqlite3

        import pyarrow as pa
        from dirty import COLUMNS, SQL_QUERY

        database = sqlite3.connect(source, check_same_thread=False)  # DuckDB pulls from its own thread
        cursor = database.execute(SQL_QUERY)
        schema = pa.schema([(name, pa.string()) for name in COLUMNS])

        def batches():
            while rows := cursor.fetchmany(batch_rows):
                yield pa.RecordBatch.from_arrays([pa.array(column, pa.string()) for column in zip(*rows)], schema=schema)

        connection.register("cursor_batches", pa.RecordBatchReader.from_batches(schema, batches()))
    try:
        if streaming:
            return _prepare_streaming(connection, spec, _source_sql(input_format, source), output, rejects)
        connection.execute(f"""
            CREATE TEMP TABLE mapped AS
            SELECT pos, {spec['mapped']}, {spec['reason']} AS reason
            FROM (SELECT row_number() OVER () AS pos, * FROM {_source_sql(input_format, source)})
        """)
        connection.execute(f"""
            CREATE TEMP TABLE classified AS
            WITH keyed AS (SELECT *, {spec['key']} AS key FROM mapped),
                 firsts AS (SELECT key, min(pos) AS first FROM keyed WHERE reason IS NULL AND key <> '' GROUP BY key)
            SELECT pos, key, coalesce(reason, CASE WHEN key <> '' AND pos <> first THEN {DUPLICATE} END,
                                      {spec['writer_reason']}) AS reason, keyed.* EXCLUDE (pos, key, reason)
            FROM keyed LEFT JOIN firsts USING (key)
        """)
        connection.execute("DROP TABLE mapped")
        written = 0
        with open(output, "wb") as stream:
            if spec.get("header"):
                stream.write(spec["header"].encode())
            lines = connection.sql(f"SELECT {spec['line']} AS line FROM classified WHERE reason IS NULL ORDER BY pos")
            for batch in lines.to_arrow_reader(100_000):
                written += _write_lines(stream, batch.column(0))
        escaped = rejects.replace("'", "''")
        connection.execute(f"""COPY (SELECT pos AS line, key AS identifier, reason FROM classified
                               WHERE reason IS NOT NULL ORDER BY pos) TO '{escaped}' (HEADER, DELIMITER ',')""")
        rejected = connection.execute("SELECT count(*) FROM classified WHERE reason IS NOT NULL").fetchone()[0]
    finally:
        connection.close()
        if database is not None:
            database.close()
    return written, rejected


def _prepare_streaming(connection, spec: dict, source_sql: str, output: str, rejects: str) -> tuple[int, int]:
    """The duplicate check keeps only the repeated keys (a grouping over the first read, which
    DuckDB spills under ``memory_limit``); the second read joins them and streams every row, its
    line or its reject, in input order, to Python, which writes the two files."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    keyed = f"""SELECT *, {spec['key']} AS key FROM (
        SELECT pos, {spec['mapped']}, {spec['reason']} AS reason
        FROM (SELECT row_number() OVER () AS pos, * FROM {source_sql}))"""
    connection.execute(f"""CREATE TEMP TABLE repeated AS SELECT key, min(pos) AS first FROM ({keyed})
                           WHERE reason IS NULL AND key <> '' GROUP BY key HAVING count(*) > 1""")
    rows = connection.sql(f"""
        SELECT pos AS line, key AS identifier, reason, CASE WHEN reason IS NULL THEN {spec['line']} END AS text
        FROM (SELECT keyed.* EXCLUDE (reason), coalesce(keyed.reason, CASE WHEN pos <> first THEN {DUPLICATE} END,
                                                        {spec['writer_reason']}) AS reason
              FROM ({keyed}) AS keyed LEFT JOIN repeated USING (key))""")
    written = rejected = 0
    schema = pa.schema([("line", pa.int64()), ("identifier", pa.string()), ("reason", pa.string())])
    with open(output, "wb") as stream, pacsv.CSVWriter(rejects, schema) as refused:
        if spec.get("header"):
            stream.write(spec["header"].encode())
        for batch in rows.to_arrow_reader(100_000):
            accepted = pc.is_null(batch.column(2))
            written += _write_lines(stream, pc.filter(batch.column(3), accepted))
            bad = batch.filter(pc.invert(accepted)).select([0, 1, 2]).cast(schema)
            refused.write_batch(bad)
            rejected += bad.num_rows
    return written, rejected


def _write_lines(stream, lines) -> int:
    """Every line ends with a newline: the string array's data buffer is the bytes to write."""
    import numpy as np
    import pyarrow as pa

    if isinstance(lines, pa.ChunkedArray):
        return sum(_write_lines(stream, chunk) for chunk in lines.chunks)
    if lines.type == pa.large_string():
        width = np.int64
    elif lines.type == pa.string():
        width = np.int32
    else:  # string views and the like
        lines = lines.cast(pa.large_string())
        width = np.int64
    if not len(lines):
        return 0
    offsets = np.frombuffer(lines.buffers()[1], dtype=width, count=len(lines) + 1, offset=lines.offset * np.dtype(width).itemsize)
    stream.write(memoryview(lines.buffers()[2])[int(offsets[0]) : int(offsets[-1])])
    return len(lines)
