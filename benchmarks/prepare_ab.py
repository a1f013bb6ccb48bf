"""Two checkouts of the provider on the same dirty data, alternated: each one's ``prepare.py``
provider job (the operators, imports warmed up) and polars' flat conversion, with the outputs and
rejects files compared byte for byte.

    git worktree add /tmp/engine-before <commit>     # with its own venv (make install)
    python benchmarks/prepare_ab.py --before /tmp/engine-before --data DIR --cases gainsight_px,mediarithmics

``--data`` holds ``dirty.csv``, ``dirty.ndjson``, ``dirty.parquet`` and ``dirty.sqlite`` from
``dirty.generate(DIR, rows)``. Each checkout runs with its own ``.venv``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile

FILES = {"csv": "dirty.csv", "ndjson": "dirty.ndjson", "parquet": "dirty.parquet", "sql": "dirty.sqlite"}


def child(tree: str, name: str, source: str, output: str, extra: dict) -> dict:
    os.sync()  # no writeback of the previous job's output during this one
    done = subprocess.run([f"{tree}/.venv/bin/python", f"{tree}/benchmarks/prepare.py", "--child", name, source, output,
                           json.dumps(extra)], capture_output=True, text=True, cwd=tree)
    if done.returncode:
        raise SystemExit(f"{tree} {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the other checkout (with its .venv)")
    parser.add_argument("--after", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    parser.add_argument("--data", required=True)
    parser.add_argument("--cases", default="mediarithmics,apsis_one,localytics,gainsight_px")
    parser.add_argument("--rounds", type=int, default=1, help="alternated rounds, best time kept")
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after, "polars": args.after}
    scratch = tempfile.mkdtemp(prefix="profiles-ab-")
    for case in args.cases.split(","):
        vendor, _, kind = case.partition("-")
        kind = kind or "csv"
        source, extra = os.path.join(args.data, FILES[kind]), {"vendor": vendor, "input": kind}
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                name = "dirty-polars" if label == "polars" else "dirty-provider"
                figures = child(tree, name, source, os.path.join(scratch, f"{label}.out"), extra)
                if label not in best or figures["seconds"] < best[label]["seconds"]:
                    best[label] = figures
            for suffix in ("", ".rejects.csv"):
                paths = [os.path.join(scratch, f"{label}.out{suffix}") for label in ("before", "after")]
                if subprocess.run(["cmp", "-s", *paths]).returncode:
                    print(f"  {case}: the {suffix or 'output'} files differ")
        before, after, polars = best["before"], best["after"], best["polars"]
        print(f"{case:22} before {before['seconds']:6.2f} s {before['peak_rss_mb']:4.0f} MB "
              f"({before['seconds'] / polars['seconds']:4.1f}x polars) | after {after['seconds']:6.2f} s "
              f"{after['peak_rss_mb']:4.0f} MB ({after['seconds'] / polars['seconds']:4.1f}x) | polars {polars['seconds']:5.2f} s | "
              f"after/before time {after['seconds'] / before['seconds']:.2f}, CPU {after['cpu_seconds'] / before['cpu_seconds']:.2f} | "
              f"written {after.get('written')}, rejected {after.get('rejected')} | load {os.getloadavg()[0]:.1f}", flush=True)
    for name in os.listdir(scratch):
        os.remove(os.path.join(scratch, name))
    os.rmdir(scratch)


if __name__ == "__main__":
    main()
