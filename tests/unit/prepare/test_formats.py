"""prepare() end to end on real files: round trips through every vendor writer, a corpus of bad
rows with their record numbers and reasons, hostile CSV through plain and synced prepares and the
operators, and the duplicate check's default per format."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_profiles.writers import get_writer
from airflow_provider_profiles.prepare.mapping import FieldMapping
from airflow_provider_profiles.prepare.engine import DUPLICATE, prepare
from airflow_provider_profiles.prepare.errors import InputError
from airflow_provider_profiles.prepare.sync import SyncState
from tests.unit.prepare.prepared import localytics, ndjson, rejects_of, representation_of


def changes(path):
    """customer id -> {attribute: value} of each Localytics change line written."""
    return {line["customer_id"]: {c["attr"]: c["value"] for c in line["changes"]} for line in ndjson(path)}


def assert_reconciles(result):
    assert result.read == result.written + result.rejected + result.unchanged


# --- round trips through every vendor writer ------------------------------------------------------


def test_localytics_change_lines_round_trip(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('id,name,city\n1,Ann,Paris\n2,"Bo ""the"" B",\n3,Zoë,Kraków\n', encoding="utf-8")
    result = prepare(str(source), localytics(), str(tmp_path / "out.ndjson"))
    assert (result.read, result.written, result.rejected) == (3, 3, 0)
    records = ndjson(tmp_path / "out.ndjson")
    assert records[1] == {"customer_id": "2", "changes": [{"op": "assign", "attr": "name", "value": 'Bo "the" B'}]}
    assert {c["attr"]: c["value"] for c in records[2]["changes"]} == {"name": "Zoë", "city": "Kraków"}


def test_apsis_csv_round_trip_with_mapping(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("mail,first,joined,vip\na@x.io,Ann,2024-03-01T10:00:00,yes\nb@x.io,\"B, b\",,no\n")
    writer = get_writer("apsis_one", columns=["email", "first_name", "joined", "vip"], keyspace_field="email")
    mapping = FieldMapping(
        {"email": "mail", "first_name": "first", "joined": {"source": "joined", "type": "datetime"},
         "vip": {"source": "vip", "type": "bool"}},
        representation=representation_of("apsis_one"),
    )
    result = prepare(str(source), writer, str(tmp_path / "out.csv"), mapping=mapping)
    assert result.written == 2
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert rows == [
        {"email": "a@x.io", "first_name": "Ann", "joined": "2024-03-01T10:00:00Z", "vip": "true"},
        {"email": "b@x.io", "first_name": "B, b", "joined": "", "vip": "false"},
    ]


def test_gainsight_records_nested_and_epoch_ms(tmp_path):
    source = tmp_path / "in.ndjson"
    source.write_text(json.dumps({"uid": "u1", "geo": {"city": "Oslo"}, "signup": "2024-01-02"}) + "\n")
    writer = get_writer(
        "gainsight_px", entity="USER",
        field_mapping={"identifyId": "id", "location.city": "city", "signUpDate": "signup"},
    )
    mapping = FieldMapping(
        {"id": "uid", "city": "geo.city", "signup": {"source": "signup", "type": "date"}}, representation=representation_of("gainsight_px")
    )
    prepare(str(source), writer, str(tmp_path / "out.ndjson"), mapping=mapping)
    assert ndjson(tmp_path / "out.ndjson") == [
        {"identifyId": "u1", "location": {"city": "Oslo"}, "signUpDate": 1704153600000}
    ]


def test_mediarithmics_profile_commands_from_parquet(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"uid": ["a", "b"], "plan": ["pro", None], "n": [3, 4]}), source)
    writer = get_writer("mediarithmics", "USER_PROFILE")
    mapping = FieldMapping(
        {"user_account_id": "uid", "compartment_id": {"const": "7"}, "plan": "plan", "logins": {"source": "n", "type": "int"}},
        representation=representation_of("mediarithmics"),
    )
    result = prepare(str(source), writer, str(tmp_path / "out.ndjson"), mapping=mapping)
    assert_reconciles(result)
    lines = ndjson(tmp_path / "out.ndjson")
    assert lines[0] == {
        "compartment_id": "7", "user_account_id": "a", "operation": "UPSERT",
        "update_strategy": "PARTIAL_UPDATE", "user_profile": {"plan": "pro", "logins": 3},
    }
    assert lines[1]["user_profile"] == {"logins": 4}


def test_typed_parquet_with_nested_columns_and_sync(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2], "plan": ["a", "b"], "meta": [{"k": 1}, {"k": 2}]}), source)
    writer = localytics(attributes={"plan": "plan"})
    state = SyncState(tmp_path / "s")
    result = prepare(str(source), writer, str(tmp_path / "out.ndjson"), sync=state, sync_run_key="r")
    assert result.written == 2
    assert [r["customer_id"] for r in ndjson(tmp_path / "out.ndjson")] == ["1", "2"]
    state.commit("r")
    again = prepare(str(source), writer, str(tmp_path / "again.ndjson"), sync=state, sync_run_key="r2")
    assert (again.written, again.unchanged) == (0, 2)


def test_writer_registry():
    from airflow_provider_profiles.vendors import VENDORS
    from airflow_provider_profiles.writers import upload_limit, writer_class

    assert writer_class("localytics").__name__ == "ProfileChangesWriter"
    assert writer_class("localytics", "audience").__name__ == "AudienceLinesWriter"
    assert writer_class("mediarithmics", "USER_SEGMENT").document_type == "USER_SEGMENT"
    assert all(writer_class(vendor, name) for vendor, spec in VENDORS.items() for name in spec.writers)
    assert upload_limit("mediarithmics") == 100_000_000 and upload_limit("localytics") is None
    assert upload_limit(None) is None
    with pytest.raises(ValueError, match="unknown vendor 'braze'"):
        writer_class("braze")
    with pytest.raises(ValueError, match="localytics has no format 'events'; choose from changes, audience"):
        writer_class("localytics", "events")


def test_prepare_and_split_operators_refuse_an_unknown_vendor_or_format_when_the_dag_is_parsed():
    from airflow_provider_profiles.operators.prepare import ProfilesFileTransformOperator, SplitFileOperator

    common = {"source_path": "in.csv", "output_path": "out.ndjson"}
    with pytest.raises(ValueError, match="unknown vendor 'braze'; choose from gainsight_px, apsis_one"):
        ProfilesFileTransformOperator(task_id="p", vendor="braze", **common)
    with pytest.raises(ValueError, match="localytics has no format 'events'; choose from changes, audience"):
        ProfilesFileTransformOperator(task_id="q", vendor="localytics", writer_format="events", **common)
    with pytest.raises(ValueError, match="unknown vendor 'braze'"):
        SplitFileOperator(task_id="s", source_path="out.ndjson", vendor="braze")
    assert SplitFileOperator(task_id="t", source_path="out.ndjson", vendor="apsis_one").default_max_bytes == 50_000_000


# --- bad inputs: each a clear error or a rejects entry, never a silent drop ------------------------

CORPUS = (
    "id,name,city\n"
    "1,Ann,Paris\n"          # line 2, record 1: ok
    "2,Bob\n"                 # line 3: ragged (too few), unreadable
    "3,Cy,Rome,extra\n"       # line 4: ragged (too many), unreadable
    ",Dee,Oslo\n"             # record 2: missing identifier
    "1,Ann again,Lyon\n"      # record 3: duplicate identifier
    "6,,\n"                   # record 4: nothing to change
    f"7,{'x' * 300},Nice\n"   # record 5: value too long for Localytics
    '8,"multi\nline",Bern\n'  # record 6: ok (quoted newline)
)


def test_bad_input_corpus_goes_to_rejects_with_records_and_lines(tmp_path):
    """Rows read get their record number; rows that cannot be read have none, and the line in
    their reason (records count the rows read, so the ragged lines take no number)."""
    source = tmp_path / "bad.csv"
    source.write_text(CORPUS)
    result = prepare(str(source), localytics(), str(tmp_path / "out.ndjson"), rejects=str(tmp_path / "rej.csv"))
    assert_reconciles(result)
    assert (result.read, result.written, result.rejected) == (8, 2, 6)
    assert sorted(rejects_of(tmp_path / "rej.csv"), key=lambda r: (r[0] or 0, r[2])) == [
        (None, "", "line 3: ragged row: expected 3 fields, found 2"),
        (None, "", "line 4: ragged row: expected 3 fields, found 4"),
        (2, "", "id: customer id is empty"),
        (3, "1", DUPLICATE),
        (4, "6", "no attribute to change: every mapped value is empty"),
        (5, "7", "name: string of 300 characters; Localytics accepts at most 255"),
    ]
    assert [r["customer_id"] for r in ndjson(tmp_path / "out.ndjson")] == ["1", "8"]
    assert changes(tmp_path / "out.ndjson")["8"]["name"] == "multi\nline"


def test_bad_dates_are_rejected_by_the_mapping(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,name,born\n1,a,2024-02-30\n2,b,2024-02-28\n3,c,yesterday\n")
    mapping = FieldMapping({"id": "id", "name": "name", "born": {"source": "born", "type": "date"}}, representation=representation_of("localytics"))
    writer = localytics(attributes={"name": "name", "born": "born"})
    result = prepare(str(source), writer, str(tmp_path / "out.ndjson"), mapping=mapping, rejects=str(tmp_path / "r.csv"))
    assert (result.written, result.rejected) == (1, 2)
    rejects = rejects_of(tmp_path / "r.csv")
    assert [(record, ident) for record, ident, _ in rejects] == [(1, "1"), (3, "3")]
    assert all(reason.startswith("born: ") and "column 'born'" in reason for _, _, reason in rejects)
    assert ndjson(tmp_path / "out.ndjson")[0]["changes"][1] == {"op": "assign", "attr": "born", "value": "2024-02-28"}


def test_an_empty_file_is_a_clear_error(tmp_path):
    """Not "no column 'id'; it has []": the file has no header at all (allow_empty is for a header
    without rows: a file without even a header is a broken export)."""
    (tmp_path / "empty.csv").write_text("")
    for allow_empty in (False, True):
        with pytest.raises(InputError, match="empty.csv, line 1: the input is empty"):
            prepare(str(tmp_path / "empty.csv"), localytics(), str(tmp_path / "o.ndjson"), allow_empty=allow_empty)


def test_wrong_encoding_stops_with_file_line_and_column(tmp_path):
    source = tmp_path / "latin.csv"
    source.write_bytes("id,name,city\n1,Ann,Paris\n2,Jos\xe9,Lyon\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.csv, line 3, column 'name': not valid UTF-8"):
        prepare(str(source), localytics(), str(tmp_path / "out.ndjson"))
    assert not (tmp_path / "out.ndjson").exists()


def test_a_quote_left_open_before_600_kb_of_lines_stops_at_its_line(tmp_path):
    """The rest of the file would be one record: the prepare stops with the line of that quote."""
    body = b"".join(b"%d,name %d,c\n" % (i, i) for i in range(2, 40))
    source = tmp_path / "open.csv"
    source.write_bytes(b"id,name,city\n" + body + b'40,"never closed,c\n' + b"41,x,y\n" * 100_000)
    with pytest.raises(InputError) as caught:
        prepare(str(source), localytics(), str(tmp_path / "out.ndjson"))
    assert (caught.value.line, caught.value.column) == (40, "name") and "never closed" in str(caught.value)
    assert "open.csv" in str(caught.value)


def test_an_ndjson_array_on_one_line_is_an_unreadable_line(tmp_path):
    """A JSON array of 20,000 objects on one line (not NDJSON): that line is rejected with its
    number, the objects before it are read."""
    head = "".join(json.dumps({"id": str(i), "name": f"n{i}", "city": "c"}) + "\n" for i in range(3))
    source = tmp_path / "in.ndjson"
    source.write_text(head + json.dumps([{"id": i} for i in range(20_000)]) + "\n")
    result = prepare(str(source), localytics(), str(tmp_path / "out.ndjson"), rejects=str(tmp_path / "r.csv"))
    assert (result.read, result.written, result.rejected) == (4, 3, 1)
    assert rejects_of(tmp_path / "r.csv") == [(None, "", "line 4: expected a JSON object, found array")]


# --- hostile CSV through a plain prepare and a sync --------------------------------------------------

HEADER = b"id,name,city\n"
BODY = b"".join(b"%d,n%d,c%d\n" % (i, i, i) for i in range(1, 2000))
MODES = ["plain", "first-sync", "second-sync"]


def prepare_in(tmp_path, source, mode, base=b"id,name,city\n1,Ann,Paris\n", **options):
    """prepare in one of three ways: plain, a first sync (no snapshot yet), or a sync after a
    committed one of ``base`` (rows the snapshot knows are not mapped again)."""
    output = tmp_path / f"{mode}.ndjson"
    if mode == "plain":
        return prepare(str(source), localytics(), str(output), **options)
    state = SyncState(tmp_path / f"state-{mode}")
    if mode == "second-sync":
        (tmp_path / "base.csv").write_bytes(base)
        prepare(str(tmp_path / "base.csv"), localytics(), str(tmp_path / "base.ndjson"), sync=state, sync_run_key="base")
        state.commit("base")
    return prepare(str(source), localytics(), str(output), sync=state, sync_run_key="run", **options)


@pytest.mark.parametrize("mode", MODES)
def test_a_quote_open_on_the_last_line_stops_the_prepare_at_its_line(tmp_path, mode):
    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + b"1,Ann,Paris\n2,Bob,\"Rome\n")
    with pytest.raises(InputError) as caught:
        prepare_in(tmp_path, source, mode)
    assert (caught.value.line, caught.value.column) == (3, "city")
    assert "in.csv, line 3, column 'city'" in str(caught.value) and "never closed" in str(caught.value)
    assert not (tmp_path / f"{mode}.ndjson").exists()


@pytest.mark.parametrize("mode", MODES)
def test_a_quote_open_in_a_middle_line_stops_the_prepare_at_its_line(tmp_path, mode):
    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + b"1,Ann,Paris\n2,Bob,Rome\n3,\"Carl,Oslo\n" + BODY)
    with pytest.raises(InputError) as caught:
        prepare_in(tmp_path, source, mode)
    assert (caught.value.line, caught.value.column) == (4, "name")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("end", [b"\r", b"\r\n", b"mixed"])
def test_every_line_end_csv_knows_reads_every_row(tmp_path, mode, end):
    lines = [HEADER.rstrip(b"\n")] + [b"%d,n%d,\"c%d\rx\"" % (i, i, i) for i in range(1, 50)]
    ends = [b"\r", b"\n", b"\r\n"] if end == b"mixed" else [end]
    data = b"".join(line + ends[index % len(ends)] for index, line in enumerate(lines))
    base = b"".join(line + ends[index % len(ends)] for index, line in enumerate(lines[:3]))
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    result = prepare_in(tmp_path, source, mode, base=base)
    assert (result.read, result.written + result.unchanged) == (49, 49)
    assert result.unchanged == (2 if mode == "second-sync" else 0)
    assert changes(tmp_path / f"{mode}.ndjson")["7"] == {"name": "n7", "city": "c7\rx"}


@pytest.mark.parametrize("mode", MODES)
def test_a_quote_inside_an_unquoted_value_is_text(tmp_path, mode):
    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + b"1,Ann,Paris\n2,Bob,Rome\n3,5\" screen,Oslo\n4,Dan,Lyon\n5,Eve,x\"y\"\n")
    result = prepare_in(tmp_path, source, mode)
    assert (result.read, result.written + result.unchanged, result.rejected) == (5, 5, 0)
    sent = changes(tmp_path / f"{mode}.ndjson")
    assert sent["3"] == {"name": '5" screen', "city": "Oslo"} and sent["5"]["city"] == 'x"y"'


def test_the_operators_stop_at_a_quote_left_open(tmp_path):
    """What a DAG runs: the prepare operator with only_changed=True, and SplitFileOperator."""
    from airflow_provider_profiles.operators.prepare import ProfilesFileTransformOperator, SplitFileOperator

    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + b"1,Ann,Paris\n2,Bob,\"Rome\n")
    prepare_task = ProfilesFileTransformOperator(
        task_id="prepare", source_path=str(source), vendor="localytics", writer_format="changes",
        writer_options={"attributes": {"name": "name", "city": "city"}, "customer_id": "id"},
        output_path=str(tmp_path / "out.ndjson"), only_changed=True, sync_state_path=str(tmp_path / "state"),
        sync_run_key="run1",
    )
    with pytest.raises(InputError, match=r"in.csv, line 3, column 'city': .* never closed"):
        prepare_task.execute({})
    split_task = SplitFileOperator(task_id="split", source_path=str(source), output_dir=str(tmp_path / "chunks"), max_rows=1)
    with pytest.raises(InputError, match=r"in.csv, line 3, column 'city': .* never closed"):
        split_task.execute({})


# --- the duplicate check's default follows the format ----------------------------------------------


def test_duplicate_check_default_follows_the_format(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("user_account_id,compartment_id,segment_id\nu1,7,s1\nu1,7,s2\n")
    segments = get_writer("mediarithmics", "USER_SEGMENT", expiration_duration=0)
    result = prepare(str(source), segments, str(tmp_path / "out.ndjson"))
    assert (result.written, result.rejected) == (2, 0)  # one user in two segments is not a duplicate
    profiles = get_writer("mediarithmics", "USER_PROFILE")
    result = prepare(str(source), profiles, str(tmp_path / "p.ndjson"))
    assert (result.written, result.rejected) == (1, 1)
    with pytest.raises(ValueError, match="needs duplicates='reject'"):
        prepare(str(source), segments, str(tmp_path / "s.ndjson"), sync=SyncState(tmp_path / "st"), sync_run_key="r")


def test_localytics_repeats_are_kept_only_where_changes_add_up(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,logins,plan\nu1,1,pro\nu1,2,pro\n")
    increments = localytics(attributes={"logins": {"attr": "logins", "op": "increment"}})
    result = prepare(str(source), increments, str(tmp_path / "inc.ndjson"))
    assert (result.written, result.rejected) == (2, 0)  # two increments for one customer add up
    assert [line["changes"][0]["value"] for line in ndjson(tmp_path / "inc.ndjson")] == [1, 2]
    assigns = localytics(attributes={"plan": "plan"})
    result = prepare(str(source), assigns, str(tmp_path / "set.ndjson"))
    assert (result.written, result.rejected) == (1, 1)  # two states of one profile conflict
    # a sync skips a row sent before: the same increment on two days would be lost
    with pytest.raises(ValueError, match=r"only_changed=True cannot send column\(s\) \['logins'\]"):
        prepare(str(source), increments, str(tmp_path / "sync.ndjson"), sync=SyncState(tmp_path / "s"), sync_run_key="r")
