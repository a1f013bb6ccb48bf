"""Dirty profile data and the typed mapping each vendor's main format gets in the benchmark.

The data is what exports look like: quoted commas, quotes and newlines, empty cells, bad emails,
missing and repeated ids, ids with spaces around them, dates in a few forms (some invalid),
integers written as ``" 42 "``, ``"4.0"``, ``"4.5"`` or ``"abc"``, and booleans as
``yes``/``Y``/``1``/``maybe``. Every cell is a string; the same rows are written as CSV, NDJSON,
Parquet and an SQLite table, so every input holds the same values.
"""

from __future__ import annotations

import json
import os
import sqlite3

COLUMNS = ["id", "email", "first_name", "city", "plan", "signup_date", "score", "vip", "notes"]
INPUTS = ("csv", "ndjson", "parquet", "sql")
SQL_QUERY = "SELECT " + ", ".join(COLUMNS) + " FROM profiles"

# --- vendor configurations: writer, options and FieldMapping, as users declare them --------------

_TYPED = {
    "first_name": "first_name",
    "city": "city",
    "plan": "plan",
    "signup_date": {"source": "signup_date", "type": "date"},
    "score": {"source": "score", "type": "int"},
    "vip": {"source": "vip", "type": "bool"},
    "notes": "notes",
}

VENDORS: dict[str, dict] = {
    "mediarithmics": {
        "format": "USER_PROFILE",
        "writer_options": {},
        "mapping": {
            "user_account_id": {"source": "id", "required": True},
            "compartment_id": {"const": "1000"},
            "email": "email",
            **_TYPED,
        },
        "extension": "ndjson",
    },
    "apsis_one": {
        "format": "csv",
        "writer_options": {
            "columns": ["email", "first_name", "city", "plan", "signup_date", "score", "vip", "notes"],
            "keyspace_field": "email",
            "keyspace": "email",
        },
        "mapping": {"email": {"source": "email", "required": True}, **_TYPED},
        "extension": "csv",
    },
    "localytics": {
        "format": "changes",
        "writer_options": {
            "customer_id": "customer_id",
            "attributes": {name: name for name in ["email", *_TYPED]},
        },
        "mapping": {"customer_id": {"source": "id", "required": True}, "email": "email", **_TYPED},
        "extension": "ndjson",
    },
    # Gainsight PX types fields in its own writer (field_mapping + field_types), as its loader does
    "gainsight_px": {
        "format": "records",
        "writer_options": {
            "entity": "USER",
            "field_mapping": {
                "identifyId": "id",
                "email": "email",
                "firstName": "first_name",
                "location.city": "city",
                "signUpDate": "signup_date",
                "score": "score",
                "customAttributes.plan": "plan",
                "customAttributes.vip": "vip",
            },
            "field_types": {"customAttributes.vip": "boolean"},
        },
        "mapping": None,
        "extension": "ndjson",
    },
}


def provider_parts(vendor: str):
    """The writer and FieldMapping the operators build from these options."""
    from airflow_provider_profiles.writers import get_writer
    from airflow_provider_profiles.prepare.mapping import FieldMapping

    config = VENDORS[vendor]
    writer = get_writer(vendor, config["format"], **config["writer_options"])
    mapping = FieldMapping(config["mapping"], representation=writer.representation) if config["mapping"] else None
    return writer, mapping


# --- data ------------------------------------------------------------------------------------------


def _pick(rng, count, choices, weights):
    import numpy as np

    return rng.choice(np.array(choices, dtype=object), size=count, p=np.array(weights) / sum(weights))


def dirty_table(start: int, count: int, seed: int = 11):
    """``count`` dirty rows as an Arrow table of strings (row ``start`` on; deterministic)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed * 1_000_003 + start)
    numbers = np.arange(start, start + count)
    # 1% repeat an earlier id of the batch (with its email), 1% have none, 0.2% spaces around it
    repeat = rng.random(count) < 0.01
    numbers = np.where(repeat & (numbers > start), rng.integers(start, np.maximum(numbers, start + 1)), numbers)
    text_numbers = numbers.astype(str).astype(object)
    ids = "u" + text_numbers
    roll = rng.random(count)
    ids = np.where(roll < 0.01, "", np.where(roll < 0.012, " " + ids + " ", ids))

    emails = "user" + text_numbers + "@example.com"
    roll = rng.random(count)
    emails = np.where(roll < 0.02, "user" + text_numbers + "example.com",  # no @
                      np.where(roll < 0.025, "user" + text_numbers + "@example",  # no dot after the @
                               np.where(roll < 0.03, "", emails)))

    first = _pick(rng, count, ["Anna", "Ben", "Chloé", "Dávid", "Eva", "O'Brien, Jr.", 'Anna "Nan"', "Zoë", ""],
                  [20, 20, 15, 10, 20, 2, 2, 10, 1])
    city = _pick(rng, count, ["Paris", "Berlin", "São Paulo", "Kraków", "Zürich", "Oslo", ""], [20, 20, 15, 15, 14, 15, 1])
    plan = _pick(rng, count, ["free", "starter", "pro", "enterprise"], [40, 30, 20, 10])

    days = (rng.integers(0, 3650, count).astype("timedelta64[D]") + np.datetime64("2015-01-01")).astype(str).astype(object)
    hours = rng.integers(0, 24, count).astype(str).astype(object)
    hours = np.where(np.char.str_len(hours.astype(str)) == 1, "0" + hours, hours)
    day_first = days.astype(str)
    d_m_y = np.array([f"{d[8:10]}/{d[5:7]}/{d[0:4]}" for d in day_first], dtype=object) if count else np.array([], object)
    roll = rng.random(count)
    signup = np.where(roll < 0.85, days,
                      np.where(roll < 0.90, days + "T" + hours + ":15:00Z",
                               np.where(roll < 0.93, days + " " + hours + ":30:00+02:00",
                                        np.where(roll < 0.96, d_m_y,  # not ISO: rejected
                                                 np.where(roll < 0.97, "2023-02-30", "")))))

    score = rng.integers(0, 1000, count).astype(str).astype(object)
    roll = rng.random(count)
    score = np.where(roll < 0.02, " " + score + " ",
                     np.where(roll < 0.03, score + ".0",
                              np.where(roll < 0.04, "4.5", np.where(roll < 0.05, "abc", np.where(roll < 0.07, "", score)))))
    vip = _pick(rng, count, ["true", "false", "yes", "no", "1", "0", "Y", "maybe", ""], [20, 20, 10, 10, 10, 10, 6, 1, 3])
    notes = _pick(
        rng, count,
        ["", "likes, commas", "line one\nline two", 'said "hi"', "x" * 300, "  "],
        [900, 50, 30, 10, 5, 5],
    )
    columns = {"id": ids, "email": emails, "first_name": first, "city": city, "plan": plan, "signup_date": signup,
               "score": score, "vip": vip, "notes": notes}
    return pa.table({name: pa.array(list(columns[name]), pa.string()) for name in COLUMNS})


def generate(directory: str, rows: int, inputs=INPUTS, batch: int = 250_000) -> dict[str, str]:
    """Writes the same dirty rows as each of ``inputs``; returns {input: path}."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    paths = {name: os.path.join(directory, f"dirty.{'sqlite' if name == 'sql' else name}") for name in inputs}
    for path in paths.values():
        if os.path.exists(path):
            os.remove(path)
    import pyarrow as pa

    schema = pa.schema([(name, pa.string()) for name in COLUMNS])
    csv_writer = pacsv.CSVWriter(paths["csv"], schema) if "csv" in paths else None
    parquet_writer = pq.ParquetWriter(paths["parquet"], schema) if "parquet" in paths else None
    ndjson = open(paths["ndjson"], "wb") if "ndjson" in paths else None
    database = sqlite3.connect(paths["sql"]) if "sql" in paths else None
    if database is not None:
        database.execute(f"CREATE TABLE profiles ({', '.join(name + ' TEXT' for name in COLUMNS)})")
    try:
        for start in range(0, rows, batch):
            table = dirty_table(start, min(batch, rows - start))
            if csv_writer is not None:
                csv_writer.write_table(table)
            if parquet_writer is not None:
                parquet_writer.write_table(table)
            if ndjson is not None:  # json, not polars: the provider's warm-up must not load polars
                lines = (json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in table.to_pylist())
                ndjson.write("".join(lines).encode("utf-8"))
            if database is not None:
                database.executemany(
                    f"INSERT INTO profiles VALUES ({', '.join('?' * len(COLUMNS))})",
                    zip(*(table.column(name).to_pylist() for name in COLUMNS)),
                )
                database.commit()
    finally:
        for handle in (csv_writer, parquet_writer, ndjson, database):
            if handle is not None:
                handle.close()
    return paths
