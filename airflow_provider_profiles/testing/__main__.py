"""Serve one or all emulators until interrupted: ``python -m airflow_provider_profiles.testing VENDOR``.

Prints one ``<vendor> <url>`` line per emulator once it listens (scripts wait for these lines), then
one ready-to-paste ``export AIRFLOW_CONN_<VENDOR>_DEFAULT='{...}'`` line per emulator: the JSON
connection (credentials, ids, the base URL as the vendor's hook expects it) that points a DAG's
default connection at it. Fixed ports make those lines stable between restarts: ``--port 8083`` for
one vendor, ``--port localytics=8083`` (repeatable) or ``--base-port 8080`` (vendors in order) for all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading

from airflow_provider_profiles.testing import EMULATORS, create, serve


def connection_env_line(conn_id: str, connection: dict) -> str:
    """``export AIRFLOW_CONN_<ID>='<json>'``, quoted for a POSIX shell."""
    return f"export AIRFLOW_CONN_{conn_id.upper()}={shlex.quote(json.dumps(connection))}"


def ports_for(vendors: list[str], port: list[str], base_port: int | None) -> dict[str, int]:
    """The port of each vendor (0: a free one) from ``--port`` and ``--base-port``."""
    ports = {vendor: (base_port + index if base_port else 0) for index, vendor in enumerate(vendors)}
    for given in port:
        vendor, _, number = given.rpartition("=")
        if not vendor:
            if len(vendors) > 1:
                raise ValueError(f"--port {given}: name the vendor (--port localytics={given}) or use --base-port")
            vendor = vendors[0]
        if vendor not in ports:
            raise ValueError(f"--port {given}: {vendor!r} is not served here ({', '.join(vendors)})")
        ports[vendor] = int(number)
    return ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_profiles.testing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vendor", choices=[*EMULATORS, "all"], help="which emulator to serve ('all': every vendor)")
    parser.add_argument("--port", action="append", default=[], metavar="[VENDOR=]PORT",
                        help="a fixed port: PORT for a single vendor, VENDOR=PORT (repeatable) with 'all'")
    parser.add_argument("--base-port", type=int, default=None,
                        help=f"fixed ports from this one up, in the order {', '.join(EMULATORS)}")
    parser.add_argument("--config", default="{}", help="JSON object of emulator settings, e.g. '{\"time_scale\": 60}'")
    args = parser.parse_args(argv)
    vendors = list(EMULATORS) if args.vendor == "all" else [args.vendor]
    try:
        ports = ports_for(vendors, args.port, args.base_port)
    except ValueError as error:
        parser.error(str(error))
    config = json.loads(args.config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before announcing: a caller may stop us at once
    servers = [serve(create(vendor, **config), port=ports[vendor]) for vendor in vendors]
    for vendor, server in zip(vendors, servers):
        print(f"{vendor} {server.url}", flush=True)
    print("# point your DAGs' default connections at them (paste into the shell that runs Airflow):", flush=True)
    for vendor, server in zip(vendors, servers):
        print(connection_env_line(f"{vendor}_default", server.emulator.connection()), flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    for server in servers:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
