"""Apsis One runs 3 imports per account at once: four operators started together must all complete."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from airflow_provider_profiles.operators import base as operator_base
from airflow_provider_profiles.operators.apsis_one import ApsisOneProfileImportOperator
from tests.integration.hooks.test_apsis_one_support import (
    FAST,
    IMPORT_KWARGS,
    PROFILES,
    connect,
    write_csv,
)


class TaskInstanceStub(SimpleNamespace):
    def xcom_push(self, key, value):
        self.xcoms[key] = value


def test_four_concurrent_imports_wait_for_a_free_slot(emulator, monkeypatch, tmp_path):
    # imports run 2 s: the fourth create comes while the first three run, however loaded the machine
    server = emulator("apsis_one", **{**FAST, "processing_seconds": 2.0, "slot_retry_after": 0.5})
    # one 429 retry inside the shared policy, then the hook's own slot wait every 0.2s
    connect(monkeypatch, server, max_attempts=2, retry_after_cap=1, slot_wait_interval=0.2)
    # Operators run here in threads, outside a task runner: keep the retry ledger in memory.
    ledger: dict[str, dict] = {}
    monkeypatch.setattr(operator_base, "_ledger_get", lambda ctx: ledger.get(ctx["ti"].task_id))
    monkeypatch.setattr(operator_base, "_ledger_set", lambda ctx, job: ledger.__setitem__(ctx["ti"].task_id, job))
    monkeypatch.setattr(operator_base, "_ledger_clear", lambda ctx: ledger.pop(ctx["ti"].task_id, None))

    results, errors = {}, {}

    def run(n: int) -> None:
        data = write_csv(tmp_path / f"part-{n}.csv", PROFILES)
        op = ApsisOneProfileImportOperator(task_id=f"imp_{n}", file=str(data), deferrable=False, **IMPORT_KWARGS)
        ti = TaskInstanceStub(task_id=op.task_id, dag_id="d", run_id="r", map_index=-1, try_number=1, xcoms={})
        try:
            results[n] = op.execute({"ti": ti})
        except Exception as exc:  # recorded, asserted below
            errors[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == {}
    assert len(results) == 4
    assert all((r["sent"], r["vendor_succeeded"], r["vendor_failed"]) == (3, 2, 1) for r in results.values())
    snapshot = server.emulator.snapshot()
    assert len(snapshot["imports"]) == 4
    assert snapshot["rejected_creates"] >= 1  # the fourth really had to wait
    assert snapshot["max_active_seen"] == 3

