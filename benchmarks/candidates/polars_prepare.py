"""Candidate, for measurement only: the prepare engine as polars lazy queries, streamed.

The same contract, mappings, rules and reject reasons as ``duckdb_prepare`` (which see), written
as polars expressions for the benchmark's four vendor cases only; it is not a general engine.

Two streaming passes over the input, none holding the file in memory:

1. read -> typed mapping's reject reason -> for the rows that take part in the duplicate check
   (accepted by the mapping, non-empty key): a 64-bit hash of the key and the row position,
   sunk to ``PARTS`` files partitioned by hash. Each file is then read alone and its repeated
   hashes give the positions of the duplicates (a hash set of one part at a time; the duplicates
   are about 1% of the rows). Equal 64-bit hashes are taken as equal keys, as the provider's
   ``formats.keys`` does.
2. read -> typed mapping -> reason (mapping, else duplicate, else the writer's) -> the vendor's
   line as a string column (a struct encoded with ``struct.json_encode``, nulls then removed from
   the text: JSON lines omit empty fields) -> ``sink_csv`` of the lines, then of the rejects (a
   third read: both sinks in one ``collect_all`` held the whole input in memory), or one read
   through ``collect_batches`` split and written from Python (``output_pass="batches"``).

Measured in ``benchmarks/README.md``: faster than the DuckDB prototype, but its peak memory grows
with the input (about 0.9-1.1 GB at 10M rows), as polars' own flat conversion's does, less so.

    written, rejected = prepare("mediarithmics", "csv", "in.csv", "out.ndjson", "rejects.csv")
"""

from __future__ import annotations

import glob
import os
import tempfile

PARTS = 16  # hash partitions of the duplicate check: memory per part is 1/PARTS of the keys
DUPLICATE = "duplicate identifier: an earlier row has the same id"
SPACES = " \t\r\n"


def _columns():
    import polars as pl

    from dirty import COLUMNS

    return pl, COLUMNS


# --- the provider's value rules as expressions ------------------------------------------------


def blank(x):
    return x.is_null() | (x.str.strip_chars(SPACES) == "")


def txt(x):
    import polars as pl

    return pl.when(~blank(x)).then(x)


def num(x):
    import polars as pl

    return x.str.strip_chars(SPACES).cast(pl.Float64, strict=False)


def flag(x):
    import polars as pl

    word = x.str.strip_chars(SPACES).str.to_lowercase()
    return pl.when(word.is_in(["true", "t", "yes", "y", "1"])).then(True).when(
        word.is_in(["false", "f", "no", "n", "0"])).then(False)


def moment(x):
    """ISO 8601 date or date-time, offset or ``Z`` or naive (taken as UTC), to a UTC instant (ms).
    Only the rows longer than a date go through the date-time formats: a parse of a null is free,
    a failed one is not."""
    import polars as pl

    text = x.str.strip_chars(SPACES)
    date_only = text.str.len_bytes() == 10
    options = {"strict": False, "exact": True, "time_zone": "UTC", "time_unit": "ms"}
    longer = pl.when(~date_only).then(text.str.replace(" ", "T", literal=True, n=1))
    return pl.coalesce(
        pl.when(date_only).then(text).str.to_datetime("%Y-%m-%d", **options),
        longer.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", **options),
        longer.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", **options),
    )


# Parsed once per row, as columns, before the mapping: each is used by a reason and a value.
PARSED = {"signup_moment": lambda c: moment(c("signup_date")), "score_number": lambda c: num(c("score")),
          "vip_flag": lambda c: flag(c("vip"))}


def bad_int():
    import polars as pl

    number = pl.col("score_number")
    return ~blank(pl.col("score")) & (number.is_null() | ~number.is_finite() | (number != number.floor())).fill_null(True)


def as_int():
    import polars as pl

    return pl.when(~blank(pl.col("score"))).then(pl.col("score_number").cast(pl.Int64, strict=False))


def bad_bool():
    import polars as pl

    return ~blank(pl.col("vip")) & pl.col("vip_flag").is_null()


def bad_date():
    import polars as pl

    return ~blank(pl.col("signup_date")) & pl.col("signup_moment").is_null()


def iso_date():
    import polars as pl

    return pl.when(~blank(pl.col("signup_date"))).then(pl.col("signup_moment").dt.date().cast(pl.String))


def _first_reason(*pairs):
    """CASE WHEN: the first reason whose condition holds, else null."""
    import polars as pl

    chain = pl
    for condition, reason in pairs:
        chain = chain.when(condition).then(pl.lit(reason))
    return chain.otherwise(pl.lit(None, pl.String))


def _mapping_reason(id_field: str, id_column: str):
    import polars as pl

    c = pl.col
    return _first_reason(
        (blank(c(id_column)), f"{id_field}: required value is empty (column '{id_column}')"),
        (bad_date(), "signup_date: not an ISO 8601 date (column 'signup_date')"),
        (bad_int(), "score: expected an integer (column 'score')"),
        (bad_bool(), "vip: expected true/false, yes/no or 1/0 (column 'vip')"),
    )


def _typed():
    import polars as pl

    c = pl.col
    return [txt(c("first_name")).alias("first_name"), txt(c("city")).alias("city"), txt(c("plan")).alias("plan"),
            iso_date().alias("signup_date"), as_int().alias("score"),
            c("vip_flag").alias("vip"), txt(c("notes")).alias("notes")]


PROFILE = ["email", "first_name", "city", "plan", "signup_date", "score", "vip", "notes"]


def _without_nulls(encoded):
    """JSON text without its ``"name":null`` members. Safe on any string value: inside a JSON
    string every quote is escaped, so ``,"name":null`` and ``{"name":null`` only match members."""
    return encoded.str.replace_all(r',"\w+":null', "").str.replace_all(r'\{"\w+":null,?', "{")


def _vip_text(vip):
    import polars as pl

    return pl.when(vip).then(pl.lit("true")).when(~vip).then(pl.lit("false"))


# --- per vendor: mapped columns, mapping reason, key, writer reason, line ---------------------


def _vendor(vendor: str) -> dict:
    import polars as pl

    c = pl.col
    any_value = pl.any_horizontal(*(c(name).is_not_null() for name in PROFILE))
    if vendor == "mediarithmics":
        return {
            "mapped": [txt(c("id")).alias("user_account_id"), txt(c("email")).alias("email"), *_typed()],
            "reason": _mapping_reason("user_account_id", "id"),
            "key": c("user_account_id").str.strip_chars(SPACES),
            "writer_reason": _first_reason((~any_value, "user_profile: UPSERT needs at least one profile property")),
            "line": _without_nulls(pl.struct(
                compartment_id=pl.lit("1000"), user_account_id=c("key"), operation=pl.lit("UPSERT"),
                update_strategy=pl.lit("PARTIAL_UPDATE"), user_profile=pl.struct(*PROFILE),
            ).struct.json_encode()),
        }
    if vendor == "apsis_one":
        return {
            "mapped": [txt(c("email")).alias("email"), *_typed()],
            "reason": _mapping_reason("email", "email"),
            "key": c("email").str.strip_chars(SPACES),
            "writer_reason": pl.when(~c("key").str.contains(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))
                               .then(pl.lit("email: not an email address: ") + c("key")),
            "columns": [c("key").alias("email"), *(c(name) for name in PROFILE[1:5]),
                        c("score"), _vip_text(c("vip")).alias("vip"), c("notes")],
        }
    if vendor == "localytics":
        too_long = [(c(name).str.len_chars() > 255, f"{name}: string too long") for name in PROFILE[:4]]
        changes = [
            pl.when(c(name).is_not_null()).then(pl.struct(
                op=pl.lit("assign"), attr=pl.lit(name), value=_vip_text(c(name)) if name == "vip" else c(name),
            ).struct.json_encode())
            for name in PROFILE
        ]
        return {
            "mapped": [txt(c("id")).alias("customer_id"), txt(c("email")).alias("email"), *_typed()],
            "reason": _mapping_reason("customer_id", "id"),
            "key": c("customer_id").str.strip_chars(SPACES),
            "writer_reason": _first_reason(
                (c("key").str.len_chars() > 255, "customer_id: too long"), *too_long,
                (c("notes").str.len_chars() > 255,
                 "notes: string of more than 255 characters; Localytics accepts at most 255"),
                (~any_value, "no attribute to change: every mapped value is empty")),
            "line": pl.concat_str(
                pl.struct(customer_id=c("key")).struct.json_encode().str.strip_suffix("}"),
                pl.lit(',"changes":['), pl.concat_str(*changes, separator=",", ignore_nulls=True), pl.lit("]}")),
        }
    if vendor == "gainsight_px":
        # a number read from text is a float, whole or not, as the provider's writer reads it
        score, text = c("score_number"), c("score")
        filled = lambda x: ~blank(x)  # noqa: E731
        return {
            "mapped": [
                c("id").alias("identify_id"), txt(c("email")).alias("email"), txt(c("first_name")).alias("first_name"),
                txt(c("city")).alias("city"), txt(c("plan")).alias("plan"), c("vip_flag").alias("vip"),
                pl.when(filled(c("signup_date"))).then(c("signup_moment").dt.epoch("ms")).alias("signup_ms"),
                pl.when(filled(text)).then(score).alias("score"),
            ],
            "reason": _first_reason(
                (blank(c("id")), "identifyId: the identifier is empty (column 'id')"),
                (filled(c("email")) & ~c("email").str.contains("@", literal=True),
                 "email: not an email address (column 'email')"),
                (bad_date(), "signUpDate: expected milliseconds since the epoch (column 'signup_date')"),
                (filled(text) & (score.is_null() | ~score.is_finite()).fill_null(True),
                 "score: expected a number (column 'score')"),
                (bad_bool(), "customAttributes.vip: expected true or false (column 'vip')"),
            ),
            "writer_stage": True,  # these reasons are the writer's: every row takes part in the duplicate check
            "key": c("identify_id").str.strip_chars(SPACES),
            "writer_reason": pl.lit(None, pl.String),
            "line": _without_nulls(pl.struct(
                identifyId=c("key"), email=c("email"), firstName=c("first_name"),
                location=pl.when(c("city").is_not_null()).then(pl.struct("city")),
                signUpDate=c("signup_ms"), score=c("score"),
                customAttributes=pl.when(c("plan").is_not_null() | c("vip").is_not_null()).then(pl.struct("plan", "vip")),
            ).struct.json_encode()),
        }
    raise ValueError(f"no mapping for {vendor!r}")


def _scan(input_format: str, source: str, batch_rows: int):
    pl, columns = _columns()
    if input_format == "csv":
        return pl.scan_csv(source, infer_schema=False)
    if input_format == "ndjson":
        return pl.scan_ndjson(source, schema={name: pl.String for name in columns})
    if input_format == "parquet":
        return pl.scan_parquet(source)
    raise ValueError("the polars candidate reads files only (csv, ndjson, parquet)")


def _duplicate_positions(candidates, workdir: str):
    """Positions of the rows whose key hash an earlier candidate row already had."""
    import polars as pl

    parts = os.path.join(workdir, "keys")
    candidates.select(pl.col("hash"), pl.col("pos")).sink_ipc(
        pl.PartitionBy(parts, key={"part": pl.col("hash") % PARTS}, include_key=False), mkdir=True)
    found = []
    for path in sorted(glob.glob(os.path.join(parts, "**", "*.ipc"), recursive=True)):
        keys = pl.read_ipc(path).sort("pos")
        found.append(keys.filter(~pl.col("hash").is_first_distinct())["pos"])
    return pl.concat(found) if found else pl.Series("pos", [], pl.UInt32)


def prepare(vendor: str, input_format: str, source: str, output: str, rejects: str,
            batch_rows: int = 50_000, output_pass: str = "sinks") -> tuple[int, int]:
    """Writes ``output`` and ``rejects`` (position, identifier, reason); returns (written, rejected).
    ``output_pass``: ``sinks`` (a streaming sink for the lines, another for the rejects: the input
    is read twice more; both sinks in one ``collect_all`` hold the whole input in memory instead)
    or ``batches`` (one streaming read, its batches split and written from Python)."""
    import polars as pl

    spec = _vendor(vendor)
    c = pl.col
    # mapping reason and key: the writer stage of Gainsight PX comes after the duplicate check
    mapped = (_scan(input_format, source, batch_rows).with_row_index("pos", offset=1)
              .with_columns(parse(c).alias(name) for name, parse in PARSED.items()))
    if spec.get("writer_stage"):  # reasons over the input columns
        mapped = mapped.select("pos", *spec["mapped"], pl.lit(None, pl.String).alias("reason"),
                               spec["reason"].alias("writer_reason")).with_columns(spec["key"].alias("key"))
    else:  # reasons over the mapped columns and the key
        mapped = (mapped.select("pos", *spec["mapped"], spec["reason"].alias("reason"))
                  .with_columns(spec["key"].alias("key")).with_columns(spec["writer_reason"].alias("writer_reason")))
    taking_part = c("reason").is_null() & c("key").is_not_null() & (c("key") != "")
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(output))) as workdir:
        duplicates = _duplicate_positions(
            mapped.filter(taking_part).select(c("key").hash().alias("hash"), "pos"), workdir)
        reason = pl.coalesce(c("reason"), pl.when(c("pos").is_in(duplicates.implode())).then(pl.lit(DUPLICATE)),
                             c("writer_reason"))
        classified = mapped.with_columns(reason.alias("reason"))
        if output_pass == "batches":
            return _write_batches(classified, spec, output, rejects)
        accepted = classified.filter(c("reason").is_null())
        if "columns" in spec:
            accepted.select(spec["columns"]).sink_csv(output)
        else:
            accepted.select(spec["line"].alias("line")).sink_csv(output, include_header=False, quote_style="never")
        classified.filter(c("reason").is_not_null()).select(
            c("pos").alias("line"), pl.when(c("key") != "").then(c("key")).alias("identifier"), "reason",
        ).sink_csv(rejects)
    # the rejects file has one line per reject (its fields hold no newline in this data); the
    # output's count is the rest (CSV output can hold quoted newlines)
    rejected = _count_lines(rejects) - 1
    total = _scan(input_format, source, batch_rows).select(pl.len()).collect().item()
    return total - rejected, rejected


def _write_batches(classified, spec: dict, output: str, rejects: str) -> tuple[int, int]:
    import polars as pl

    c = pl.col
    built = spec["columns"] if "columns" in spec else [spec["line"].alias("line")]
    rows = classified.select(
        "reason", "pos", pl.when(c("key") != "").then(c("key")).alias("identifier"),
        *(pl.when(c("reason").is_null()).then(expression) for expression in built))
    written = rejected = 0
    with open(output, "wb") as stream, open(rejects, "wb") as refused:
        for number, batch in enumerate(rows.collect_batches(chunk_size=100_000)):
            accepted = batch.filter(c("reason").is_null())
            if "columns" in spec:
                accepted.drop("reason", "pos", "identifier").write_csv(stream, include_header=number == 0)
            else:
                _write_strings(stream, accepted["line"])
            refused_rows = batch.filter(c("reason").is_not_null()).select(c("pos").alias("line"), "identifier", "reason")
            refused_rows.write_csv(refused, include_header=number == 0)
            written += accepted.height
            rejected += refused_rows.height
    return written, rejected


def _write_strings(stream, lines) -> None:
    """One line per value: the values joined with newlines, written as bytes."""
    if len(lines):
        stream.write(lines.str.join("\n").item().encode())
        stream.write(b"\n")


def _count_lines(path: str) -> int:
    count = 0
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            count += block.count(b"\n")
    return count
